//! Verification cost per request: the bare verifier (v1 HMAC, v2 HMAC, v2 Ed25519) and the
//! whole middleware check (headers read, signature verified, replay guard, context built).
//!
//! `cargo bench -p tenant-context --bench verify`

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::Request;
use tenant_context::TenantContextLayer;
use tenant_context::signing::{SignedFields, SigningKey, Verifier, unix_now};

/// The RFC 8032 test-1 seed as a PKCS#8 v1 document.
fn ed25519() -> SigningKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&[
        0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c,
        0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae,
        0x7f, 0x60,
    ]);
    SigningKey::ed25519_pkcs8("k2", &der).expect("key")
}

fn request(rid: &str, header: String) -> Request<()> {
    Request::builder()
        .uri("/api/orders?limit=10")
        .header("host", "acme.gw.example.com")
        .header("x-request-id", rid)
        .header("x-tenant-id", "acme")
        .header("x-tenant-plan", "enterprise")
        .header("x-tenant-subject", "user-7")
        .header("x-tenant-source", "host,token")
        .header("x-tenant-signature", header)
        .body(())
        .expect("request")
}

fn fields(rid: &str) -> SignedFields<'_> {
    SignedFields {
        request_id: rid,
        method: "GET",
        authority: "acme.gw.example.com",
        path_and_query: "/api/orders?limit=10",
        tenant: "acme",
        plan: "enterprise",
        subject: "user-7",
        source: "host,token",
    }
}

fn verify(c: &mut Criterion) {
    let hmac = SigningKey::new("k1", b"bench-signing-secret-0123456789");
    let ed = ed25519();
    let pk = ed.public_key().expect("public key").to_vec();
    let verifier = Verifier::new()
        .with_key("k1", b"bench-signing-secret-0123456789")
        .with_ed25519_key("k2", &pk);
    let now = unix_now();
    let mut g = c.benchmark_group("verify_request");
    for (name, header) in [
        ("v1_hmac", hmac.sign(now, &fields("r"))),
        ("v2_hmac", hmac.sign_v2(now, &fields("r"), "shared")),
        ("v2_ed25519", ed.sign_v2(now, &fields("r"), "shared")),
    ] {
        let req = request("r", header);
        g.bench_function(name, |b| {
            b.iter(|| verifier.verify_request_at(&req, now).expect("valid"))
        });
    }
    g.finish();

    // The middleware's whole check, with a fresh signature each time (the replay guard refuses a
    // repeated one) and the guard at its steady state.
    let mut g = c.benchmark_group("middleware_check");
    for (name, key) in [("v2_hmac", &hmac), ("v2_ed25519", &ed)] {
        let layer = TenantContextLayer::builder()
            .hmac_key("k1", b"bench-signing-secret-0123456789")
            .ed25519_key("k2", &pk)
            .audience("shared")
            .build();
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let rid = format!("req-{n}");
                    let header = key.sign_v2(now, &fields(&rid), "shared");
                    request(&rid, header)
                },
                |req| layer.check_at(&req, now).expect("valid"),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
