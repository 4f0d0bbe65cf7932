//! Usage metering, the state-layer part: the compiled `usage:` settings, body byte counters, the
//! export line format and the `tenant-gateway usage --since` summary. The running parts (the
//! exporter, the state-file writer, `GET /tenants/<id>/usage`) are in `usage_export`.
//!
//! Counters live in each tenant's `TenantStats` (carried across reloads by name).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::{Deserialize, Serialize};

use crate::limits::TenantStats;

/// Compiled `usage:`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UsageSettings {
    /// `usage.state_file`: per-replica quota counts kept across restarts.
    pub state_file: Option<PathBuf>,
    /// `usage.state_interval_s` (default 10).
    pub state_interval: Duration,
    /// `usage.export`.
    pub export: Option<ExportSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    pub path: PathBuf,
    pub interval: Duration,
}

/// Compiles `usage:`, pushing errors with their YAML paths.
pub fn compile(
    errors: &mut crate::config::errors::ConfigErrors,
    raw: Option<&crate::config::raw::RawUsage>,
) -> UsageSettings {
    let Some(raw) = raw else {
        return UsageSettings {
            state_interval: Duration::from_secs(10),
            ..UsageSettings::default()
        };
    };
    let state_s = raw.state_interval_s.unwrap_or(10);
    if state_s == 0 {
        errors.push("usage.state_interval_s", "must be greater than 0");
    }
    let export = raw.export.as_ref().map(|e| {
        let s = e.interval_s.unwrap_or(60);
        if s == 0 {
            errors.push("usage.export.interval_s", "must be greater than 0");
        }
        if e.path.as_os_str().is_empty() {
            errors.push("usage.export.path", "must not be empty");
        }
        ExportSettings {
            path: e.path.clone(),
            interval: Duration::from_secs(s.max(1)),
        }
    });
    UsageSettings {
        state_file: raw.state_file.clone(),
        state_interval: Duration::from_secs(state_s.max(1)),
        export,
    }
}

// === Byte counting ===

/// A body that adds every data byte passing through it to `counter`.
pub struct Counted<B> {
    inner: B,
    stats: Arc<TenantStats>,
    out: bool,
}

impl<B> Counted<B> {
    /// Counts the client's request body into the tenant's `bytes_in`.
    pub fn request(inner: B, stats: Arc<TenantStats>) -> Self {
        Self {
            inner,
            stats,
            out: false,
        }
    }

    /// Counts the response body sent to the client into the tenant's `bytes_out`.
    pub fn response(inner: B, stats: Arc<TenantStats>) -> Self {
        Self {
            inner,
            stats,
            out: true,
        }
    }

    fn counter(&self) -> &AtomicU64 {
        if self.out {
            &self.stats.bytes_out
        } else {
            &self.stats.bytes_in
        }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter()
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response with its body counted into `stats.bytes_out`.
pub fn count_response(
    resp: http::Response<crate::body::ProxyBody>,
    stats: Arc<TenantStats>,
) -> http::Response<crate::body::ProxyBody> {
    resp.map(|b| crate::body::stream(Counted::response(b, stats)))
}

// === GET /tenants/<id>/usage ===

/// The tenant id of an admin path `/tenants/<id>/usage`.
pub fn usage_route(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/tenants/")?.strip_suffix("/usage")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// RFC 3339 UTC, seconds precision.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// One exported line.
#[derive(Debug, Serialize, Deserialize)]
pub struct UsageLine {
    pub tenant: String,
    pub interval_start: String,
    pub interval_end: String,
    pub requests: u64,
    /// Responses by status class: `1xx` .. `5xx` (classes with none are left out).
    pub by_status: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

// === tenant-gateway usage --since ===

/// Totals of one tenant over an export file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub by_status: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub lines: u64,
}

/// Parses `--since`: RFC 3339 (`2026-03-01T00:00:00Z`) or Unix seconds.
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| format!("{s:?} is neither RFC 3339 nor Unix seconds"))
}

/// Sums an export file per tenant over the intervals that start at or after `since`.
/// Returns the totals and the number of lines that could not be read.
pub fn sum_export(text: &str, since: i64) -> (BTreeMap<String, Totals>, usize) {
    let mut out: BTreeMap<String, Totals> = BTreeMap::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(l) = serde_json::from_str::<UsageLine>(line) else {
            bad += 1;
            continue;
        };
        let Ok(start) = parse_since(&l.interval_start) else {
            bad += 1;
            continue;
        };
        if start < since {
            continue;
        }
        let t = out.entry(l.tenant).or_default();
        t.requests += l.requests;
        for (class, n) in l.by_status {
            *t.by_status.entry(class).or_default() += n;
        }
        t.bytes_in += l.bytes_in;
        t.bytes_out += l.bytes_out;
        t.lines += 1;
    }
    (out, bad)
}

/// Reads and sums `path` (see [`sum_export`]).
pub fn sum_export_file(
    path: &Path,
    since: i64,
) -> std::io::Result<(BTreeMap<String, Totals>, usize)> {
    let text = std::fs::read_to_string(path)?;
    Ok(sum_export(&text, since))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_lines_since_a_time_and_skips_garbage() {
        let text = r#"{"tenant":"acme","interval_start":"2026-03-01T00:00:00Z","interval_end":"2026-03-01T00:01:00Z","requests":3,"by_status":{"2xx":2,"4xx":1},"bytes_in":10,"bytes_out":20}
not json
{"tenant":"acme","interval_start":"2026-02-28T23:59:00Z","interval_end":"2026-03-01T00:00:00Z","requests":100,"by_status":{"2xx":100},"bytes_in":1,"bytes_out":1}
{"tenant":"acme","interval_start":"2026-03-01T00:01:00Z","interval_end":"2026-03-01T00:02:00Z","requests":1,"by_status":{"2xx":1},"bytes_in":5,"bytes_out":6}
{"tenant":"globex","interval_start":"2026-03-01T00:01:00Z","interval_end":"2026-03-01T00:02:00Z","requests":1,"by_status":{"5xx":1},"bytes_in":0,"bytes_out":7}
"#;
        let since = parse_since("2026-03-01T00:00:00Z").expect("since");
        assert_eq!(parse_since(&since.to_string()), Ok(since));
        let (t, bad) = sum_export(text, since);
        assert_eq!(bad, 1);
        assert_eq!(t["acme"].requests, 4);
        assert_eq!(t["acme"].by_status["2xx"], 3);
        assert_eq!((t["acme"].bytes_in, t["acme"].bytes_out), (15, 26));
        assert_eq!(t["globex"].by_status["5xx"], 1);
        assert!(parse_since("yesterday").is_err());
    }
}
