//! Signed job envelopes: the tenant context carried into background jobs.
//!
//! The format is the one of the Python and Node packages (`middleware/README.md`, "Job
//! envelope"), byte for byte, so a job queued by one language runs in another:
//!
//! ```text
//! {"v":1,"tenant":..,"plan":..,"subject":..|null,"request_id":..,"issued_at":<unix s>,
//!  "payload":<json>,"sig":"<base64url HMAC-SHA256(service_key, canonical)>"}
//! canonical = "job-v1\n" + JCS({"issued_at","payload","plan","request_id","subject","tenant"})
//! ```
//!
//! JCS is RFC 8785: object keys sorted by UTF-16 code units, no whitespace, numbers as
//! ECMAScript prints them, strings as `JSON.stringify` writes them.

use std::future::Future;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Number, Value};
use tenant_gateway_signing::unix_now;

use crate::{CURRENT, TenantContext, current_tenant, sync_scope};

/// The envelope format version (`"v": 1`).
pub const ENVELOPE_VERSION: u64 = 1;
const MAX_SAFE_INT: u64 = (1 << 53) - 1;

/// A job envelope that could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("job_envelope() needs a tenant context (call it while handling a request or job)")]
    NoContext,
    #[error("the service key must not be empty")]
    EmptyKey,
    #[error("not a v1 job envelope")]
    Version,
    #[error("envelope field {0:?} is missing or of the wrong type")]
    Field(&'static str),
    #[error("envelope cannot be canonicalised: {0}")]
    NotCanonical(&'static str),
    #[error("envelope signature does not verify")]
    Signature,
    #[error("envelope is older than max_age_s")]
    TooOld,
}

// === canonical JSON (RFC 8785) ===

/// The RFC 8785 (JCS) serialisation of `value`. Integers beyond ±2^53 must be exactly
/// representable as doubles (JSON numbers are IEEE doubles); anything else is refused.
pub fn canonical_json(value: &Value) -> Result<String, EnvelopeError> {
    let mut out = String::new();
    write_canonical(value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut String) -> Result<(), EnvelopeError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => out.push_str(&es_number_of(n)?),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(v, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// A string as `JSON.stringify` writes it: only `"`, `\` and control characters escaped.
fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn es_number_of(n: &Number) -> Result<String, EnvelopeError> {
    const INEXACT: &str = "integer not exactly representable as a double";
    if let Some(i) = n.as_i64() {
        if i.unsigned_abs() <= MAX_SAFE_INT {
            return Ok(i.to_string());
        }
        let f = i as f64;
        return if f as i128 == i128::from(i) {
            es_number(f)
        } else {
            Err(EnvelopeError::NotCanonical(INEXACT))
        };
    }
    if let Some(u) = n.as_u64() {
        let f = u as f64;
        // 2^64 itself (what u64::MAX rounds to) is not a u64.
        return if f < 18_446_744_073_709_551_616.0 && f as u128 == u128::from(u) {
            es_number(f)
        } else {
            Err(EnvelopeError::NotCanonical(INEXACT))
        };
    }
    es_number(n.as_f64().unwrap_or(f64::NAN))
}

/// A double as ECMAScript's `Number.prototype.toString` writes it (RFC 8785 §3.2.2.3).
fn es_number(x: f64) -> Result<String, EnvelopeError> {
    if !x.is_finite() {
        return Err(EnvelopeError::NotCanonical("NaN and Infinity are not JSON"));
    }
    if x == 0.0 {
        return Ok("0".into());
    }
    if x < 0.0 {
        return Ok(format!("-{}", es_number(-x)?));
    }
    // `{:e}` gives the shortest digits that round-trip, as ECMAScript requires: d[.ddd]e<exp>.
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let digits = digits.trim_end_matches('0');
    let k = digits.len() as i64;
    let n = exp + 1; // value = 0.<digits> × 10^n
    Ok(if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let sign = if e >= 0 { '+' } else { '-' };
        let head = if k == 1 {
            digits.to_owned()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        format!("{head}e{sign}{}", e.abs())
    })
}

// === envelopes ===

/// The signed bytes of an envelope: `job-v1\n` + JCS of its six covered fields (a missing one
/// counts as `null`).
pub fn envelope_canonical(env: &Map<String, Value>) -> Result<Vec<u8>, EnvelopeError> {
    let mut body = Map::new();
    for k in [
        "tenant",
        "plan",
        "subject",
        "request_id",
        "issued_at",
        "payload",
    ] {
        body.insert(k.to_owned(), env.get(k).cloned().unwrap_or(Value::Null));
    }
    let mut out = b"job-v1\n".to_vec();
    out.extend_from_slice(canonical_json(&Value::Object(body))?.as_bytes());
    Ok(out)
}

fn mac(service_key: &[u8], canonical: &[u8]) -> Result<String, EnvelopeError> {
    if service_key.is_empty() {
        return Err(EnvelopeError::EmptyKey);
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, service_key);
    Ok(URL_SAFE_NO_PAD.encode(hmac::sign(&key, canonical).as_ref()))
}

/// An envelope for `payload` carrying `ctx`, issued at `issued_at` (unix seconds).
pub fn make_envelope(
    payload: &Value,
    ctx: &TenantContext,
    service_key: &[u8],
    issued_at: u64,
) -> Result<Value, EnvelopeError> {
    let mut env = Map::new();
    env.insert("v".into(), ENVELOPE_VERSION.into());
    env.insert("tenant".into(), ctx.tenant.clone().into());
    env.insert("plan".into(), ctx.plan.clone().into());
    env.insert(
        "subject".into(),
        ctx.subject.clone().map_or(Value::Null, Value::String),
    );
    env.insert("request_id".into(), ctx.request_id.clone().into());
    env.insert("issued_at".into(), issued_at.into());
    env.insert("payload".into(), payload.clone());
    let sig = mac(service_key, &envelope_canonical(&env)?)?;
    env.insert("sig".into(), sig.into());
    Ok(Value::Object(env))
}

/// A signed, JSON-serialisable envelope carrying the current tenant ([`current_tenant`]) with
/// `payload`, issued now. Call it while handling a request (or a job); queue the result.
pub fn job_envelope(
    payload: &Value,
    service_key: impl AsRef<[u8]>,
) -> Result<Value, EnvelopeError> {
    let ctx = current_tenant().ok_or(EnvelopeError::NoContext)?;
    make_envelope(payload, &ctx, service_key.as_ref(), unix_now())
}

/// Checks an envelope's shape and signature (constant time) and, with `max_age_s`, its age at
/// `now`; returns the job's context (`source = "job"`) and its payload.
pub fn open_envelope(
    env: &Value,
    service_key: &[u8],
    max_age_s: Option<u64>,
    now: u64,
) -> Result<(TenantContext, Value), EnvelopeError> {
    let env = env.as_object().ok_or(EnvelopeError::Version)?;
    if env.get("v").and_then(Value::as_u64) != Some(ENVELOPE_VERSION) {
        return Err(EnvelopeError::Version);
    }
    let text = |name: &'static str| match env.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(EnvelopeError::Field(name)),
    };
    let (tenant, plan, request_id, sig) = (
        text("tenant")?,
        text("plan")?,
        text("request_id")?,
        text("sig")?,
    );
    let subject = match env.get("subject") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(EnvelopeError::Field("subject")),
    };
    let issued_at = match env.get("issued_at") {
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.as_i64(),
        _ => return Err(EnvelopeError::Field("issued_at")),
    };
    let payload = env.get("payload").ok_or(EnvelopeError::Field("payload"))?;
    let expected = mac(service_key, &envelope_canonical(env)?)?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), sig.as_bytes())
        .is_err()
    {
        return Err(EnvelopeError::Signature);
    }
    if let Some(max_age) = max_age_s {
        // An issued_at beyond i64 is in the future: never too old.
        if issued_at.is_some_and(|t| i128::from(now) - i128::from(t) > i128::from(max_age)) {
            return Err(EnvelopeError::TooOld);
        }
    }
    let ctx = TenantContext {
        tenant,
        plan,
        subject,
        source: "job".into(),
        request_id,
    };
    Ok((ctx, payload.clone()))
}

