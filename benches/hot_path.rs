//! Per-request costs of the hot path: token identity (HS256, RS256, ES256; cached and not),
//! tenant resolution by host (10 and 10,000 tenants), signing, and the full header rewrite.
//!
//!     cargo bench --bench hot_path

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, encode};
use serde_json::json;
use tenant_gateway::config;
use tenant_gateway::conn::ConnInfo;
use tenant_gateway::forward::{Forwarding, rewrite_request_head};
use tenant_gateway::signing::{SignedFields, SigningKey, unix_now};
use tenant_gateway::tenant::{request_host, resolve_tenant};
use tenant_gateway::token::{TokenAuth, base_validation};

fn token_auth(alg: Algorithm) -> (TokenAuth, String) {
    let claims = json!({
        "tenant_id": "acme", "sub": "user-42", "iss": "https://auth.test/", "aud": "gateway",
        "exp": unix_now() + 3600,
    });
    let (enc, dec) = match alg {
        Algorithm::HS256 => (
            EncodingKey::from_secret(b"bench-secret-0123456789abcdef"),
            DecodingKey::from_secret(b"bench-secret-0123456789abcdef"),
        ),
        Algorithm::RS256 => {
            let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa");
            (
                EncodingKey::from_rsa_pem(k.serialize_pem().as_bytes()).expect("rsa"),
                DecodingKey::from_rsa_pem(k.public_key_pem().as_bytes()).expect("rsa"),
            )
        }
        _ => {
            let k = rcgen::KeyPair::generate().expect("ec");
            (
                EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).expect("ec"),
                DecodingKey::from_ec_pem(k.public_key_pem().as_bytes()).expect("ec"),
            )
        }
    };
    let mut h = Header::new(alg);
    h.kid = Some("k".into());
    let token = encode(&h, &claims, &enc).expect("encode");
    let base = base_validation(Some("https://auth.test/"), Some("gateway"), 30);
    let auth = TokenAuth::new(
        "tenant_id",
        vec![alg],
        base,
        vec![("k".into(), dec)],
        None,
        vec![],
    )
    .expect("auth");
    (auth, token)
}

fn identity(c: &mut Criterion) {
    let mut g = c.benchmark_group("identity");
    for (name, alg) in [
        ("HS256", Algorithm::HS256),
        ("RS256", Algorithm::RS256),
        ("ES256", Algorithm::ES256),
    ] {
        let (auth, token) = token_auth(alg);
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| auth.verify(black_box(&token)).expect("valid"))
        });
        let now = unix_now();
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| auth.authenticate(black_box(&token), now).expect("valid"))
        });
    }
    g.finish();
}

fn config_with_tenants(n: usize, dir: &std::path::Path) -> tenant_gateway::snapshot::Snapshot {
    let yaml = config_yaml(n, &dir.join("signing.key"));
    config::load_bytes(yaml.as_bytes()).expect("config")
}

/// A config with `n` tenants (each with a custom host and a rate limit); writes the key file.
fn config_yaml(n: usize, key: &std::path::Path) -> String {
    std::fs::write(key, "bench-signing-secret-0123456789").expect("write");
    let mut yaml = format!(
        "version: 1\nlisteners: [ {{ name: http, bind: \"127.0.0.1:0\" }} ]\n\
         tenancy: {{ base_domains: [gw.test], sources: [sni, host] }}\n\
         signing: {{ active_key: k1, keys: [ {{ id: k1, secret_file: {} }} ] }}\n\
         plans: {{ free: {{ rate: {{ per_second: 100, burst: 200 }}, max_concurrent: 50 }} }}\n\
         upstreams: {{ shared: {{ endpoints: [\"http://127.0.0.1:9000\"] }} }}\n\
         routes: [ {{ path_prefix: /, upstream: shared }} ]\ntenants:\n",
        key.display()
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  t{i}: {{ plan: free, hosts: [api.t{i}.example] }}\n"
        ));
    }
    yaml
}

fn resolution(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("resolve_tenant");
    for n in [10usize, 10_000] {
        let snap = config_with_tenants(n, dir.path());
        let req = Request::builder()
            .uri("/orders")
            .header("host", "T7.gw.test:8443")
            .body(())
            .expect("request");
        g.bench_function(format!("{n}_tenants"), |b| {
            b.iter(|| {
                let host = request_host(black_box(&req)).expect("host");
                resolve_tenant(&snap, Some("t7.gw.test"), host).expect("tenant")
            })
        });
    }
    g.finish();
}

