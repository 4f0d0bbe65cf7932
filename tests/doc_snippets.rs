//! The Python and Node verification snippets of docs/security.md, run against headers that a real gateway
//! sent to a real upstream. Each must accept the request as received and reject it with a
//! changed path, a changed tenant or a stale timestamp.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

fn snippet(marker: &str) -> String {
    let doc =
        std::fs::read_to_string(workspace().join("docs/security.md")).expect("docs/security.md");
    let at = doc
        .find(&format!("<!-- snippet: {marker} -->"))
        .unwrap_or_else(|| panic!("docs/security.md has no {marker} snippet"));
    let rest = &doc[at..];
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
    let headers = headers_json(&seen);
    let case = serde_json::json!({
        "headers": headers,
        "method": seen.method,
        "path": seen.path,
        "kid": "k1",
        "secret": SIGNING_SECRET,
    });
    (case, seen)
}

/// The headers an upstream received, as a JSON object.
fn headers_json(seen: &Seen) -> serde_json::Map<String, serde_json::Value> {
    seen.headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").into()))
        .collect()
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

// === signatures v2 (Ed25519, audience) ===

const PY_HARNESS_V2: &str = r#"
import json, sys
case = json.load(sys.stdin)
ok = verify_tenant_signature_v2(case["headers"], case["method"], case["path"], case["jwks"],
                                case["audience"], now=case.get("now"))
print("true" if ok else "false")
"#;

const JS_HARNESS_V2: &str = r#"
const c = JSON.parse(require("fs").readFileSync(0, "utf8"));
const ok = verifyTenantSignatureV2(c.headers, c.method, c.path, c.jwks, c.audience, 300, c.now ?? Date.now() / 1000);
console.log(ok ? "true" : "false");
"#;

/// A request through a gateway that signs v2 with an Ed25519 key, and the JWKS it publishes.
async fn real_v2_request() -> serde_json::Value {
    let env = Env::new();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    std::fs::write(env.path("ed.pem"), key.serialize_pem()).expect("write");
    let d = env.dir.path().display();
    let shared = Upstream::start("shared").await;
    let yaml = env.config(&shared.url(), &shared.url()).replace(
        &format!("signing:\n  active_key: k1\n  keys:\n    - {{ id: k1, secret_file: {d}/signing.key }}"),
        &format!("signing:\n  version: 2\n  active_key: e1\n  keys:\n    - {{ id: e1, algorithm: ed25519, private_key_file: {d}/ed.pem }}"),
    );
    let (_gw, running) = env.start(&yaml).await;
    let got = h1(
        running.addr("admin").expect("admin"),
        get("localhost", "/.well-known/tenant-signing-keys"),
    )
    .await;
    let jwks: serde_json::Value = serde_json::from_slice(&got.body).expect("jwks");
    let got = h1(
        running.addr("http").expect("http"),
        get("GloBex.gw.test:8080", "/orders/7?expand=items&x=%20y"),
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = shared.requests().remove(0);
    let headers = headers_json(&seen);
    serde_json::json!({
        "headers": headers, "method": seen.method, "path": seen.path, "jwks": jwks,
        "audience": "shared",
    })
}

fn check_snippet_v2(program: &str, code: &str, case: &serde_json::Value) {
    assert_eq!(run(program, code, case), "true", "{program}: genuine v2");
    type Change = fn(&mut serde_json::Value);
    let changes: [(&str, Change); 5] = [
        ("changed path", |c| {
            c["path"] = "/orders/8?expand=items&x=%20y".into()
        }),
        ("changed source", |c| {
            c["headers"]["x-tenant-source"] = "sni".into()
        }),
        ("another pool", |c| c["audience"] = "acme-dedicated".into()),
        ("replay after the window", |c| {
            c["now"] = (tenant_gateway::signing::unix_now() + 3600).into()
        }),
        ("unknown key", |c| {
            c["jwks"]["keys"][0]["kid"] = "other".into()
        }),
    ];
    for (what, change) in changes {
        let mut changed = case.clone();
        change(&mut changed);
        assert_eq!(run(program, code, &changed), "false", "{program}: {what}");
    }
}

#[tokio::test]
async fn readme_python_v2_snippet_verifies_real_gateway_output() {
    let case = real_v2_request().await;
    let code = format!("{}\n{PY_HARNESS_V2}", snippet("verify-python-v2"));
    check_snippet_v2("python3", &code, &case);
}

#[tokio::test]
async fn readme_node_v2_snippet_verifies_real_gateway_output() {
    let case = real_v2_request().await;
    let code = format!("{}\n{JS_HARNESS_V2}", snippet("verify-node-v2"));
    check_snippet_v2("node", &code, &case);
}
