//! The README's quickstart, run as written: its `cargo run` lines (with the binary under test) in
//! a fresh directory holding `config/` as shipped, the curl lines it shows against the running
//! demo, and the annotated production config through `check`.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tenant-gateway")
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The body of the first fenced block after `<!-- marker -->`.
fn block(readme: &str, marker: &str) -> String {
    let at = readme
        .find(&format!("<!-- {marker} -->"))
        .unwrap_or_else(|| panic!("README has no {marker} block"));
    let rest = &readme[at..];
    let body = &rest[rest.find("```").expect("fence")..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("\n```").expect("closing fence")].to_owned()
}

/// `cargo run [--release] -- ARGS` → ARGS.
fn cargo_run_args(line: &str) -> Vec<String> {
    let args = line
        .split_once(" -- ")
        .unwrap_or_else(|| panic!("not a `cargo run -- ...` line: {line}"))
        .1;
    args.split_whitespace().map(str::to_owned).collect()
}

/// `(expected status, curl line)` of the README's example curl lines.
fn curl_examples(readme: &str) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let mut expect = None;
    // Indented code blocks only: prose may mention curl too.
    for l in readme.lines().filter_map(|l| l.strip_prefix("    ")) {
        if let Some(rest) = l.strip_prefix("# expect ") {
            expect = rest.split(':').next().and_then(|s| s.parse().ok());
        } else if l.starts_with("curl ") {
            out.push((
                expect.take().expect("a curl line announces its status"),
                l.to_owned(),
            ));
        }
    }
    out
}

#[test]
fn the_readme_quickstart_runs_as_written() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let quickstart = block(&readme, "quickstart");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    for name in ["demo.yaml", "gateway.yaml"] {
        std::fs::copy(
            workspace().join("config").join(name),
            dir.path().join("config").join(name),
        )
        .expect("copy config");
    }
    let lines: Vec<&str> = quickstart
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(lines.len() >= 3, "{quickstart}");
    for line in lines {
        let args = cargo_run_args(line);
        if args.first().map(String::as_str) == Some("demo") {
            run_demo_and_the_readme_curl_lines(dir.path(), &args, &readme);
            continue;
        }
        let out = Command::new(bin())
            .args(&args)
            .current_dir(dir.path())
            .env_remove("GATEWAY_SIGNING_KEY_K1")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{line}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The annotated production config compiles with the same dev material.
    let production = dir.path().join("config/production.yaml");
    std::fs::write(&production, block(&readme, "production-config")).expect("write");
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&production)
        .current_dir(dir.path())
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "README production config: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn run_demo_and_the_readme_curl_lines(dir: &Path, args: &[String], readme: &str) {
    let mut child = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let _child = Proc(child);
    let mut printed = String::new();
    let mut line = String::new();
    while !printed.contains("Ctrl-C stops the demo") {
        line.clear();
        assert!(
            stdout.read_line(&mut line).expect("read") > 0,
            "demo exited: {printed}"
        );
        printed.push_str(&line);
    }
    let examples = curl_examples(readme);
    assert!(examples.len() >= 2, "{examples:?}");
    for (want, curl) in examples {
        assert!(
            printed.contains(&curl),
            "the README's curl line is not one the demo prints: {curl}"
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{curl} -o body.out -w '%{{http_code}}'"))
            .current_dir(dir)
            .output()
            .expect("curl");
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        let mut body = String::new();
        let _ =
            std::fs::File::open(dir.join("body.out")).and_then(|mut f| f.read_to_string(&mut body));
        assert_eq!(code, want.to_string(), "{curl}: {body}");
    }
}