/// Reload of a 10,000-tenant config: parse + compile + swap (the file is already in memory).
fn reload(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("signing.key");
    let yaml = config_yaml(10_000, &key);
    // Runtime state looked up by identity, as the gateway's reload does.
    let rt = tenant_gateway::runtime::Runtime::default();
    let current = arc_swap::ArcSwap::from_pointee(
        config::load_bytes_with(yaml.as_bytes(), &rt).expect("config"),
    );
    let mut g = c.benchmark_group("reload");
    g.sample_size(10);
    g.bench_function("compile_and_swap_10000_tenants", |b| {
        b.iter(|| {
            let next = config::load_bytes_with(yaml.as_bytes(), &rt).expect("config");
            next.activate();
            current.store(std::sync::Arc::new(next));
        })
    });
    g.finish();
}

fn signing(c: &mut Criterion) {
    let key = SigningKey::new("k1", b"bench-signing-secret-0123456789");
    let fields = SignedFields {
        request_id: "0123456789abcdef0123456789abcdef",
        method: "GET",
        authority: "acme.gw.test",
        path_and_query: "/api/orders?page=2",
        tenant: "acme",
        plan: "enterprise",
        subject: "user-42",
        source: "sni,host,token",
    };
    c.bench_function("sign", |b| {
        b.iter(|| key.sign(unix_now(), black_box(&fields)))
    });
    c.bench_function("sign_v2_hmac", |b| {
        b.iter(|| key.sign_v2(unix_now(), black_box(&fields), "shared"))
    });
    let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .expect("ed25519")
        .serialize_pem();
    let ed = SigningKey::ed25519_pem("e1", pem.as_bytes()).expect("ed25519");
    c.bench_function("sign_v2_ed25519", |b| {
        b.iter(|| ed.sign_v2(unix_now(), black_box(&fields), "shared"))
    });
}

/// A pool's fair-share queue: taking and returning a slot below the cap (the cost every request
/// to a pool with `capacity` pays), and one dispatch at the cap with 10 and with 10,000 tenants
/// waiting (release a slot, hand it to the next tenant in turn, that tenant queues again).
fn fair_share(c: &mut Criterion) {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use tenant_gateway::fairshare::{CapacitySettings, FairQueue, Limit};
    let settings = |limit| CapacitySettings {
        limit: Limit::Fixed(limit),
        queue: std::time::Duration::from_secs(60),
        max_queued_per_tenant: 16,
        max_queued: 1_000_000,
    };
    let mut g = c.benchmark_group("fair_share");
    let q = Arc::new(FairQueue::new(settings(64)));
    g.bench_function("admit_below_cap", |b| {
        b.iter(|| drop(black_box(q.try_acquire().expect("slot"))))
    });
    for tenants in [10usize, 10_000] {
        let q = Arc::new(FairQueue::new(settings(1)));
        let names: Vec<String> = (0..tenants).map(|i| format!("t{i}")).collect();
        let mut held = Some(q.try_acquire().expect("slot"));
        let mut waiting: VecDeque<_> = names
            .iter()
            .map(|n| (n.as_str(), q.enqueue(n, 1).expect("queued")))
            .collect();
        g.bench_function(format!("dispatch_{tenants}_tenants_waiting"), |b| {
            b.iter(|| {
                drop(held.take());
                let (name, mut w) = waiting.pop_front().expect("waiter");
                held = Some(w.try_granted().expect("granted in turn"));
                waiting.push_back((name, q.enqueue(name, 1).expect("queued")));
            })
        });
    }
    g.finish();
}

/// The path normaliser on a path that is already normal (the common case) and on a dirty one.
fn normalize(c: &mut Criterion) {
    use tenant_gateway::normalize::{PathPolicy, normalize_path};
    let mut g = c.benchmark_group("normalize");
    for (name, path) in [
        ("normal", "/api/v1/orders/12345/items"),
        ("dirty", "//api/./v1/%6Frders/x/../12345/items"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| normalize_path(black_box(path), PathPolicy::default()))
        });
    }
    g.finish();
}

