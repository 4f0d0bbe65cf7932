//! The README's Python and Node verification snippets, run against headers that a real gateway
//! sent to a real upstream. Each must accept the request as received and reject it with a
//! changed path, a changed tenant or a stale timestamp.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn snippet(marker: &str) -> String {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let at = readme
        .find(&format!("<!-- snippet: {marker} -->"))
        .unwrap_or_else(|| panic!("README has no {marker} snippet"));
    let rest = &readme[at..];
    let start = rest.find("```").expect("code fence");
    let body = &rest[start..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    body[..body.find("\n```").expect("closing fence")].to_owned()
}

const PY_HARNESS: &str = r#"
import json, sys
case = json.load(sys.stdin)
ok = verify_tenant_signature(case["headers"], case["method"], case["path"],
                             {case["kid"]: case["secret"].encode()}, now=case.get("now"))
print("true" if ok else "false")
"#;

const JS_HARNESS: &str = r#"
const c = JSON.parse(require("fs").readFileSync(0, "utf8"));
const ok = verifyTenantSignature(c.headers, c.method, c.path, { [c.kid]: Buffer.from(c.secret) }, 300, c.now ?? Date.now() / 1000);
console.log(ok ? "true" : "false");
"#;

/// Runs `code` with `python3 -c` or `node -e`, the case as JSON on stdin; returns stdout.
fn run(program: &str, code: &str, case: &serde_json::Value) -> String {
    let flag = if program == "node" { "-e" } else { "-c" };
    let mut child = Command::new(program)
        .args([flag, code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(case.to_string().as_bytes()).expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn real_signed_request() -> (serde_json::Value, Seen) {
    let env = Env::new();
    let shared = Upstream::start("shared").await;
    let (_gw, running) = env.start(&env.config(&shared.url(), &shared.url())).await;
    let got = h1(
        running.addr("http").expect("http"),
        get("GloBex.gw.test:8080", "/orders/7?expand=items&x=%20y"),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = shared.requests().remove(0);
    let headers: serde_json::Map<String, serde_json::Value> = seen
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").into()))
        .collect();
    let case = serde_json::json!({
        "headers": headers,
        "method": seen.method,
        "path": seen.path,
        "kid": "k1",
        "secret": SIGNING_SECRET,
    });
    (case, seen)
}

fn check_snippet(program: &str, code: &str, case: &serde_json::Value) {
    assert_eq!(
        run(program, code, case),
        "true",
        "{program}: genuine request"
    );

    let mut changed = case.clone();
    changed["path"] = "/orders/8?expand=items&x=%20y".into();
    assert_eq!(
        run(program, code, &changed),
        "false",
        "{program}: changed path"
    );

    let mut changed = case.clone();
    changed["headers"]["x-tenant-id"] = "acme".into();
    assert_eq!(
        run(program, code, &changed),
        "false",
        "{program}: changed tenant"
    );

    let mut changed = case.clone();
    changed["now"] = (tenant_gateway::signing::unix_now() + 3600).into();
    assert_eq!(
        run(program, code, &changed),
        "false",
        "{program}: replay after the window"
    );

    let mut changed = case.clone();
    changed["secret"] = "some-other-secret-of-enough-length".into();
    assert_eq!(
        run(program, code, &changed),
        "false",
        "{program}: wrong key"
    );
}

#[tokio::test]
async fn readme_python_snippet_verifies_real_gateway_output() {
    let (case, _) = real_signed_request().await;
    let code = format!("{}\n{PY_HARNESS}", snippet("verify-python"));
    check_snippet("python3", &code, &case);
}

#[tokio::test]
async fn readme_node_snippet_verifies_real_gateway_output() {
    let (case, _) = real_signed_request().await;
    let code = format!("{}\n{JS_HARNESS}", snippet("verify-node"));
    check_snippet("node", &code, &case);
}
