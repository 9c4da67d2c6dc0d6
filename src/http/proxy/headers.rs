//! Header hygiene on the proxy path: what a client may not send upstream (hop-by-hop headers,
//! identity and forwarding headers only the gate may state, the gate's credentials) and what an
//! upstream's answer may not pass on (its own CORS headers, `Set-Cookie` for the gate's cookies).

use poem::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The gate's session header, a credential like the cookies it names.
pub(super) const SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");

/// Removes, in place, the hop-by-hop headers (and those named in `Connection`) and any
/// identity headers (`X-Miauflix-*`, `Remote-*`) that did not come from the gate. One pass
/// over the names; nothing is allocated when there is nothing to remove.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut out: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            HOP_BY_HOP.contains(&n) || is_identity_header(n)
        })
        .cloned()
        .collect();
    if out.is_empty() {
        return;
    }
    for value in headers.get_all(header::CONNECTION) {
        let named = value.to_str().unwrap_or("").split(',');
        out.extend(named.filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()));
    }
    for name in out {
        headers.remove(name);
    }
}

/// What an upstream's answer may not pass on: hop-by-hop headers, its own CORS headers and
/// `Set-Cookie` for the gate's cookies.
pub(super) fn strip_upstream_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    strip_cors(headers);
    strip_gate_set_cookies(headers);
}

/// Removes an upstream's own CORS headers: the gate answers CORS for every route from its
/// allow-list (in `EdgePolicy::finish`), so an upstream's `*` or reflected origin cannot open
/// a route to other sites.
fn strip_cors(headers: &mut HeaderMap) {
    let cors: Vec<HeaderName> = headers.keys().filter(|n| n.as_str().starts_with("access-control-")).cloned().collect();
    for name in cors {
        headers.remove(name);
    }
}

/// Whether a client could pass `n` off as a header that only the gate may state: identity
/// (`X-Miauflix-*`, `Remote-*` and the names other auth proxies use), the client's address or
/// the request's original host, scheme, port or URL (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
/// …; the gate sets `X-Forwarded-Host/Proto/For` itself), also spelt with `_` for `-`, which
/// CGI/WSGI-style servers map to the same variable. No allocation: `_` and `-` compare equal.
fn is_identity_header(n: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "x-miauflix-",
        "remote-",
        "x-forwarded-",
        "x-auth-request-",
        "x-webauth-",
        "x-authentik-",
        "oidc-claim-",
        "x-ms-client-principal",
    ];
    const NAMES: &[&str] = &[
        "forwarded",
        "x-real-ip",
        "x-remote-user",
        "x-remote-group",
        "x-remote-groups",
        "x-remote-email",
        "x-auth-user",
        "x-proxy-user",
        "x-authenticated-user",
        "x-authenticated-userid",
        "x-oidc-user",
        "x-token-subject",
        "x-ms-client-principal",
        "x-user",
        "x-email",
        "x-original-url",
        "x-rewrite-url",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
    ];
    let n = n.as_bytes();
    let same = |a: &[u8], b: &[u8]| a.iter().zip(b).all(|(x, y)| x == y || (*x == b'_' && *y == b'-'));
    PREFIXES.iter().any(|p| n.len() > p.len() && same(&n[..p.len()], p.as_bytes()))
        || NAMES.iter().any(|m| n.len() == m.len() && same(n, m.as_bytes()))
}

/// Whether HTTP/1.1 framing headers announce a request body.
pub(super) fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0")
}

/// Removes the gate's own cookies, keeping the upstream's.
pub(super) fn strip_gate_cookies(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';').map(|c| c.trim().to_string()))
        .filter(|c| !c.is_empty() && !c.starts_with("__miauflix_"))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Removes an upstream's `Set-Cookie` for a cookie the gate owns (any `__miauflix_` name,
/// also behind `__Host-`/`__Secure-`, in any case): an upstream must not plant or replace a
/// session. Others are kept; nothing is allocated unless one is dropped.
fn strip_gate_set_cookies(headers: &mut HeaderMap) {
    if !headers.get_all(header::SET_COOKIE).iter().any(is_gate_set_cookie) {
        return;
    }
    let kept: Vec<HeaderValue> =
        headers.get_all(header::SET_COOKIE).iter().filter(|v| !is_gate_set_cookie(v)).cloned().collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Whether a `Set-Cookie` value names a gate cookie. The name is what precedes `=` in the
/// first `;` part, trimmed; with no `=` browsers keep it as a nameless cookie sent back as
/// that text, so it counts too.
fn is_gate_set_cookie(v: &HeaderValue) -> bool {
    let pair = v.as_bytes().split(|b| *b == b';').next().unwrap_or(b"").trim_ascii();
    // An empty name (`=__miauflix_at_x=1`): browsers keep the value as a nameless cookie and
    // send it back as `__miauflix_at_x=1`, so the value is read as the name.
    let pair = pair.strip_prefix(b"=").unwrap_or(pair);
    let name = pair.split(|b| *b == b'=').next().unwrap_or(b"").trim_ascii();
    fn strip<'a>(n: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
        (n.len() >= p.len() && n[..p.len()].eq_ignore_ascii_case(p)).then(|| &n[p.len()..])
    }
    let name = strip(name, b"__host-").or_else(|| strip(name, b"__secure-")).unwrap_or(name);
    strip(name, b"__miauflix_").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }
    #[test]
    fn identity_headers_in_both_spellings() {
        for n in [
            "x-miauflix-user",
            "x_miauflix_role",
            "remote-user",
            "remote_groups",
            "x-forwarded-host",
            "x_forwarded_for",
            "x-forwarded-preferred-username",
            "x-forwarded-prefix",
            "x-auth-request-email",
            "x_auth_request_user",
            "x-webauth-user",
            "x-remote-user",
            "x-user",
            "x_email",
            "x-original-url",
            "x-rewrite-url",
            "x-client-ip",
            "true_client_ip",
            "cf-connecting-ip",
            "forwarded",
            "x-real-ip",
            "x-remote-groups",
            "x_authentik_username",
            "oidc-claim-sub",
            "x-ms-client-principal",
            "x-ms-client-principal-name",
            "x-auth-user",
            "x-proxy-user",
            "x-authenticated-user",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["x-users", "x-user-agent", "user-agent", "x-forwarded", "x-miauflix", "x-request-id", "accept", "x-e"]
        {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn gate_cookie_names_in_set_cookie() {
        for v in [
            "__miauflix_at_s=x; Path=/",
            "__MIAUFLIX_RT_s=x",
            "__Host-__miauflix_at_s=x",
            "__secure-__Miauflix_x=1",
            " __miauflix_at_s =x",
            "__miauflix_at_s",
            "=__miauflix_at_s=x",
            " = __miauflix_rt_s=x; Path=/api/auth/",
        ] {
            assert!(is_gate_set_cookie(&HeaderValue::from_static(v)), "{v}");
        }
        for v in ["a=__miauflix_at_s", "__Host-a=1", "x__miauflix_at=1", "a=1; __miauflix_at_s=2"] {
            assert!(!is_gate_set_cookie(&HeaderValue::from_static(v)), "{v}");
        }
        let mut h = map(&[("set-cookie", "a=1"), ("set-cookie", "__miauflix_at_s=x"), ("set-cookie", "b=2")]);
        strip_gate_set_cookies(&mut h);
        assert_eq!(h.get_all(header::SET_COOKIE).iter().collect::<Vec<_>>(), ["a=1", "b=2"]);
    }
}
