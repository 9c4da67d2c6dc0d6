//! Request paths: the one canonical form of a path, computed once per request and used for
//! route choice, forward auth and the path the upstream receives; which paths are the gate's
//! own; prefix matching. A leaf module: `config` checks route prefixes with it and `http`
//! routes with it, so it belongs to neither.
//!
//! Upstreams disagree on what a path means: Go and WSGI decode `%70` to `p`, Express and
//! Spring drop `;` parameters, some collapse `//` or decode `%2F` to `/`. If the gate matched
//! the raw path, `/media/%70rivate` would take the public `/media` route here and be the admin
//! `/media/private` upstream. So the gate decodes what is safe to decode (unreserved
//! characters), refuses what different servers read differently, and sends the result.

use std::borrow::Cow;

/// The canonical form of an origin-form `path` (no query), or `None` when it is refused:
/// not absolute; an empty segment (`//`, except a trailing `/`); a `.`/`..` segment (also
/// encoded); a `;` parameter; a `\`; an encoded `/` or `\`; a NUL or control character (raw
/// or encoded); `%` not followed by two hex digits; encoded bytes that are not UTF-8 (overlong
/// forms included).
///
/// Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other encoded
/// bytes stay encoded with upper-case hex (`%c3%a9` → `%C3%A9`, `%25` stays `%25`, so nothing
/// is decoded twice); raw non-ASCII is encoded. Idempotent. Borrows (no allocation) when the
/// path is already canonical.
pub fn canonical_path(path: &str) -> Option<Cow<'_, str>> {
    if !path.starts_with('/') {
        return None;
    }
    let bytes = path.as_bytes();
    let plain = bytes.iter().all(|&b| b.is_ascii_graphic() && !matches!(b, b'%' | b';' | b'\\' | b'#'));
    if plain {
        return segments_ok(path).then_some(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(path.len());
    // Whether any encoded byte is non-ASCII: then the decoded bytes must be UTF-8.
    let mut high = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let v = bytes.get(i + 1..i + 3).and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?))?;
                if is_unreserved(v) {
                    out.push(v as char);
                } else if v == b'/' || v == b'\\' || v.is_ascii_control() {
                    return None;
                } else {
                    high |= v >= 0x80;
                    push_encoded(&mut out, v);
                }
                i += 3;
            }
            // A raw `#` never belongs in a request target: nginx passes it on as it is, and an
            // upstream that keeps it in the path (Go) would read `/x#/../private` as `/private`.
            b';' | b'\\' | b'#' => return None,
            _ if b.is_ascii_control() || b == b' ' => return None,
            _ if b >= 0x80 => {
                high = true;
                push_encoded(&mut out, b);
                i += 1;
            }
            _ => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    if !segments_ok(&out) || (high && !decodes_to_utf8(&out)) {
        return None;
    }
    Some(if out == path { Cow::Borrowed(path) } else { Cow::Owned(out) })
}

/// No empty segment but a trailing one, no `.` or `..` segment.
fn segments_ok(path: &str) -> bool {
    let mut segs = path[1..].split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        if (seg.is_empty() && !last) || seg == "." || seg == ".." {
            return false;
        }
    }
    true
}

/// Whether the bytes a canonical path stands for are UTF-8 (std refuses overlong forms).
fn decodes_to_utf8(canonical: &str) -> bool {
    let b = canonical.as_bytes();
    let mut raw = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Canonical: always two hex digits.
            raw.push(hex(b[i + 1]).unwrap_or(0) << 4 | hex(b[i + 2]).unwrap_or(0));
            i += 3;
        } else {
            raw.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&raw).is_ok()
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn push_encoded(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Paths the gate serves itself; no route may take them over.
pub const RESERVED_PREFIXES: &[&str] = &[
    "/api/auth",
    "/api/me",
    "/api/users",
    "/api/stream-keys",
    "/api/openapi.json",
    "/api/docs",
    "/api/audit",
    "/api/system",
    "/api/tls",
    "/api/vpn",
    "/api/secrets",
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin",
    "/.well-known",
];

/// Whether `path` belongs to the gate itself, in any case: `/ADMIN/` or `/Api/Auth/login` is
/// not the gate's (its router is case-sensitive), but a case-insensitive upstream behind a
/// catch-all route would read it as the gate's own path, so no route may take it either. `/`
/// is not reserved: a catch-all route may serve it (else the gate redirects it to `/admin/`).
pub fn is_reserved_path(path: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| is_under_ignore_case(path, p))
}

