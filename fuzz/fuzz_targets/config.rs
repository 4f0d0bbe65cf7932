//! Arbitrary bytes → `config::load_bytes` (UTF-8 check, YAML parse, compile): never panics, and
//! a rejected config always comes back as non-empty, printable `ConfigErrors`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tenant_gateway::config;

/// An empty directory to compile in, so relative file names in the config (certificates, keys,
/// JWKS, CA bundles) fail to read instead of picking up files of the checkout.
static EMPTY_DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let empty = EMPTY_DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    // libFuzzer itself reads corpus files and writes artifacts by relative path between runs,
    // so the working directory is changed for the call only.
    let cwd = std::env::current_dir().expect("cwd");
    std::env::set_current_dir(empty.path()).expect("chdir");
    let result = config::load_bytes(data);
    std::env::set_current_dir(cwd).expect("chdir back");
    match result {
        Ok(snap) => assert!(!snap.listeners.is_empty(), "a loaded config has a listener"),
        Err(errors) => {
            assert!(
                !errors.is_empty(),
                "an error result names at least one error"
            );
            let _ = errors.to_string();
        }
    }
});
