//! The configs in `config/` pass `check` as shipped (after the `dev-certs` line each one names),
//! and the broken configs of docs/configuration.md ("When `check` fails") print the documented
//! message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenant-gateway")
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The arguments of a config's `# dev material: tenant-gateway dev-certs ...` line.
fn dev_material(yaml: &str) -> Option<Vec<String>> {
    yaml.lines()
        .find_map(|l| l.strip_prefix("# dev material: tenant-gateway "))
        .map(|args| args.split_whitespace().map(str::to_owned).collect())
}

/// A fresh directory holding `config/<name>` as shipped and the dev material it names.
fn fresh_dir(name: &str) -> (tempfile::TempDir, PathBuf, String) {
    let yaml = std::fs::read_to_string(workspace().join("config").join(name)).expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    let path = dir.path().join("config").join(name);
    std::fs::write(&path, &yaml).expect("write");
    if let Some(args) = dev_material(&yaml) {
        let out = Command::new(bin())
            .args(&args)
            .current_dir(dir.path())
            .output()
            .expect("dev-certs");
        assert!(out.status.success(), "{name}: {args:?}: {out:?}");
    }
    (dir, path, yaml)
}

fn check(dir: &Path, config: &Path) -> Output {
    Command::new(bin())
        .args(["check", "--config"])
        .arg(config)
        .current_dir(dir)
        .env_remove("GATEWAY_SIGNING_KEY_K1")
        .env_remove("GATEWAY_JWT_SECRET")
        .output()
        .expect("check")
}

#[test]
fn every_shipped_config_passes_check() {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join("config"))
        .expect("config/")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    assert!(names.contains(&"gateway.yaml".to_owned()), "{names:?}");
    for name in names {
        let (dir, path, yaml) = fresh_dir(&name);
        assert!(
            dev_material(&yaml).is_some() || !yaml.contains("certs/"),
            "{name} names files under certs/ but has no `# dev material:` line"
        );
        let out = check(dir.path(), &path);
        assert!(
            out.status.success(),
            "check {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `(mistake, old, new, message)` rows of the broken-config table.
fn documented_mistakes() -> Vec<(String, String, String, String)> {
    let doc = std::fs::read_to_string(workspace().join("docs/configuration.md")).expect("doc");
    let section = doc
        .split("## When `check` fails")
        .nth(1)
        .expect("the doc has a \"When `check` fails\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("``"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 4, "row {l:?}");
            let code = |c: &str| {
                c.trim()
                    .trim_start_matches("``")
                    .trim_end_matches("``")
                    .trim()
                    .replace("\\n", "\n")
            };
            (
                cells[0].trim().to_owned(),
                code(cells[1]),
                code(cells[2]),
                code(cells[3]),
            )
        })
        .collect()
}

#[test]
fn each_documented_mistake_prints_its_documented_message() {
    let rows = documented_mistakes();
    assert!(rows.len() >= 5, "{rows:?}");
    let (dir, path, yaml) = fresh_dir("gateway.yaml");
    for (mistake, old, new, message) in rows {
        assert!(
            yaml.contains(&old),
            "{mistake}: {old:?} is not in gateway.yaml"
        );
        std::fs::write(&path, yaml.replacen(&old, &new, 1)).expect("write");
        let out = check(dir.path(), &path);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{mistake}: {stdout}");
        assert!(
            stdout.contains(&message),
            "{mistake}: expected {message:?} in:\n{stdout}"
        );
        // Nothing else goes wrong: the one mistake gives one error.
        assert_eq!(stdout.lines().count(), 1, "{mistake}: {stdout}");
    }
}

#[test]
fn errors_in_independent_places_are_reported_together() {
    let (dir, path, yaml) = fresh_dir("gateway.yaml");
    let broken = yaml
        .replacen("max_connections: 20000", "max_conections: 20000", 1)
        .replacen("plan: enterprise", "plan: enterprise\n    colour: blue", 1)
        .replacen("- { name: http,", "- { nme: x, name: http,", 1);
    std::fs::write(&path, broken).expect("write");
    let stdout = String::from_utf8_lossy(&check(dir.path(), &path).stdout).into_owned();
    for want in [
        "limits.max_conections",
        "tenants.acme.colour",
        "listeners[1].nme",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    // A typo does not hide the compile errors of the rest of the file.
    let broken = yaml
        .replacen("max_connections: 20000", "max_conections: 20000", 1)
        .replacen("plan: free", "plan: gold", 1)
        .replacen("version: 1", "version: 1\nversion: 1", 1);
    std::fs::write(&path, broken).expect("write");
    let stdout = String::from_utf8_lossy(&check(dir.path(), &path).stdout).into_owned();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    for want in [
        "limits.max_conections: unknown field",
        "tenants.globex.plan: unknown plan \"gold\"",
        "version: duplicate key",
    ] {
        assert!(stdout.contains(want), "{want} missing:\n{stdout}");
    }
    // Compile errors (after a clean parse) are all listed too.
    let broken = yaml
        .replacen("plan: free", "plan: gold", 1)
        .replacen("cert: certs/default.crt", "cert: certs/gone.crt", 1)
        .replacen("upstream: acme-dedicated }", "upstream: billing }", 1);
    std::fs::write(&path, broken).expect("write");
    let stdout = String::from_utf8_lossy(&check(dir.path(), &path).stdout).into_owned();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        !stdout.contains("set tls.default_certificate"),
        "a set but unreadable certificate is not reported as unset:\n{stdout}"
    );
}