/// The verified-token cache under a flood: a miss (verify + insert) costs the same with an
/// empty cache and after 100,000 distinct valid tokens; a garbage token costs one parse; a
/// token in use still hits after the flood.
fn token_cache(c: &mut Criterion) {
    let secret = b"bench-secret-0123456789abcdef";
    let enc = EncodingKey::from_secret(secret);
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k".into());
    let exp = unix_now() + 3600;
    let make = |i: u64| {
        let claims = json!({
            "tenant_id": "acme", "sub": format!("user-{i}"), "iss": "https://auth.test/",
            "aud": "gateway", "exp": exp,
        });
        encode(&h, &claims, &enc).expect("encode")
    };
    let auth = || {
        TokenAuth::new(
            "tenant_id",
            vec![Algorithm::HS256],
            base_validation(Some("https://auth.test/"), Some("gateway"), 30),
            vec![("k".into(), DecodingKey::from_secret(secret))],
            None,
            vec![],
        )
        .expect("auth")
    };
    let now = unix_now();
    let mut g = c.benchmark_group("token_cache");
    let mut next = 0u64;
    let empty = auth();
    g.bench_function("miss/empty_cache", |b| {
        b.iter_batched(
            || {
                next += 1;
                make(next)
            },
            |t| empty.authenticate(&t, now).expect("valid"),
            criterion::BatchSize::SmallInput,
        )
    });
    let flooded = auth();
    let in_use = make(u64::MAX);
    flooded.authenticate(&in_use, now).expect("valid");
    for i in 0..100_000u64 {
        let t = make(1_000_000_000 + i);
        flooded.authenticate(&t, now).expect("valid");
        if i % 1000 == 0 {
            flooded.authenticate(&in_use, now).expect("valid");
        }
    }
    g.bench_function("miss/after_100k_tokens", |b| {
        b.iter_batched(
            || {
                next += 1;
                make(next)
            },
            |t| flooded.authenticate(&t, now).expect("valid"),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("hit/after_100k_tokens", |b| {
        b.iter(|| {
            flooded
                .authenticate(black_box(&in_use), now)
                .expect("valid")
        })
    });
    let mut garbage = 0u64;
    g.bench_function("garbage", |b| {
        b.iter_batched(
            || {
                garbage += 1;
                format!("eyJhbGciOiJIUzI1NiJ9.{garbage:x}.{garbage:x}")
            },
            |t| flooded.authenticate(&t, now).is_err(),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn header_rewrite(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = config_with_tenants(10, dir.path());
    let conn = ConnInfo::new(
        "127.0.0.1:40000".parse::<SocketAddr>().expect("addr"),
        true,
        Some("t1.gw.test"),
    );
    let id = resolve_tenant(&snap, Some("t1.gw.test"), Some("t1.gw.test"))
        .expect("ok")
        .expect("tenant");
    let request_id = tenant_gateway::headers::forwarding::generate_request_id();
    let fwd = Forwarding {
        tenant: snap.tenant(id.tenant),
        identity: id,
        subject: None,
        claims: &[],
        request_id: &request_id,
        signer: None,
    };
    let template = Request::builder()
        .uri("/api/orders?page=2")
        .header("host", "t1.gw.test")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .header("connection", "keep-alive")
        .header("x-tenant-id", "spoofed")
        .body(())
        .expect("request");
    let (template, _) = template.into_parts();
    c.bench_function("rewrite_request_head", |b| {
        b.iter_batched(
            || {
                let mut p = Request::new(()).into_parts().0;
                p.uri = template.uri.clone();
                p.headers = template.headers.clone();
                p
            },
            |mut parts| {
                rewrite_request_head(&snap, &conn, &fwd, &mut parts).expect("rewrite");
                parts
            },
            criterion::BatchSize::SmallInput,
        )
    });
    // What a bodiless GET pays on a reused upstream connection so that it can be sent again:
    // the forwarded head's copy, made and dropped.
    let mut forwarded = Request::new(()).into_parts().0;
    forwarded.uri = template.uri.clone();
    forwarded.headers = template.headers.clone();
    rewrite_request_head(&snap, &conn, &fwd, &mut forwarded).expect("rewrite");
    let mut g = c.benchmark_group("replay_copy");
    g.bench_function("header_map_clone", |b| {
        b.iter(|| black_box(forwarded.headers.clone()))
    });
    g.bench_function("replay", |b| {
        b.iter(|| {
            black_box(tenant_gateway::upstream_h1::Replay::new(
                &forwarded.method,
                &forwarded.uri,
                &forwarded.headers,
            ))
        })
    });
    g.finish();
}

/// One admission through a tenant's GCRA limiter (never refused here), including the
/// `RateLimit` header value it returns.
fn limiter(c: &mut Criterion) {
    let l = tenant_gateway::limits::TenantLimiter::new(tenant_gateway::snapshot::Rate {
        per_second: 1_000_000_000,
        burst: 1_000_000_000,
    })
    .expect("limiter");
    c.bench_function("limiter_check", |b| b.iter(|| black_box(l.check().is_ok())));
}

criterion_group!(
    benches,
    identity,
    resolution,
    reload,
    signing,
    header_rewrite,
    limiter,
    normalize,
    token_cache,
    fair_share
);
criterion_main!(benches);
