//! Reading the files a config names (config, certificates, keys, secrets, JWKS), bounded.

use std::path::Path;

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
