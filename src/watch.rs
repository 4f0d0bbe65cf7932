//! Reload on file change. Watches the *directories* of the config file and of every file it
//! names (certificates, keys, JWKS), because editors and Kubernetes ConfigMaps replace files by
//! rename or symlink swap, which a watch on the file itself misses. Events are debounced; a
//! reload runs only when the contents of the watched files actually changed, and a change that
//! does not compile yet (a certificate copied before its key) is retried for [`SETTLE`] before
//! it counts as a failed reload.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::gateway::Gateway;

/// Quiet time after the last event before the files are looked at.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How long a change may take to become consistent (a certificate copied before its key) before
/// a config that does not compile counts as a failed reload.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Stops watching when dropped.
pub struct WatchHandle(tokio::task::JoinHandle<()>);

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn dir_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The config file and everything the current snapshot was compiled from.
fn watched_files(gw: &Gateway) -> Vec<PathBuf> {
    let snap = gw.snapshot();
    gw.config_path()
        .map(Path::to_path_buf)
        .into_iter()
        .chain(snap.files.iter().cloned())
        .collect()
}

/// A digest of the watched files' contents (a missing file counts as empty).
fn fingerprint(files: &[PathBuf]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for f in files {
        ctx.update(f.as_os_str().as_encoded_bytes());
        ctx.update(&crate::files::read_file(f).unwrap_or_default());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Whether an event can mean changed contents. Reads are not: the fingerprint reads every
/// watched file, and counting its own reads kept the watcher re-reading them several times a
/// second for as long as the gateway ran. A file closed after writing is.
fn changes(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// Starts watching; reloads `gw` when a watched file changes.
pub fn spawn(gw: Arc<Gateway>) -> notify::Result<WatchHandle> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher: RecommendedWatcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| changes(&e.kind)) {
                let _ = tx.send(());
            }
        })?;
    let mut dirs = HashSet::new();
    let files = watched_files(&gw);
    for f in &files {
        let d = dir_of(f);
        if dirs.insert(d.clone()) {
            watcher.watch(&d, RecursiveMode::NonRecursive)?;
        }
    }
    let mut last = fingerprint(&files);
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let g = gw.clone();
            let Ok((files, fp)) = tokio::task::spawn_blocking(move || {
                let files = watched_files(&g);
                let fp = fingerprint(&files);
                (files, fp)
            })
            .await
            else {
                continue;
            };
            if fp == last {
                continue;
            }
            last = fp;
            tracing::info!("watched files changed; reloading");
            let g = gw.clone();
            let _ = tokio::task::spawn_blocking(move || g.reload_settling(SETTLE)).await;
            // A reload may name files in new directories.
            for f in watched_files(&gw).iter().chain(&files) {
                let d = dir_of(f);
                if dirs.insert(d.clone()) {
                    let _ = watcher.watch(&d, RecursiveMode::NonRecursive);
                }
            }
            // The new snapshot's files are the baseline now.
            let g = gw.clone();
            if let Ok(fp) =
                tokio::task::spawn_blocking(move || fingerprint(&watched_files(&g))).await
            {
                last = fp;
            }
        }
        drop(watcher);
    });
    Ok(WatchHandle(task))
}

#[cfg(test)]
mod tests {
    use super::changes;
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn reads_are_not_changes_and_writes_renames_and_removals_are() {
        for read in [
            AccessKind::Any,
            AccessKind::Read,
            AccessKind::Open(AccessMode::Read),
            AccessKind::Close(AccessMode::Read),
        ] {
            assert!(!changes(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(changes(&change), "{change:?}");
        }
    }
}
