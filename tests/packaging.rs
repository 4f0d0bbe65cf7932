//! What someone adopting the project gets besides the code: a license the dependencies allow,
//! a changelog entry for the version, publishable verifier crates, a Docker image that can build
//! and start as shipped.

use std::path::Path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `key = "value"` of the `[package]` table of a Cargo.toml.
fn package_field(toml: &str, key: &str) -> Option<String> {
    let package = toml.split("[package]").nth(1)?.split("\n[").next()?;
    package.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
    })
}

#[test]
fn the_license_is_apache_2_and_every_crate_says_so() {
    assert!(read("LICENSE").trim_start().starts_with("Apache License"));
    let deny = read("deny.toml");
    assert!(
        deny.contains("\"Apache-2.0\""),
        "deny.toml allows Apache-2.0"
    );
    for manifest in [
        "Cargo.toml",
        "signing/Cargo.toml",
        "middleware/rust/Cargo.toml",
    ] {
        assert_eq!(
            package_field(&read(manifest), "license").as_deref(),
            Some("Apache-2.0"),
            "{manifest}"
        );
    }
}

#[test]
fn the_changelog_has_the_version() {
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        read("CHANGELOG.md").contains(&format!("## [{version}]")),
        "CHANGELOG.md has no entry for {version}"
    );
}

#[test]
fn the_verifier_crates_are_publishable() {
    for manifest in ["signing/Cargo.toml", "middleware/rust/Cargo.toml"] {
        let toml = read(manifest);
        assert_ne!(
            package_field(&toml, "publish").as_deref(),
            Some("false"),
            "{manifest}"
        );
        for key in ["description", "license", "repository", "readme", "version"] {
            assert!(package_field(&toml, key).is_some(), "{manifest}: no {key}");
        }
        // A path dependency must also name a version, or it cannot be published.
        for line in toml.lines().filter(|l| l.contains("{ path =")) {
            assert!(line.contains("version ="), "{manifest}: {line}");
        }
    }
}

#[test]
fn the_docker_image_builds_the_whole_workspace_and_starts_the_demo() {
    let docker = read("Dockerfile");
    let root = read("Cargo.toml");
    let members = root
        .split("members = [")
        .nth(1)
        .and_then(|m| m.split(']').next())
        .expect("workspace members");
    for member in members.split(',').map(|m| m.trim().trim_matches('"')) {
        if member.is_empty() || member == "." {
            continue;
        }
        assert!(
            docker.contains(&format!("COPY {member} ./{member}")),
            "Dockerfile does not copy workspace member {member}"
        );
    }
    assert!(
        docker.contains("CMD [\"demo\"]"),
        "the default command is the demo"
    );
    // The demo writes its certificates into certs/ as the non-root user.
    assert!(docker.contains("--chown=nonroot:nonroot /out/certs ./certs"));
    assert!(docker.contains("COPY config ./config"));
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/demo.yaml")
            .exists()
    );
}
