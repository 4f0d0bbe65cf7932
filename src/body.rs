//! The one body type the proxy hands to hyper, for both directions: streamed bodies from the
//! client or the upstream, and small full bodies the gateway writes itself (errors).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Errors from a streamed body (client or upstream side).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, streamed body.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A complete body the gateway wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Wraps any streamed body (hyper's `Incoming`, a limited body) into a `ProxyBody`.
pub fn stream<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}