/// Whether `path` has a `.` or `..` segment, also when its dots, slashes or backslashes are
/// percent-encoded (`/media/..%2Fapi`, `/media/%2e%2e/api`). Such a path could match one
/// route here and mean another to an upstream that normalises it, so it is never proxied
/// ([`canonical_path`], which routing uses, refuses
/// these and more). No allocation unless the path has a `%`.
pub fn has_dot_segment(path: &str) -> bool {
    if !path.contains(['.', '%', '\\']) {
        return false;
    }
    // `..;x` counts too: servlet containers drop path parameters before normalising.
    let dotted = |p: &str| {
        p.split(['/', '\\']).any(|seg| {
            let seg = seg.split(';').next().unwrap_or(seg);
            seg == "." || seg == ".."
        })
    };
    if !path.contains('%') {
        return dotted(path);
    }
    let mut decoded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        decoded.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3).map(|h| h.to_ascii_lowercase());
        match code.as_deref() {
            Some("2e") => decoded.push('.'),
            Some("2f") => decoded.push('/'),
            Some("5c") => decoded.push('\\'),
            _ => {
                decoded.push('%');
                rest = &rest[i + 1..];
                continue;
            }
        }
        rest = &rest[i + 3..];
    }
    decoded.push_str(rest);
    dotted(&decoded)
}

/// Whether `path` is `prefix` or below it (segment-aligned, no allocation).
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// [`is_under`], ASCII letters compared without case.
pub fn is_under_ignore_case(path: &str, prefix: &str) -> bool {
    let ascii = |path: &str| {
        path.len() >= prefix.len()
            && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
            && path.as_bytes().get(prefix.len()).is_none_or(|&b| b == b'/')
    };
    ascii(path) || unicode_folded(path).is_some_and(|f| ascii(&f))
}

