//! Path normalisation: `normalize::normalize_path` on arbitrary paths, under both policies.
//! Input: one byte of policy flags, then the path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tenant_gateway::normalize::{
    EscapedSlashes, PathPolicy, match_path, normalize_path, prefix_matches,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let policy = PathPolicy {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: if flags & 2 == 0 {
            EscapedSlashes::Reject
        } else {
            EscapedSlashes::Keep
        },
    };
    let Ok(out) = normalize_path(path, policy) else {
        return;
    };
    let out = out.unwrap_or_else(|| path.to_owned());
    // Normalising twice changes nothing.
    assert_eq!(normalize_path(&out, policy), Ok(None), "{path:?} -> {out:?}");
    // What is left: an absolute path of visible ASCII, with no dot-segment, no backslash and
    // no encoded NUL; no empty segment when merging; no encoded slash unless kept.
    assert!(out.starts_with('/'), "{path:?} -> {out:?}");
    assert!(out.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{out:?}");
    assert!(!out.contains('\\') && !out.contains("%00"), "{out:?}");
    for seg in out.split('/').skip(1) {
        let name = seg.split(';').next().unwrap_or(seg);
        assert!(name != "." && name != "..", "{path:?} -> {out:?}");
    }
    if policy.merge_slashes {
        assert!(!out.contains("//"), "{path:?} -> {out:?}");
    }
    if policy.escaped_slashes == EscapedSlashes::Reject {
        let upper = out.to_ascii_uppercase();
        assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{out:?}");
    }
    // Every %-escape is upper-case and never of an unreserved character.
    let b = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let hex = &b[i + 1..i + 3];
        let v = u8::from_str_radix(std::str::from_utf8(hex).expect("ascii"), 16).expect("hex");
        let kept = policy.escaped_slashes == EscapedSlashes::Keep && (v == b'/' || v == b'\\');
        assert!(kept || hex.iter().all(|c| !c.is_ascii_lowercase()), "{out:?}");
        assert!(
            kept || !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
            "{out:?}"
        );
    }
    // A prefix never matches inside a segment.
    let m = match_path(&out);
    if prefix_matches("/api", &m) {
        assert!(m == "/api" || m.starts_with("/api/"), "{m:?}");
    }
});
