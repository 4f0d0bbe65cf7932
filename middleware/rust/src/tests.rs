//! Unit tests: every case of the shared vectors (`middleware/testvectors/signatures.json`), the
//! layer's refusals, replay guard and task-local scope.

use std::convert::Infallible;

use serde_json::Value;
use tower::{Layer, ServiceExt};

use super::*;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testvectors/signatures.json"
    );
    let text = std::fs::read_to_string(path).expect("read the shared vectors");
    serde_json::from_str(&text).expect("vectors are JSON")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} is not a string in {v}"))
}

/// A layer configured as a vector's verifier: every HMAC key, Ed25519 through the JWKS.
fn layer_for(vec: &Value, verifier: &Value) -> TenantContextLayer {
    let mut b = TenantContextLayer::builder();
    for (kid, key) in vec["keys"].as_object().expect("keys") {
        if key["algorithm"] == "hmac-sha256" {
            b = b.hmac_key(kid, s(key, "secret"));
        }
    }
    b = b.jwks(&vec["jwks"].to_string()).expect("jwks");
    if let Some(aud) = verifier["audience"].as_str() {
        b = b.audience(aud);
    }
    b.max_skew_s(verifier["max_skew_s"].as_u64().expect("max_skew_s"))
        .build()
}

/// The request as the upstream receives it from the gateway.
fn request(r: &Value, header: Option<&str>) -> Request<()> {
    let mut b = Request::builder()
        .method(s(r, "method"))
        .uri(s(r, "path_and_query"))
        .header("host", s(r, "authority"))
        .header("x-request-id", s(r, "request_id"))
        .header("x-tenant-id", s(r, "tenant"))
        .header("x-tenant-plan", s(r, "plan"));
    for (name, field) in [
        ("x-tenant-subject", "subject_header"),
        ("x-tenant-source", "source"),
    ] {
        let v = s(r, field);
        if !v.is_empty() {
            b = b.header(name, HeaderValue::from_bytes(v.as_bytes()).expect("value"));
        }
    }
    if let Some(h) = header {
        b = b.header("x-tenant-signature", h);
    }
    b.body(()).expect("request")
}

#[test]
fn every_verify_vector_is_decided_as_expected() {
    let vec = vectors();
    let cases = vec["verify"].as_array().expect("verify[]");
    assert!(cases.len() > 50);
    for case in cases {
        let name = s(case, "name");
        let layer = layer_for(&vec, &case["verifier"]);
        let req = request(&case["request"], case["header"].as_str());
        let now = case["now"].as_u64().expect("now");
        let got = layer.check_at(&req, now);
        let reason = s(case, "reason");
        match got {
            Ok(ctx) => {
                assert!(case["valid"] == true, "{name}: accepted, expected {reason}");
                let r = &case["request"];
                assert_eq!(ctx.tenant, s(r, "tenant"));
                assert_eq!(ctx.request_id, s(r, "request_id"));
                let sub = s(r, "subject_header");
                let expected = (!sub.is_empty()).then(|| decode_subject(sub).expect("decodes"));
                assert_eq!(ctx.subject, expected, "{name}");
            }
            Err(refusal) => {
                assert!(case["valid"] == false, "{name}: refused with {refusal:?}");
                let raw_subject = !s(&case["request"], "subject_header").is_ascii();
                if raw_subject {
                    // A header value that is not ASCII never reaches the MAC here (the vectors'
                    // `mismatch` is what a verifier fed the raw text gets); refused either way.
                    assert_eq!(refusal, Refusal::Malformed, "{name}");
                } else {
                    assert_eq!(refusal.as_str(), reason, "{name}");
                }
            }
        }
    }
}

