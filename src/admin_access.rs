//! Who may reach what on the admin listeners (`admin.metrics_bind`, `admin.token_file`),
//! compiled into the snapshot; the listeners themselves are `admin`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::errors::ConfigErrors;
use crate::config::raw::RawAdmin;

/// Shortest admin token accepted.
pub const MIN_TOKEN_BYTES: usize = 16;

// === impl AdminAccess ===

/// Who may reach what on the admin listeners: `admin.metrics_bind` and `admin.token_file`,
/// compiled (the token file is read at compile time, like every file the config names).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminAccess {
    /// The scrape-only listener, when configured.
    pub metrics_bind: Option<SocketAddr>,
    /// Where the token came from (watched for changes).
    pub token_file: Option<PathBuf>,
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for AdminAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess")
            .field("metrics_bind", &self.metrics_bind)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AdminAccess {
    /// Compiles the `admin` section's access keys, adding any error to `errors`.
    pub fn compile(raw: Option<&RawAdmin>, errors: &mut ConfigErrors) -> Self {
        let Some(raw) = raw else {
            return Self::default();
        };
        let metrics_bind = raw
            .metrics_bind
            .as_ref()
            .and_then(|b| match b.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.push(
                        "admin.metrics_bind",
                        format!("invalid address {b:?} (expected IP:PORT)"),
                    );
                    None
                }
            });
        let token = raw
            .token_file
            .as_ref()
            .and_then(|f| match crate::files::read_file(f) {
                Ok(bytes) => {
                    let t = bytes.trim_ascii();
                    if t.len() < MIN_TOKEN_BYTES {
                        errors.push(
                            "admin.token_file",
                            format!(
                                "token in {} must be at least {MIN_TOKEN_BYTES} bytes",
                                f.display()
                            ),
                        );
                        None
                    } else {
                        Some(Arc::from(t))
                    }
                }
                Err(e) => {
                    errors.push(
                        "admin.token_file",
                        format!("cannot read {}: {e}", f.display()),
                    );
                    None
                }
            });
        Self {
            metrics_bind,
            token_file: raw.token_file.clone(),
            token,
        }
    }

    /// Whether control endpoints need a token.
    pub fn token_required(&self) -> bool {
        self.token.is_some()
    }

    /// True when no token is configured or the request carries it (Bearer, or Basic with the
    /// token as password). Constant time in the token's contents.
    pub fn authorized(&self, headers: &http::HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(value) = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes())
        else {
            return false;
        };
        let offered = if let Some(b) = strip_scheme(value, b"bearer ") {
            b.trim_ascii().to_vec()
        } else if let Some(b) = strip_scheme(value, b"basic ") {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(b.trim_ascii()) {
                Ok(pair) => match pair.iter().position(|&c| c == b':') {
                    Some(i) => pair[i + 1..].to_vec(),
                    None => return false,
                },
                Err(_) => return false,
            }
        } else {
            return false;
        };
        aws_lc_rs::constant_time::verify_slices_are_equal(&offered, token).is_ok()
    }
}

fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &value[scheme.len()..])
}
