//! The gateway against the shared test vectors (`middleware/testvectors/signatures.json`): it
//! must produce every expected canonical string and header (v1; v2 HMAC; v2 Ed25519 from the
//! PKCS#8 PEM), publish the same JWKS, percent-encode subjects the same way, and its verifier
//! must decide every verify case as the Python and Node middleware do.

use serde_json::Value;
use tenant_gateway::signing::{
    SigVersion, SignedFields, Signer, SigningKey, Verifier, VerifyError, canonical, canonical_v2,
    encode_subject, jwks,
};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/middleware/testvectors/signatures.json"
    );
    let text = std::fs::read_to_string(path).expect("read the shared vectors");
    serde_json::from_str(&text).expect("vectors are JSON")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} is not a string in {v}"))
}

fn key(vec: &Value, kid: &str) -> SigningKey {
    let k = &vec["keys"][kid];
    match s(k, "algorithm") {
        "hmac-sha256" => SigningKey::new(kid, s(k, "secret").as_bytes()),
        "ed25519" => SigningKey::ed25519_pem(kid, s(k, "private_key_pkcs8_pem").as_bytes())
            .expect("PKCS#8 PEM"),
        other => panic!("unknown algorithm {other}"),
    }
}

/// The fields as the gateway forwards them: the subject in its sent (encoded) form.
fn fields(r: &Value) -> SignedFields<'_> {
    SignedFields {
        request_id: s(r, "request_id"),
        method: s(r, "method"),
        authority: s(r, "authority"),
        path_and_query: s(r, "path_and_query"),
        tenant: s(r, "tenant"),
        plan: s(r, "plan"),
        subject: s(r, "subject_header"),
        source: s(r, "source"),
    }
}

fn reason(e: &VerifyError) -> &'static str {
    match e {
        VerifyError::Malformed => "malformed",
        VerifyError::Version => "version",
        VerifyError::UnknownKey => "unknown_kid",
        VerifyError::Algorithm => "alg",
        VerifyError::Audience => "audience",
        VerifyError::Stale => "stale",
        VerifyError::Mismatch => "mismatch",
    }
}

#[test]
fn the_gateway_signs_every_vector_byte_for_byte() {
    let vec = vectors();
    let cases = vec["signatures"].as_array().expect("signatures[]");
    assert!(cases.len() >= 30);
    for case in cases {
        let name = s(case, "name");
        assert_eq!(
            encode_subject(s(case, "subject")),
            s(case, "subject_header"),
            "{name}: subject encoding"
        );
        let f = fields(case);
        let ts = case["ts"].as_u64().expect("ts");
        let k = std::sync::Arc::new(key(&vec, s(case, "kid")));
        assert_eq!(k.algorithm().as_str(), s(case, "alg"), "{name}");
        let (version, audience, canon) = match s(case, "version") {
            "v1" => (SigVersion::V1, "", canonical(ts, &f)),
            "v2" => {
                let aud = s(case, "audience");
                (SigVersion::V2, aud, canonical_v2(ts, &f, aud))
            }
            other => panic!("{name}: unknown version {other}"),
        };
        assert_eq!(canon, s(case, "canonical"), "{name}: canonical");
        // Through the Signer, as the forward phase calls it for a pool.
        let signer = Signer {
            key: k,
            version,
            audience: audience.into(),
        };
        assert_eq!(signer.sign(ts, &f), s(case, "header"), "{name}: header");
    }
}

#[test]
fn the_gateway_publishes_the_vector_jwks() {
    let vec = vectors();
    assert_eq!(jwks([&key(&vec, "k2"), &key(&vec, "k1")]), vec["jwks"]);
}

#[test]
fn the_gateway_verifier_decides_every_vector() {
    let vec = vectors();
    let cases = vec["verify"].as_array().expect("verify[]");
    assert!(cases.len() >= 80);
    for case in cases {
        let name = s(case, "name");
        let cfg = &case["verifier"];
        let mut v = Verifier::new()
            .with_jwks(&vec["jwks"].to_string())
            .expect("jwks")
            .with_skew_seconds(cfg["max_skew_s"].as_u64().expect("max_skew_s"));
        for (kid, k) in vec["keys"].as_object().expect("keys") {
            if k["algorithm"] == "hmac-sha256" {
                v = v.with_key(kid, s(k, "secret").as_bytes());
            }
        }
        if let Some(aud) = cfg["audience"].as_str() {
            v = v.with_audience(aud);
        }
        let now = case["now"].as_u64().expect("now");
        let expected = s(case, "reason");
        let Some(header) = case["header"].as_str().filter(|h| !h.is_empty()) else {
            // No (or an empty) header: the middleware's "missing", decided before any parsing;
            // the bare verifier calls an empty value malformed.
            assert_eq!(expected, "missing", "{name}");
            assert!(v.verify_at("", &fields(&case["request"]), now).is_err());
            continue;
        };
        let got = v.verify_at(header, &fields(&case["request"]), now);
        match &got {
            Ok(()) => assert!(
                case["valid"] == true,
                "{name}: accepted, expected {expected}"
            ),
            Err(e) => {
                assert!(case["valid"] == false, "{name}: refused with {e:?}");
                assert_eq!(reason(e), expected, "{name}");
            }
        }
    }
}
