//! Header work on the request path, one concern a file: hop-by-hop removal (`hop`), the
//! forwarding headers and request id (`forwarding`), and the trusted tenant headers (`tenant`), and the
//! framing and size checks against smuggling and oversized requests (`framing`).

pub mod forwarding;
pub mod framing;
pub mod hop;
pub mod tenant;

pub use tenant::TenantHeaderNames;
