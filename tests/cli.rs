//! The binary as an operator runs it: `check`, `run` with SIGHUP reloads and SIGTERM, `demo`.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig}");
}

#[test]
fn check_lists_every_error_with_its_yaml_path() {
    let env = Env::new();
    let yaml = env
        .config("http://127.0.0.1:9", "http://127.0.0.1:9")
        .replace(
            "routes: [ { path_prefix: /, upstream: acme-dedicated } ]",
            "routes: [ { path_prefix: /, upstream: billing } ]",
        )
        .replace("  globex:\n    plan: free", "  globex:\n    plan: gold");
    let path = env.write_config(&yaml);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(r#"tenants.acme.routes[0].upstream: unknown upstream "billing""#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"tenants.globex.plan: unknown plan "gold""#),
        "{stdout}"
    );

    // A mismatched certificate and key is a compile error too.
    let yaml = env
        .config("http://127.0.0.1:9", "http://127.0.0.1:9")
        .replace("globex.key", "acme.key");
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(env.write_config(&yaml))
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("tenants.globex.tls: certificate"),
        "{stdout}"
    );
    assert!(stdout.contains("do not match"), "{stdout}");

    // Unknown keys and a broken YAML file are named too, never a panic.
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(
            env.write_config(
                &env.config("http://127.0.0.1:9", "http://127.0.0.1:9")
                    .replace("plan: enterprise", "plan: enterprise\n    colour: blue"),
            ),
        )
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("tenants.acme.colour: unknown field `colour`"),
        "{stdout}"
    );
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(env.write_config("version: 1\nlisteners: [ {"))
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(1));

    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(env.write_config(&env.config("http://127.0.0.1:9", "http://127.0.0.1:9")))
        .output()
        .expect("run check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn run_refuses_to_start_on_an_invalid_config() {
    let env = Env::new();
    let yaml = env
        .config("http://127.0.0.1:9", "http://127.0.0.1:9")
        .replace("active_key: k1", "active_key: k9");
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(env.write_config(&yaml))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(r#"signing.active_key: unknown key "k9""#),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_a_tenant_and_a_broken_file_keeps_the_old_config() {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let yaml = env.config(&shared.url(), &shared.url());
    let path = env.write_config(&yaml);
    let mut child = Command::new(bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let addrs = wait_for_listeners(&mut stderr, 2);
    // Keep draining stderr so the child never blocks on a full pipe.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut s = String::new();
        while stderr.read_line(&mut s).unwrap_or(0) > 0 {
            log2.lock().expect("log").push_str(&s);
            s.clear();
        }
    });
    let child = Proc(child);
    let http = addrs["http"];

    assert_eq!(
        status(http, "hooli.gw.test", "/").await,
        StatusCode::NOT_FOUND
    );

    let with_hooli = format!("{yaml}  hooli:\n    plan: free\n");
    std::fs::write(&path, &with_hooli).expect("write");
    signal(&child.0, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = h1(http, get("hooli.gw.test", "/")).await;
        if got.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "tenant not added within 2 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        shared.requests().last().expect("seen").headers["x-tenant-id"],
        "hooli"
    );

    // A broken file: rejected, the old config keeps serving.
    std::fs::write(
        &path,
        with_hooli.replace("plan: free\n", "plan: nonexistent\n"),
    )
    .expect("write");
    signal(&child.0, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.lock().expect("log").contains("config reload rejected") {
        assert!(Instant::now() < deadline, "no rejection logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(log.lock().expect("log").contains("tenants.hooli.plan"));
    assert_eq!(status(http, "hooli.gw.test", "/").await, StatusCode::OK);
    assert_eq!(status(http, "globex.gw.test", "/").await, StatusCode::OK);

    // SIGTERM: drains and exits 0.
    let mut child = child;
    signal(&child.0, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "gateway did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// `tenant-gateway demo` in a fresh directory: makes certificates, starts, and every curl line
/// it prints answers with the status it announces.
#[test]
fn demo_runs_and_its_curl_lines_succeed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
    std::fs::copy(
        workspace().join("config/demo.yaml"),
        dir.path().join("config/demo.yaml"),
    )
    .expect("copy demo.yaml");
    let mut child = Command::new(bin())
        .arg("demo")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn demo");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let child = Proc(child);
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
    assert!(dir.path().join("certs/ca.crt").exists());

    let mut checked = 0;
    let mut expect: Option<u16> = None;
    for l in printed.lines() {
        if let Some(rest) = l.strip_prefix("# expect ") {
            expect = rest.split(':').next().and_then(|s| s.parse().ok());
        } else if l.starts_with("curl ") {
            let want = expect.take().expect("each curl line announces its status");
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!("{l} -o body.out -w '%{{http_code}}'"))
                .current_dir(dir.path())
                .output()
                .expect("curl");
            let code = String::from_utf8_lossy(&out.stdout).to_string();
            let mut body = String::new();
            std::fs::File::open(dir.path().join("body.out"))
                .and_then(|mut f| f.read_to_string(&mut body))
                .expect("body");
            assert_eq!(
                code,
                want.to_string(),
                "{l}\n{body}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if want == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).expect("echo json");
                assert_eq!(v["signature_valid"], true, "{body}");
                if l.contains("x-tenant-id: acme") {
                    assert_eq!(v["headers"]["x-tenant-id"], "globex", "spoof stripped");
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "{printed}");
    drop(child);
}

/// `--log-format pretty` into a pipe (a file, a collector): plain text, no ANSI colour codes.
#[test]
fn pretty_logs_into_a_pipe_have_no_colour_codes() {
    let env = Env::new();
    let path = env.write_config(&env.config("http://127.0.0.1:9", "http://127.0.0.1:9"));
    let mut child = Command::new(bin())
        .args(["--log-format", "pretty", "run", "--config"])
        .arg(&path)
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let _child = Proc(child);
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.contains("listening") && Instant::now() < deadline {
        if stderr.read_line(&mut log).expect("read") == 0 {
            break;
        }
    }
    assert!(log.contains("listening"), "{log}");
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape in piped logs: {log:?}"
    );
}
