//! Host / `:authority` parsing: `tenant::strip_port` on arbitrary text, and `request_host` on a
//! request built from arbitrary Host header bytes and request-target (inputs `http` refuses
//! to build are skipped). Input: `<host header>\n<request target>[\n<second host header>]`.
#![no_main]

use http::{HeaderValue, Request, Uri};
use libfuzzer_sys::fuzz_target;
use tenant_gateway::tenant::{request_host, strip_port};

/// What `strip_port` promises: `None`, or a non-empty prefix of its input made of host bytes.
fn check_stripped(input: &str, out: Option<&str>) {
    if let Some(host) = out {
        assert!(
            !host.is_empty() && input.starts_with(host),
            "{input:?} -> {host:?}"
        );
        assert!(
            host.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b)),
            "{input:?} -> {host:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_stripped(text, strip_port(text));
    }

    let mut parts = data.splitn(3, |&b| b == b'\n');
    let host = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or(b"/");
    let second_host = parts.next();

    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    for h in [Some(host), second_host].into_iter().flatten() {
        let Ok(v) = HeaderValue::from_bytes(h) else {
            return;
        };
        req.headers_mut().append(http::header::HOST, v);
    }

    let result = request_host(&req);
    if second_host.is_some() {
        assert!(result.is_err(), "two Host headers must be refused");
    }
    if let Ok(Some(h)) = result {
        // The host comes from the URI's authority when there is one, else from the header.
        let raw = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => req.headers()[http::header::HOST].to_str().expect("checked"),
        };
        check_stripped(raw, Some(h));
        assert_eq!(strip_port(raw), Some(h));
    }
});