/// Verifies `envelope` (an error runs nothing), then runs `f(payload)` and awaits its future
/// with the envelope's tenant as the current tenant ([`current_tenant`], `source = "job"`).
/// Jobs of different tenants interleaved on one task or worker each see their own.
pub async fn run_in_tenant<F, Fut>(
    envelope: &Value,
    service_key: impl AsRef<[u8]>,
    f: F,
) -> Result<Fut::Output, EnvelopeError>
where
    F: FnOnce(Value) -> Fut,
    Fut: Future,
{
    let (ctx, payload) = open_envelope(envelope, service_key.as_ref(), None, unix_now())?;
    let fut = sync_scope(ctx.clone(), || f(payload));
    Ok(CURRENT.scope(ctx, fut).await)
}

/// [`run_in_tenant`] for a synchronous job.
pub fn run_in_tenant_sync<F, R>(
    envelope: &Value,
    service_key: impl AsRef<[u8]>,
    f: F,
) -> Result<R, EnvelopeError>
where
    F: FnOnce(Value) -> R,
{
    let (ctx, payload) = open_envelope(envelope, service_key.as_ref(), None, unix_now())?;
    Ok(sync_scope(ctx, || f(payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_ecmascript_does() {
        for (x, s) in [
            (1.0, "1"),
            (100.0, "100"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (1e-6, "0.000001"),
            (2.5, "2.5"),
            (-0.0, "0"),
            (123.456, "123.456"),
            (0.1, "0.1"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (1.5e-9, "1.5e-9"),
            (12345678901234567890.0, "12345678901234567000"),
        ] {
            assert_eq!(es_number(x).as_deref(), Ok(s), "{x}");
        }
        assert!(es_number(f64::NAN).is_err());
    }

    #[test]
    fn big_integers_only_when_exact() {
        let v: Value = serde_json::from_str("[9007199254740993]").expect("json");
        assert!(canonical_json(&v).is_err());
        let v: Value = serde_json::from_str("[9007199254740992, -9007199254740992]").expect("json");
        assert_eq!(
            canonical_json(&v).as_deref(),
            Ok("[9007199254740992,-9007199254740992]")
        );
        let v: Value = serde_json::from_str("[18446744073709551615]").expect("json");
        assert!(canonical_json(&v).is_err());
    }
}
