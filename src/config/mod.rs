//! Configuration: the YAML file (`raw`) and its compilation into a `Snapshot` (`compile`).
//!
//! `load` reads, parses and compiles in one go and returns either a snapshot or *every* error
//! found, each with its YAML path (`tenants.acme.routes[0].upstream: unknown upstream "billing"`).

pub mod compile;
pub mod raw;

use std::fmt;
use std::path::Path;

pub use compile::compile;

use crate::snapshot::Snapshot;

/// One problem in a config file, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::default();
        e.push(path, message);
        e
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses YAML text into the raw config, reporting the path of the first shape error.
pub fn parse(text: &str) -> Result<raw::RawConfig, ConfigErrors> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigErrors::single(path, e.into_inner().to_string())
    })
}

/// The largest file the config may name (config, certificates, keys, secrets, JWKS).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a file the config names: a regular file of at most [`MAX_FILE_BYTES`], so a path like
/// `/dev/zero` or a runaway file is an error instead of an unbounded read.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 16 MiB",
        ));
    }
    Ok(bytes)
}

/// [`read_file`] as UTF-8 text.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_file(path)?)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Reads, parses and compiles a config file (with fresh runtime state).
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    load_with(path, &crate::runtime::Runtime::default())
}

/// Reads, parses and compiles a config file, looking runtime state up in `rt`.
pub fn load_with(path: &Path, rt: &crate::runtime::Runtime) -> Result<Snapshot, ConfigErrors> {
    let bytes = read_file(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_the_config_names_are_read_only_when_regular_and_bounded() {
        assert!(
            read_file(Path::new("/dev/zero")).is_err(),
            "a device is refused"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).expect("create");
        f.set_len(MAX_FILE_BYTES + 1).expect("grow");
        assert!(read_file(&big).is_err(), "over 16 MiB is refused");
        let ok = dir.path().join("ok");
        std::fs::write(&ok, b"secret").expect("write");
        assert_eq!(read_file(&ok).expect("read"), b"secret");
    }
}