#[test]
fn every_signature_vector_verifies_once_then_is_a_replay() {
    let vec = vectors();
    for case in vec["signatures"].as_array().expect("signatures[]") {
        let layer = layer_for(
            &vec,
            &serde_json::json!({"audience": case["audience"], "max_skew_s": 300}),
        );
        let req = request(case, Some(s(case, "header")));
        let ts = case["ts"].as_u64().expect("ts");
        let ctx = layer
            .check_at(&req, ts)
            .unwrap_or_else(|e| panic!("{}: {e:?}", s(case, "name")));
        assert_eq!(ctx.subject.as_deref().unwrap_or(""), s(case, "subject"));
        assert_eq!(ctx.source, s(case, "source"));
        assert_eq!(layer.check_at(&req, ts + 10), Err(Refusal::Replay));
        // Past the window it is stale, not a replay.
        assert_eq!(layer.check_at(&req, ts + 301), Err(Refusal::Stale));
    }
}

#[test]
fn every_envelope_vector_is_made_and_opened_byte_for_byte() {
    let vec = vectors();
    for case in vec["envelopes"].as_array().expect("envelopes[]") {
        let name = s(case, "name");
        let c = &case["context"];
        let ctx = TenantContext {
            tenant: s(c, "tenant").into(),
            plan: s(c, "plan").into(),
            subject: c["subject"].as_str().map(str::to_owned),
            source: "host".into(),
            request_id: s(c, "request_id").into(),
        };
        let key = s(case, "service_key").as_bytes();
        let issued = case["issued_at"].as_u64().expect("issued_at");
        let env = make_envelope(&case["payload"], &ctx, key, issued).expect("envelope");
        assert_eq!(env, case["envelope"], "{name}");
        let canonical = envelope_canonical(env.as_object().expect("object")).expect("canonical");
        assert_eq!(
            String::from_utf8(canonical).expect("utf-8"),
            s(case, "canonical"),
            "{name}"
        );
        let (opened, payload) = open_envelope(&case["envelope"], key, None, issued).expect("opens");
        assert_eq!(payload, case["payload"]);
        assert_eq!(
            (opened.tenant, opened.source),
            (ctx.tenant, "job".to_owned())
        );
        assert_eq!(opened.subject, ctx.subject);
        assert_eq!(
            open_envelope(&case["envelope"], key, Some(60), issued + 61),
            Err(EnvelopeError::TooOld)
        );
    }
    for case in vec["envelope_rejections"]
        .as_array()
        .expect("envelope_rejections[]")
    {
        let got = open_envelope(
            &case["envelope"],
            s(case, "service_key").as_bytes(),
            None,
            0,
        );
        assert!(got.is_err(), "{}: opened", s(case, "name"));
    }
    for case in vec["jcs"].as_array().expect("jcs[]") {
        assert_eq!(
            canonical_json(&case["input"]).as_deref(),
            Ok(s(case, "output"))
        );
    }
}

// === the layer as a tower service ===

fn signed(key: &signing::SigningKey, rid: &str, aud: &str) -> Request<()> {
    let f = signing::SignedFields {
        request_id: rid,
        method: "GET",
        authority: "acme.gw.test",
        path_and_query: "/x?y=1",
        tenant: "acme",
        plan: "enterprise",
        subject: "zo%C3%AB",
        source: "host,token",
    };
    Request::builder()
        .uri("/x?y=1")
        .header("host", "acme.gw.test")
        .header("x-request-id", rid)
        .header("x-tenant-id", "acme")
        .header("x-tenant-plan", "enterprise")
        .header("x-tenant-subject", "zo%C3%AB")
        .header("x-tenant-source", "host,token")
        .header("x-tenant-signature", key.sign_v2(unix_now(), &f, aud))
        .body(())
        .expect("request")
}

