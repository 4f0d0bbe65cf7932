//! `GET /config/effective`: the config as the gateway runs it, as JSON. Every key with its
//! default filled in, and per tenant the limits it ends up with (plan, then overrides, then
//! defaults). Secrets never appear: the file names them only by `secret_env` / `secret_file`,
//! credentials written into URLs (`redis://:password@host`) are replaced by `<redacted>`, and
//! API key hashes are shown as a count.

use serde_json::{Value, json};

use crate::config::raw::RawConfig;
use crate::snapshot::Tenant;

/// The effective config of `raw` compiled into `tenants`.
pub fn effective(raw: &RawConfig, tenants: &[Tenant]) -> Value {
    let mut v = serde_json::to_value(raw).unwrap_or(Value::Null);
    redact_urls(&mut v);
    // API key hashes identify keys that may be guessable: shown as a count only.
    if let Some(tenants) = v.get_mut("tenants").and_then(Value::as_object_mut) {
        for t in tenants.values_mut() {
            if let Some(keys) = t.get_mut("api_keys_sha256") {
                let n = keys.as_array().map_or(0, Vec::len);
                *keys = json!(format!("<{n} redacted>"));
            }
        }
    }
    let resolved: serde_json::Map<String, Value> = tenants
        .iter()
        .map(|t| {
            let l = &t.limits;
            (
                t.name.to_string(),
                json!({
                    "plan": &*t.plan,
                    "rate": l.rate.map(|r| json!({"per_second": r.per_second, "burst": r.burst})),
                    "max_concurrent": l.max_concurrent,
                    "connect_timeout_ms": l.connect_timeout.as_millis() as u64,
                    "request_timeout_ms": l.request_timeout.as_millis() as u64,
                    "max_body_bytes": l.max_body_bytes,
                    "queue_ms": l.queue.map(|d| d.as_millis() as u64),
                    "quota": l.quota.map(|q| json!({"requests": q.requests, "period": q.period.as_str()})),
                    "weight": l.weight,
                }),
            )
        })
        .collect();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("resolved_tenant_limits".to_owned(), Value::Object(resolved));
    }
    v
}

/// Replaces the user-info of every `scheme://user:password@host` string with `<redacted>`.
fn redact_urls(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Some(r) = redact_url(s) {
                *s = r;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_urls),
        Value::Object(map) => map.values_mut().for_each(redact_urls),
        _ => {}
    }
}

fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://<redacted>@{}", &rest[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@10.0.0.1:6379/0").as_deref(),
            Some("redis://<redacted>@10.0.0.1:6379/0")
        );
        assert_eq!(redact_url("https://auth.example.com/jwks?x=a@b"), None);
        assert_eq!(redact_url("no url"), None);
    }
}
