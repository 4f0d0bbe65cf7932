//! Header work on the request path, one concern a file: hop-by-hop removal (`hop`), the
//! forwarding headers and request id (`forwarding`), and the trusted tenant headers (`tenant`).

pub mod forwarding;
pub mod hop;
pub mod tenant;

pub use tenant::TenantHeaderNames;