/// `path` with its %-encoded non-ASCII letters folded the way case-insensitive upstreams
/// with Unicode rules fold them (Java's `equalsIgnoreCase`, Python's `upper()`): `ı` and `ſ`
/// upper-case to `I` and `S`, the Kelvin sign and `İ` lower-case to `k` and `i`. `None` when
/// the path has no non-ASCII escape (the ASCII comparison says it all).
fn unicode_folded(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let has_non_ascii = b.windows(3).any(|w| w[0] == b'%' && matches!(w[1], b'8'..=b'9' | b'A'..=b'F' | b'a'..=b'f'));
    if !has_non_ascii {
        return None;
    }
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())) {
            (b'%', Some(h)) if u8::from_str_radix(h, 16).is_ok() => {
                bytes.push(u8::from_str_radix(h, 16).unwrap_or(b'%'));
                i += 3;
            }
            (c, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
            continue;
        }
        let upper: String = c.to_uppercase().collect();
        let lower: String = c.to_lowercase().collect();
        match (upper.is_ascii(), lower.chars().next()) {
            (true, _) => out.push_str(&upper),
            (false, Some(l)) if l.is_ascii() => out.push(l),
            _ => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::canonical_path;
    use proptest::prelude::*;
    use std::borrow::Cow;

    #[test]
    fn unicode_letters_that_fold_to_ascii_fold_for_prefix_checks() {
        use super::{is_reserved_path, is_under_ignore_case};
        for p in ["/api/%C5%BFecrets", "/api/u%C5%BFers", "/api/stream-%E2%84%AAeys", "/ap%C4%B0/me", "/adm%C4%B1n/"] {
            assert!(is_reserved_path(p), "{p}");
        }
        assert!(is_under_ignore_case("/media/pr%C4%B1vate/x", "/media/private"));
        assert!(is_under_ignore_case("/media/pr%C4%B1vate", "/media/private"));
        assert!(!is_under_ignore_case("/media/pr%C3%A9vate/x", "/media/private"));
        assert!(!is_under_ignore_case("/media/%C4%B1x", "/media/i"), "a folded letter still has to line up");
        assert!(!is_reserved_path("/caf%C3%A9"));
    }

    #[test]
    fn canonical_paths_borrow() {
        for p in ["/", "/media", "/media/", "/media/private/x", "/a+b/c.d~e_f-g", "/a:b@c!$&'()*+,="] {
            assert!(matches!(canonical_path(p), Some(Cow::Borrowed(_))), "{p}");
        }
        assert!(matches!(canonical_path("/a%20b"), Some(Cow::Borrowed(_))), "already canonical encoding");
    }

    #[test]
    fn decodes_unreserved_and_keeps_the_rest_encoded() {
        let cases = [
            ("/media/%70rivate/x", "/media/private/x"),
            ("/media/privat%65", "/media/private"),
            ("/media/%50RIVATE", "/media/PRIVATE"),
            ("/%7e%2D%2e%5F", "/~-._"),
            ("/a%20b", "/a%20b"),
            ("/a%2fb", ""),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/caf%C3%A9"),
            ("/media/%2570rivate", "/media/%2570rivate"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%2Bb", "/a%2Bb"),
            ("/a+b", "/a+b"),
        ];
        for (raw, want) in cases {
            let got = canonical_path(raw);
            if want.is_empty() {
                assert!(got.is_none(), "{raw} is refused, got {got:?}");
            } else {
                assert_eq!(got.as_deref(), Some(want), "{raw}");
            }
        }
    }

    #[test]
    fn refuses_what_upstreams_read_differently() {
        for p in [
            "",
            "media",
            "//media",
            "/media//private",
            "/media/private;/x",
            "/media/private;a=b",
            "/media/..",
            "/media/.",
            "/media/./x",
            "/media/%2e%2e/x",
            "/media/%2E",
            "/media\\private",
            "/media%5cprivate",
            "/media%2Fprivate",
            "/a%00",
            "/a%0a",
            "/a%7f",
            "/a%1F",
            "/a\u{7f}",
            "/a\tb",
            "/a b",
            "/a%",
            "/a%2",
            "/a%zz",
            "/a%g0",
            "/%c0%af",
            "/%e0%80%af",
            "/%ff",
            "/%c3",
            "/%80",
            "/media/x#/../private",
            "/media#",
        ] {
            assert!(canonical_path(p).is_none(), "{p:?} must be refused, got {:?}", canonical_path(p));
        }
    }

    #[test]
    fn reserved_paths_in_any_case_but_not_the_root() {
        use super::is_reserved_path;
        for p in
            ["/admin", "/admin/", "/ADMIN/x", "/Api/Auth/login", "/.well-known/jwks.json", "/METRICS", "/api/docs/x"]
        {
            assert!(is_reserved_path(p), "{p}");
        }
        for p in ["/", "/administrator", "/api", "/api/lists", "/metricsx", "/assets/admin", "/well-known"] {
            assert!(!is_reserved_path(p), "{p}");
        }
    }

    proptest! {
        #[test]
        fn canonical_is_idempotent(p in "/[a-zA-Z0-9%/.;\\\\~_+ -]{0,24}", hexes in "(%[0-9a-fA-F]{2}){0,4}") {
            let p = format!("{p}{hexes}");
            if let Some(c) = canonical_path(&p) {
                let again = canonical_path(&c);
                prop_assert_eq!(again.as_deref(), Some(&*c));
                prop_assert!(matches!(again, Some(Cow::Borrowed(_))), "a canonical path borrows");
            }
        }

        #[test]
        fn canonical_is_idempotent_on_any_text(p in "/\\PC{0,16}") {
            if let Some(c) = canonical_path(&p) {
                let again = canonical_path(&c);
                prop_assert_eq!(again.as_deref(), Some(&*c));
            }
        }
    }
}
