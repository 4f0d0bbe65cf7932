//! Configuration: the YAML file (`raw`) and its compilation into a `Snapshot` (`compile`).
//!
//! `load` reads, parses and compiles in one go and returns either a snapshot or *every* error
//! found, each with its YAML path (`tenants.acme.routes[0].upstream: unknown upstream "billing"`).

pub mod compile;
pub mod edge;
pub mod effective;
pub mod errors;
pub mod keys;
pub mod parse;
pub mod raw;

use std::path::Path;

pub use compile::compile;
pub use errors::{ConfigError, ConfigErrors};

use crate::snapshot::Snapshot;

/// Parses YAML text into the raw config, reporting every shape error with its path and line.
pub fn parse(text: &str) -> Result<raw::RawConfig, ConfigErrors> {
    parse::parse(text)
}

/// Reads, parses and compiles a config file (with fresh runtime state).
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    load_with(path, &crate::runtime::Runtime::default())
}

/// Reads, parses and compiles a config file, looking runtime state up in `rt`.
pub fn load_with(path: &Path, rt: &crate::runtime::Runtime) -> Result<Snapshot, ConfigErrors> {
    let bytes = crate::files::read_file(path)
        .map_err(|e| ConfigErrors::single("", format!("cannot read {}: {e}", path.display())))?;
    load_bytes_with(&bytes, rt)
}

/// Parses and compiles config file contents (with fresh runtime state).
pub fn load_bytes(bytes: &[u8]) -> Result<Snapshot, ConfigErrors> {
    load_bytes_with(bytes, &crate::runtime::Runtime::default())
}

/// Parses and compiles config file contents, looking runtime state up in `rt`.
pub fn load_bytes_with(
    bytes: &[u8],
    rt: &crate::runtime::Runtime,
) -> Result<Snapshot, ConfigErrors> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ConfigErrors::single("", "config file is not UTF-8"))?;
    let raw = match parse::parse_salvaging(text) {
        Ok(raw) => raw,
        // Unknown or duplicated keys only: the rest of the file is still compiled, so its
        // errors are reported in the same run.
        Err((mut errors, Some(raw))) => {
            if let Err(more) = compile::compile_with(&raw, &content_hash(bytes), rt) {
                errors.0.extend(more.0);
            }
            return Err(errors);
        }
        Err((errors, None)) => return Err(errors),
    };
    let mut snapshot = compile::compile_with(&raw, &content_hash(bytes), rt)?;
    snapshot.config_hash = std::mem::take(&mut snapshot.content_hash);
    snapshot.content_hash = files_hash(bytes, &snapshot.files);
    Ok(snapshot)
}

/// First 16 hex digits of a SHA-256 over the config file and every file it names (certificates,
/// keys, secret files, JWKS files), in a fixed order: a certificate rotation changes it.
pub fn files_hash(config: &[u8], files: &[std::path::PathBuf]) -> String {
    let mut files: Vec<&std::path::PathBuf> = files.iter().collect();
    files.sort();
    files.dedup();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut part = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    };
    part(config);
    for f in files {
        part(f.as_os_str().as_encoded_bytes());
        part(&crate::files::read_file(f).unwrap_or_default());
    }
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// First 16 hex digits of the SHA-256 of the file.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
