//! Configuration: the YAML file (`raw`) and its compilation into a `Snapshot` (`compile`).
//!
//! `load` reads, parses and compiles in one go and returns either a snapshot or *every* error
//! found, each with its YAML path (`tenants.acme.routes[0].upstream: unknown upstream "billing"`).

pub mod compile;
pub mod edge;
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
    let raw = parse(text)?;
    compile::compile_with(&raw, &content_hash(bytes), rt)
}

/// First 16 hex digits of the SHA-256 of the file.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
