//! Open-file limit: raised at start so the connection cap, not the process, decides how many
//! clients fit (every client connection, upstream connection and open file is a descriptor).

/// Descriptors kept for everything that is not a client connection: upstream connections,
/// listeners, certificate and config files, Redis, logs.
const RESERVED: u64 = 1024;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns `(before, after)`; `None` when
/// the limit could not be read.
pub fn raise() -> Option<(u64, u64)> {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    let after = rlimit::increase_nofile_limit(hard).unwrap_or(before);
    Some((before, after))
}

/// Client connections that fit in `open_files` descriptors: each proxied client may need an
/// upstream connection too, and some descriptors are kept for everything else.
pub fn capacity(open_files: u64) -> u64 {
    open_files.saturating_sub(RESERVED) / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let (before, after) = raise().expect("getrlimit");
        assert!(after >= before);
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        assert_eq!((soft, after), (hard, hard));
        assert_eq!(capacity(65_536), 32_256);
        assert_eq!(capacity(100), 0);
    }
}
