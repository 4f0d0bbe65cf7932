//! Tenant resolution: `tenant::resolve_tenant` (then `agree` and `admit_status`) against a small
//! fixed snapshot, with arbitrary SNI and Host strings. Checks that the answer matches the host
//! table and does not depend on ASCII case. Input: `<sni>\n<host>\n<token tenant>`, where an
//! empty part means "absent".
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tenant_gateway::GatewayError;
use tenant_gateway::snapshot::Snapshot;
use tenant_gateway::tenant::{admit_status, agree, resolve_tenant};
use tenant_gateway::token::TokenClaims;

const CONFIG: &str = r#"version: 1
listeners: [ { name: http, bind: "127.0.0.1:0" } ]
tenancy: { base_domains: [gw.test, eu.gw.test], sources: [sni, host, token] }
signing: { active_key: k1, keys: [ { id: k1, secret_file: SIGNING_KEY } ] }
plans: { free: {} }
upstreams: { shared: { endpoints: ["http://127.0.0.1:9000"] } }
routes: [ { path_prefix: /, upstream: shared } ]
tenants:
  acme: { plan: free, hosts: [api.acme.example, acme.example] }
  globex: { plan: free, hosts: [globex.example] }
  initech: { plan: free, status: suspended }
  a1: { plan: free, hosts: [x.gw.test.example] }
"#;

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("signing.key");
        std::fs::write(&key, "fuzz-signing-secret-0123456789").expect("write key");
        let yaml = CONFIG.replace("SIGNING_KEY", &key.display().to_string());
        tenant_gateway::config::load_bytes(yaml.as_bytes()).expect("fixed config compiles")
    })
}

fn part(p: Option<&str>) -> Option<&str> {
    p.filter(|s| !s.is_empty())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let snap = snapshot();
    let mut parts = text.splitn(3, '\n');
    let (sni, host, token_tenant) = (part(parts.next()), part(parts.next()), part(parts.next()));

    let result = resolve_tenant(snap, sni, host);

    // The same names in lower case give the same answer.
    let (sni_lc, host_lc) = (
        sni.map(str::to_ascii_lowercase),
        host.map(str::to_ascii_lowercase),
    );
    assert_eq!(
        result,
        resolve_tenant(snap, sni_lc.as_deref(), host_lc.as_deref())
    );

    // The answer is what the host table says.
    let by_sni = sni.and_then(|s| snap.tenant_for_host(s));
    let by_host = host.and_then(|h| snap.tenant_for_host(h));
    match &result {
        Ok(Some(id)) => {
            assert!((id.tenant as usize) < snap.tenants.len());
            assert_eq!(Some(id.tenant), by_sni.or(by_host));
        }
        Ok(None) => assert!(by_sni.is_none() && by_host.is_none()),
        Err(e) => {
            assert_eq!(*e, GatewayError::Misdirected);
            assert!(by_sni.is_some() && by_host.is_some() && by_sni != by_host);
        }
    }

    let Ok(conn) = result else {
        return;
    };
    let claims = token_tenant.map(|t| TokenClaims {
        tenant: t.into(),
        subject: None,
        forwarded: Vec::new(),
        exp: u64::MAX,
    });
    if let Ok(identity) = agree(snap, conn, claims.as_ref(), None) {
        let _ = admit_status(snap, identity);
    }
});
