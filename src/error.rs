//! `GatewayError`: every way a request can be refused, and the one place that turns it into
//! SPEC's status code and JSON body. Bodies carry a stable code and a fixed message; they never
//! carry internals (upstream addresses, parser errors, tenant names the client did not send).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::body::{self, ProxyBody};

/// What went wrong with an upstream exchange, for logs and metrics (never sent to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connection refused, DNS failure, connect timeout.
    Connect,
    /// The connection failed after it was made (reset, protocol error).
    Exchange,
    /// No endpoint in the pool can take the request.
    NoEndpoint,
}

impl UpstreamFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Exchange => "exchange",
            Self::NoEndpoint => "no_endpoint",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no tenant identified")]
    UnknownTenant,
    #[error("SNI and Host name different tenants")]
    Misdirected,
    #[error("token tenant differs from the connection's tenant")]
    TenantMismatch,
    #[error("token present but invalid")]
    InvalidToken,
    #[error("route requires a token")]
    TokenRequired,
    #[error("API key present but unknown")]
    InvalidApiKey,
    #[error("tenant suspended")]
    TenantSuspended,
    #[error("over rate limit")]
    RateLimited { retry_after: Duration },
    #[error("request quota of the period used up")]
    QuotaExceeded { retry_after: Duration },
    #[error("the shared rate-limit store is unavailable")]
    RateLimitUnavailable,
    #[error("tenant at its concurrency cap")]
    TenantOverloaded { retry_after: Duration },
    #[error("request body larger than the tenant's limit")]
    BodyTooLarge,
    #[error("request headers too large")]
    HeadersTooLarge,
    #[error("request target too long")]
    UriTooLong,
    #[error("request body not received in time")]
    RequestTimeout,
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("invalid request target: {0}")]
    InvalidPath(crate::normalize::PathError),
    #[error("no route matches")]
    NoRoute,
    #[error("upstream unavailable ({})", .0.as_str())]
    UpstreamUnavailable(UpstreamFailure),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("the upstream pool is saturated")]
    UpstreamSaturated,
}

