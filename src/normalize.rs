//! Request-target normalisation, before any route is matched (SPEC "Request normalisation").
//!
//! The path that routes match, that is signed and that is forwarded is one and the same: the one
//! [`normalize_path`] returns. It guarantees, for every path it accepts:
//! - percent-encodings of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!   one is upper-cased (`%2f` never survives: it is refused, or kept as sent under `keep`);
//! - no dot-segment (`.`, `..`, in any encoding) is left, and none climbed above the root;
//! - no empty segment when `merge_slashes` is on (`//` becomes `/`);
//! - every byte is visible ASCII (anything else is percent-encoded).
//!
//! What it refuses (400 `invalid_path`): an encoded `/`, `\` (under `escaped_slashes: reject`)
//! or NUL, a raw backslash, a malformed `%` escape, a dot-segment above the root, and a
//! dot-segment with `;` parameters (`..;/`, which servlet containers read as `..`).
//! The query string is never touched.
//!
//! [`match_path`] is the view routes match against: the normalised path with the `;` parameters
//! of each segment left out, as servlet containers and most frameworks read it, so that
//! `/api;x=1/orders` cannot slip past a `/api/` requirement.

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` (`limits.escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400 `invalid_path` (the default).
    #[default]
    Reject,
    /// Forward them as sent; never decode them (they are not segment separators).
    Keep,
}

/// How paths are normalised (`limits.merge_slashes`, `limits.escaped_slashes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a request target was refused; all of them are 400 `invalid_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target is not in origin-form")]
    NotOriginForm,
    #[error("malformed percent-encoding")]
    BadEscape,
    #[error("encoded slash or backslash")]
    EscapedSlash,
    #[error("encoded NUL")]
    Nul,
    #[error("backslash in path")]
    Backslash,
    #[error("dot-segment above the root")]
    AboveRoot,
    #[error("dot-segment with parameters")]
    DotParameter,
}

/// Normalises an origin-form path (without its query). `Ok(None)` when it is already normal,
/// which is the common case and allocates nothing.
pub fn normalize_path(path: &str, policy: PathPolicy) -> Result<Option<String>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(path.as_bytes(), policy) {
        return Ok(None);
    }
    let decoded = decode(path.as_bytes(), policy)?;
    let out = remove_dot_segments(&decoded, policy)?;
    Ok((out != path).then_some(out))
}

/// True when nothing in `p` can change under normalisation: no `%`, no backslash, no byte
/// outside visible ASCII, no `//` (when merging) and no segment that starts with a dot.
fn is_normal(p: &[u8], policy: PathPolicy) -> bool {
    let mut prev = 0u8;
    for &b in p {
        match b {
            b'%' | b'\\' => return false,
            b'/' if prev == b'/' && policy.merge_slashes => return false,
            b'.' if prev == b'/' => return false,
            0x21..=0x7e => {}
            _ => return false,
        }
        prev = b;
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX_UPPER[usize::from(b >> 4)] as char);
    out.push(HEX_UPPER[usize::from(b & 15)] as char);
}

