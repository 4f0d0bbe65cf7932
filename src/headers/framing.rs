//! Request framing and size checks that run before any phase: the defences against request
//! smuggling (RFC 9112 §6.3) and oversized request targets or header sets.
//!
//! hyper already refuses a malformed `Transfer-Encoding`, a non-numeric or conflicting
//! `Content-Length`, obs-fold and bare CR with 400 and a closed connection. What hyper lets
//! through and an edge proxy must not: `Content-Length` together with `Transfer-Encoding`
//! (hyper reads it as chunked), `Transfer-Encoding` listed twice, and repeated identical
//! `Content-Length` headers. The gateway re-frames whatever it forwards, so these checks keep a
//! front-end/back-end disagreement about where a request ends from ever reaching an upstream.
//!
//! hyper drops a `Content-Length` it finds next to `Transfer-Encoding` before the request
//! reaches us, so [`crate::conn::HeadScanner`] watches the raw bytes of each HTTP/1 request head
//! for a `Content-Length` line (a few hundred bytes per request; bodies and HTTP/2 are not
//! scanned).

use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Version};

use crate::error::GatewayError;
use crate::snapshot::ConnLimits;

/// Refuses ambiguous framing (HTTP/1.x), an over-long request target and too many headers.
/// `raw_content_lengths`: the `Content-Length` lines the raw head carried
/// ([`crate::conn::HeadScan`]);
/// hyper hides one next to `Transfer-Encoding` and folds identical repeats into one.
pub fn check_request<B>(
    req: &Request<B>,
    limits: &ConnLimits,
    raw_content_lengths: u8,
) -> Result<(), GatewayError> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(GatewayError::UriTooLong);
    }
    let headers = req.headers();
    // HTTP/1 caps the count in hyper's parser; HTTP/2 has only a byte budget.
    if headers.len() > limits.max_headers {
        return Err(GatewayError::HeadersTooLarge);
    }
    if matches!(req.version(), Version::HTTP_10 | Version::HTTP_11) {
        let mut te = headers.get_all(TRANSFER_ENCODING).iter();
        if let Some(first) = te.next() {
            if raw_content_lengths > 0 || headers.contains_key(CONTENT_LENGTH) {
                return Err(GatewayError::BadRequest(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            if te.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(GatewayError::BadRequest("unsupported Transfer-Encoding"));
            }
        }
        let mut cl = headers.get_all(CONTENT_LENGTH).iter();
        if raw_content_lengths > 1 || (cl.next().is_some() && cl.next().is_some()) {
            return Err(GatewayError::BadRequest("more than one Content-Length"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        crate::config::compile::default_limits()
    }

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/x").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let l = limits();
        let h11 = Version::HTTP_11;
        for (hs, ok) in [
            (&[("content-length", "5")][..], true),
            (&[("transfer-encoding", "chunked")][..], true),
            (&[("transfer-encoding", "Chunked")][..], true),
            (
                &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
                false,
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ][..],
                false,
            ),
            (&[("transfer-encoding", "gzip, chunked")][..], false),
            (
                &[("content-length", "5"), ("content-length", "5")][..],
                false,
            ),
        ] {
            assert_eq!(check_request(&req(h11, hs), &l, 0).is_ok(), ok, "{hs:?}");
        }
    }

    #[test]
    fn long_targets_and_many_headers_are_refused() {
        let l = limits();
        let long = Request::builder()
            .uri(format!("/{}", "a".repeat(l.max_uri_bytes)))
            .body(())
            .expect("request");
        assert_eq!(check_request(&long, &l, 0), Err(GatewayError::UriTooLong));
        let names: Vec<String> = (0..=l.max_headers).map(|i| format!("x-h{i}")).collect();
        let hs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(
            check_request(&req(Version::HTTP_2, &hs), &l, 0),
            Err(GatewayError::HeadersTooLarge)
        );
    }
}