impl GatewayError {
    /// SPEC's status code for each error. Exhaustive on purpose: a new variant must choose.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnknownTenant => StatusCode::NOT_FOUND,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::TenantMismatch => StatusCode::FORBIDDEN,
            Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::TokenRequired => StatusCode::UNAUTHORIZED,
            Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::TenantSuspended => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TenantOverloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimitUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidPath(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::UpstreamUnavailable(UpstreamFailure::NoEndpoint) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamUnavailable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::UpstreamSaturated => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownTenant => "unknown_tenant",
            Self::Misdirected => "misdirected_request",
            Self::TenantMismatch => "tenant_mismatch",
            Self::InvalidToken => "invalid_token",
            Self::TokenRequired => "invalid_token",
            Self::InvalidApiKey => "invalid_api_key",
            Self::TenantSuspended => "tenant_suspended",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::TenantOverloaded { .. } => "tenant_overloaded",
            Self::RateLimitUnavailable => "rate_limit_unavailable",
            Self::BodyTooLarge => "body_too_large",
            Self::HeadersTooLarge => "headers_too_large",
            Self::UriTooLong => "uri_too_long",
            Self::RequestTimeout => "request_timeout",
            Self::BadRequest(_) => "bad_request",
            Self::InvalidPath(_) => "invalid_path",
            Self::NoRoute => "no_route",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamSaturated => "upstream_saturated",
        }
    }

    /// A fixed, client-safe sentence; never formatted from request or upstream data.
    fn message(&self) -> &'static str {
        match self {
            Self::UnknownTenant => "no tenant could be identified for this request",
            Self::Misdirected => {
                "the TLS server name and the Host header point to different tenants"
            }
            Self::TenantMismatch => "the token's tenant does not match the requested tenant",
            Self::InvalidToken => "the bearer token is not valid",
            Self::TokenRequired => "this route requires a bearer token",
            Self::InvalidApiKey => "the API key is not valid",
            Self::TenantSuspended => "the tenant is suspended",
            Self::RateLimited { .. } => "rate limit exceeded",
            Self::QuotaExceeded { .. } => "request quota for this period used up",
            Self::TenantOverloaded { .. } => "too many concurrent requests for this tenant",
            Self::RateLimitUnavailable => "rate limiting is unavailable; retry shortly",
            Self::BodyTooLarge => "request body exceeds the tenant's limit",
            Self::HeadersTooLarge => "request headers are too large",
            Self::UriTooLong => "the request target is too long",
            Self::RequestTimeout => "the request body was not received in time",
            Self::BadRequest(reason) => reason,
            Self::InvalidPath(_) => "the request target is not a valid origin-form path",
            Self::NoRoute => "no route matches this path",
            Self::UpstreamUnavailable(_) => "the upstream service is unavailable",
            Self::UpstreamTimeout => "the upstream service did not answer in time",
            Self::UpstreamSaturated => {
                "the upstream service is at capacity and the request waited too long; retry shortly"
            }
        }
    }

    /// Whether the client connection must close after this answer: the request's framing was
    /// refused or its body was left unread, so nothing after it on the connection can be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_) | Self::RequestTimeout | Self::HeadersTooLarge | Self::UriTooLong
        )
    }

    /// SPEC's JSON body `{"error":"<code>","message":"..."}` with the headers the status needs.
    pub fn into_response(self) -> Response<ProxyBody> {
        let body = format!(
            "{{\"error\":\"{}\",\"message\":\"{}\"}}",
            self.code(),
            self.message()
        );
        let mut resp = Response::new(body::full(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            Self::InvalidToken | Self::TokenRequired => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            Self::RateLimited { retry_after }
            | Self::QuotaExceeded { retry_after }
            | Self::TenantOverloaded { retry_after } => {
                headers.insert(RETRY_AFTER, retry_after_value(*retry_after));
            }
            Self::RateLimitUnavailable | Self::UpstreamSaturated => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

impl GatewayError {
    /// The gRPC status code for this error (gRPC clients read `grpc-status`, not the HTTP one).
    pub fn grpc_status(&self) -> u8 {
        if let Self::UpstreamSaturated = self {
            return 8; // RESOURCE_EXHAUSTED: the pool's capacity, not the service, is short
        }
        match self.status().as_u16() {
            400 | 414 | 431 => 3, // INVALID_ARGUMENT
            401 => 16,            // UNAUTHENTICATED
            403 => 7,             // PERMISSION_DENIED
            404 => 12,            // UNIMPLEMENTED (no tenant or route serves this method)
            413 | 429 => 8,       // RESOURCE_EXHAUSTED
            408 | 504 => 4,       // DEADLINE_EXCEEDED
            _ => 14,              // UNAVAILABLE (421, 502, 503)
        }
    }

    /// A gRPC "trailers-only" answer: HTTP 200, `content-type: application/grpc`,
    /// `grpc-status` and `grpc-message` (the SPEC error code), no body.
    pub fn into_grpc_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(body::full(Bytes::new()));
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        headers.insert("grpc-message", HeaderValue::from_static(self.code()));
        resp
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_value(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_specs_status_and_code() {
        let d = Duration::from_millis(1500);
        let cases = [
            (GatewayError::UnknownTenant, 404, "unknown_tenant"),
            (GatewayError::UpstreamSaturated, 503, "upstream_saturated"),
            (
                GatewayError::InvalidPath(crate::normalize::PathError::AboveRoot),
                400,
                "invalid_path",
            ),
            (GatewayError::Misdirected, 421, "misdirected_request"),
            (GatewayError::TenantMismatch, 403, "tenant_mismatch"),
            (GatewayError::InvalidToken, 401, "invalid_token"),
            (GatewayError::TokenRequired, 401, "invalid_token"),
            (GatewayError::InvalidApiKey, 401, "invalid_api_key"),
            (GatewayError::TenantSuspended, 403, "tenant_suspended"),
            (
                GatewayError::RateLimited { retry_after: d },
                429,
                "rate_limited",
            ),
            (
                GatewayError::QuotaExceeded { retry_after: d },
                429,
                "quota_exceeded",
            ),
            (
                GatewayError::TenantOverloaded { retry_after: d },
                503,
                "tenant_overloaded",
            ),
            (
                GatewayError::RateLimitUnavailable,
                503,
                "rate_limit_unavailable",
            ),
            (GatewayError::BodyTooLarge, 413, "body_too_large"),
            (GatewayError::HeadersTooLarge, 431, "headers_too_large"),
            (GatewayError::UriTooLong, 414, "uri_too_long"),
            (GatewayError::RequestTimeout, 408, "request_timeout"),
            (GatewayError::BadRequest("bad host"), 400, "bad_request"),
            (GatewayError::NoRoute, 404, "no_route"),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::Connect),
                502,
                "upstream_unavailable",
            ),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::Exchange),
                502,
                "upstream_unavailable",
            ),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::NoEndpoint),
                503,
                "upstream_unavailable",
            ),
            (GatewayError::UpstreamTimeout, 504, "upstream_timeout"),
        ];
        for (err, status, code) in cases {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code, "{err:?}");
            let resp = err.clone().into_response();
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        }
    }

    #[test]
    fn grpc_requests_get_grpc_statuses() {
        let d = Duration::from_secs(1);
        for (err, code) in [
            (GatewayError::RateLimited { retry_after: d }, "8"),
            (GatewayError::InvalidToken, "16"),
            (GatewayError::TenantMismatch, "7"),
            (GatewayError::UpstreamTimeout, "4"),
            (
                GatewayError::UpstreamUnavailable(UpstreamFailure::Connect),
                "14",
            ),
            (GatewayError::TenantOverloaded { retry_after: d }, "14"),
        ] {
            let r = err.into_grpc_response();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["grpc-status"], code);
            assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        }
    }

    #[test]
    fn auth_and_limit_errors_carry_their_headers() {
        let r = GatewayError::InvalidToken.into_response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let r = GatewayError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .into_response();
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        let r = GatewayError::TenantOverloaded {
            retry_after: Duration::ZERO,
        }
        .into_response();
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }
}