/// One pass of percent-decoding (unreserved characters only), validating as it goes.
fn decode(p: &[u8], policy: PathPolicy) -> Result<String, PathError> {
    let mut out = String::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    p.get(i + 1).copied().and_then(hex),
                    p.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    0 => return Err(PathError::Nul),
                    b'/' | b'\\' => match policy.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Keep => out.extend(p[i..i + 3].iter().map(|&c| c as char)),
                    },
                    v if is_unreserved(v) => out.push(v as char),
                    v => push_escaped(&mut out, v),
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            // A raw NUL would be forwarded as `%00`, which is refused: refuse it here too.
            0 => return Err(PathError::Nul),
            0x21..=0x7e => {
                out.push(b as char);
                i += 1;
            }
            _ => {
                push_escaped(&mut out, b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 over segments, refusing to climb above the root, plus slash merging.
fn remove_dot_segments(p: &str, policy: PathPolicy) -> Result<String, PathError> {
    let segments: Vec<&str> = p[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut stack: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let name = seg.split_once(';').map_or(*seg, |(n, _)| n);
        match name {
            "." | ".." if name.len() != seg.len() => return Err(PathError::DotParameter),
            "." => {
                if i == last {
                    stack.push("");
                }
            }
            ".." => {
                if stack.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                if i == last {
                    stack.push("");
                }
            }
            "" if policy.merge_slashes && i != last => {}
            _ => stack.push(seg),
        }
    }
    let mut out = String::with_capacity(p.len());
    for seg in &stack {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The path as routes see it: each segment's `;` parameters left out (`/a;x/b` → `/a/b`).
pub fn match_path(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(seg.split_once(';').map_or(seg, |(n, _)| n));
    }
    Cow::Owned(out)
}

/// Whether a route's `path_prefix` matches `path` (a [`match_path`]): on segment boundaries, so
/// `/api` matches `/api` and `/api/x` but never `/apiary`; a prefix ending in `/` matches
/// every path under it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Whether a requirement on `prefix` covers `path`: as [`prefix_matches`], and a prefix
/// `/api/` also covers `/api` itself (most frameworks serve or redirect it as `/api/`).
pub fn requirement_covers(prefix: &str, path: &str) -> bool {
    prefix_matches(prefix, path)
        || (prefix.len() > 1 && prefix.ends_with('/') && path == &prefix[..prefix.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p, PathPolicy::default()).map(|o| o.unwrap_or_else(|| p.to_owned()))
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/orders",
            "/a-b_c~d/e.f",
            "/x/",
            "/a;b=c/d",
            "/a..b/",
        ] {
            assert_eq!(normalize_path(p, PathPolicy::default()), Ok(None), "{p}");
        }
    }

    #[test]
    fn decodes_unreserved_and_uppercases_the_rest() {
        assert_eq!(norm("/%61pi/%7eorders"), Ok("/api/~orders".into()));
        assert_eq!(norm("/%41%2d%5F"), Ok("/A-_".into()));
        assert_eq!(norm("/a%3fb%20c"), Ok("/a%3Fb%20c".into()));
        assert_eq!(norm("/caf%c3%a9"), Ok("/caf%C3%A9".into()));
        // One pass only: a double encoding stays encoded.
        assert_eq!(norm("/%252e%252e/api"), Ok("/%252e%252e/api".into()));
    }

    #[test]
    fn removes_dot_segments_in_every_spelling() {
        for (input, want) in [
            ("/./api/orders", "/api/orders"),
            ("/x/../api/orders", "/api/orders"),
            ("/%2e/api/orders", "/api/orders"),
            ("/a/%2E%2E/", "/"),
            ("/a/%2e%2E/api", "/api"),
            ("/a/.%2e/api", "/api"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/c", "/a/..b/c"),
        ] {
            assert_eq!(norm(input), Ok(want.to_owned()), "{input}");
        }
    }

    #[test]
    fn merges_slashes_unless_told_not_to() {
        assert_eq!(norm("//api/orders"), Ok("/api/orders".into()));
        assert_eq!(norm("/api///orders//"), Ok("/api/orders/".into()));
        assert_eq!(norm("//"), Ok("/".into()));
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(normalize_path("//api", keep), Ok(None));
        assert_eq!(
            normalize_path("/a//./b", keep),
            Ok(Some("/a//b".to_owned()))
        );
    }

    #[test]
    fn refuses_what_an_upstream_could_read_as_another_path() {
        for (input, err) in [
            ("/api%2forders", PathError::EscapedSlash),
            ("/api%2Forders", PathError::EscapedSlash),
            ("/x/..%2fapi", PathError::EscapedSlash),
            ("/api%5corders", PathError::EscapedSlash),
            ("/api\\orders", PathError::Backslash),
            ("/api%00", PathError::Nul),
            ("/api%", PathError::BadEscape),
            ("/api%4", PathError::BadEscape),
            ("/api%zz", PathError::BadEscape),
            ("/api%%30", PathError::BadEscape),
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/%2e%2e/api", PathError::AboveRoot),
            ("/public/..;/api", PathError::DotParameter),
            ("/public/.;x/api", PathError::DotParameter),
            ("api", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
        ] {
            assert_eq!(norm(input), Err(err), "{input}");
        }
    }

    #[test]
    fn keep_forwards_escaped_slashes_as_sent() {
        let keep = PathPolicy {
            escaped_slashes: EscapedSlashes::Keep,
            ..PathPolicy::default()
        };
        assert_eq!(
            normalize_path("/a%2fb/%61", keep),
            Ok(Some("/a%2fb/a".to_owned()))
        );
        // Kept escapes are not separators: `..%2f` is not a dot-segment.
        assert_eq!(normalize_path("/a/..%2f", keep), Ok(None));
        assert_eq!(normalize_path("/a%00", keep), Err(PathError::Nul));
    }

    #[test]
    fn bytes_outside_visible_ascii_are_encoded() {
        assert_eq!(norm("/caf\u{e9}"), Ok("/caf%C3%A9".into()));
        assert_eq!(norm("/a\u{7f}"), Ok("/a%7F".into()));
        // Found by the fuzzer: a raw NUL is refused like an encoded one (normalising twice must
        // give the same answer as once).
        assert_eq!(norm("/x/.\u{1}\0.;/z"), Err(PathError::Nul));
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in [
            "/%61/./b//c/../%7e",
            "/a%3f/%C3%a9/",
            "/x/y/..",
            "//a;b/./c",
        ] {
            let once = norm(p).expect("valid");
            assert_eq!(norm(&once), Ok(once.clone()), "{p}");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apiary"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/", "/anything"));
        assert!(requirement_covers("/api/", "/api"));
        assert!(!requirement_covers("/api/", "/apiary"));
        assert!(!requirement_covers("/", ""));
    }

    #[test]
    fn routes_see_segments_without_parameters() {
        assert_eq!(match_path("/api;jsessionid=1/orders"), "/api/orders");
        assert_eq!(match_path("/api/orders;v=2"), "/api/orders");
        assert!(matches!(match_path("/api/orders"), Cow::Borrowed(_)));
    }
}