#[tokio::test]
async fn the_service_sets_the_context_and_refuses_with_401_json() {
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let seen = refusals.clone();
    let layer = TenantContextLayer::builder()
        .hmac_key("k3", b"secret")
        .audience("shared")
        .exempt_path("/healthz")
        .on_reject(move |r, _| seen.lock().expect("lock").push(r))
        .build();
    let svc = layer.layer(tower::service_fn(|req: Request<()>| async move {
        tokio::task::yield_now().await;
        let from_ext = req.extensions().get::<TenantContext>().cloned();
        let body = match (current_tenant(), from_ext) {
            (Some(t), Some(e)) if t == e => {
                format!("{}|{}", t.tenant, t.subject.unwrap_or_default())
            }
            (None, None) => "none".to_owned(),
            other => format!("disagree {other:?}"),
        };
        Ok::<_, Infallible>(Response::new(body))
    }));
    let key = signing::SigningKey::new("k3", b"secret");

    let first = signed(&key, "r1", "shared");
    // The same request again, byte for byte: a replay.
    let replay = {
        let mut r = Request::new(());
        *r.uri_mut() = first.uri().clone();
        *r.headers_mut() = first.headers().clone();
        r
    };
    let res = svc.clone().oneshot(first).await.expect("infallible");
    assert_eq!(
        (res.status(), res.body().as_str()),
        (StatusCode::OK, "acme|zoë")
    );
    let res = svc.clone().oneshot(replay).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.body(), ERROR_BODY);

    let wrong_aud = svc
        .clone()
        .oneshot(signed(&key, "r3", "other"))
        .await
        .expect("ok");
    assert_eq!(wrong_aud.status(), StatusCode::UNAUTHORIZED);
    let missing = Request::builder().uri("/x").body(()).expect("req");
    assert_eq!(
        svc.clone().oneshot(missing).await.expect("ok").status(),
        StatusCode::UNAUTHORIZED
    );
    let health = Request::builder().uri("/healthz").body(()).expect("req");
    let res = svc.clone().oneshot(health).await.expect("ok");
    assert_eq!(
        (res.status(), res.body().as_str()),
        (StatusCode::OK, "none")
    );

    let got = refusals.lock().expect("lock").clone();
    assert!(
        got.ends_with(&[Refusal::Replay, Refusal::Audience, Refusal::Missing]),
        "{got:?}"
    );
    assert_eq!(current_tenant(), None, "nothing leaks out of the scope");
}

#[tokio::test]
async fn jobs_run_with_their_own_tenant_and_outside_none() {
    let key = b"service key";
    let ctx = |t: &str| TenantContext {
        tenant: t.into(),
        plan: "p".into(),
        subject: None,
        source: "host".into(),
        request_id: format!("req-{t}"),
    };
    let a = scope(ctx("acme"), async {
        job_envelope(&serde_json::json!({"n": 1}), key)
    })
    .await
    .expect("envelope");
    let b = scope(ctx("globex"), async {
        job_envelope(&serde_json::json!({"n": 2}), key)
    })
    .await
    .expect("envelope");
    assert_eq!(
        job_envelope(&Value::Null, key),
        Err(EnvelopeError::NoContext)
    );
    let job = |payload: Value| async move {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(current_tenant().map(|t| (t.tenant, t.source)));
            tokio::task::yield_now().await;
        }
        (payload["n"].clone(), seen)
    };
    let (ra, rb) = tokio::join!(run_in_tenant(&a, key, job), run_in_tenant(&b, key, job));
    let (na, sa) = ra.expect("a runs");
    let (nb, sb) = rb.expect("b runs");
    assert_eq!(na, 1);
    assert_eq!(nb, 2);
    assert!(
        sa.iter().all(|t| t == &Some(("acme".into(), "job".into()))),
        "{sa:?}"
    );
    assert!(
        sb.iter()
            .all(|t| t == &Some(("globex".into(), "job".into()))),
        "{sb:?}"
    );
    assert_eq!(current_tenant(), None);
    let sync = run_in_tenant_sync(&a, key, |_| current_tenant().map(|t| t.tenant));
    assert_eq!(sync, Ok(Some("acme".to_owned())));
    let mut tampered = a.clone();
    tampered["tenant"] = "globex".into();
    assert_eq!(
        run_in_tenant_sync(&tampered, key, |_| unreachable!(
            "a refused job runs nothing"
        )),
        Err(EnvelopeError::Signature)
    );
}
