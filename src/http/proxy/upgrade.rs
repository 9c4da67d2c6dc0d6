//! WebSocket upgrades on the proxy path: which client requests are a well-formed handshake
//! (RFC 6455 §4.1), whether an upstream's 101 answers it, and the gate's refusal otherwise.

use poem::http::StatusCode;
use poem::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::ProxyRoute;
use crate::http::problem::ApiError;

/// Whether an HTTP/1.1 request asks to upgrade to WebSocket with a well-formed handshake
/// (`Connection: upgrade`, `Upgrade: websocket`, a valid `Sec-WebSocket-Key`, version 13),
/// so the listener should hold on to its connection. The method and version are checked by
/// the proxy.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    websocket_key(headers).map(|_| HeaderValue::from_static("websocket"))
}

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade request (RFC 6455 §4.2.1).
pub(super) fn websocket_key(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if !asks
        || !only(headers, &header::UPGRADE)
            .is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
        || only(headers, &header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes().trim_ascii() != b"13")
    {
        return None;
    }
    let key = only(headers, &header::SEC_WEBSOCKET_KEY)?;
    let mut nonce = [0u8; 18];
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode_slice(key.as_bytes().trim_ascii(), &mut nonce);
    (decoded == Ok(16)).then(|| key.clone())
}

/// The one value of `name`, or `None` when it is absent or repeated.
fn only<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// Whether an upstream's 101 is the WebSocket answer to `key`: `Upgrade: websocket` and
/// `Sec-WebSocket-Accept` = base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
pub(super) fn websocket_accepted(headers: &HeaderMap, key: &HeaderValue) -> bool {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    if !only(headers, &header::UPGRADE).is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")) {
        return false;
    }
    let digest = crate::crypto::sign::sha1_legacy(&[key.as_bytes().trim_ascii(), GUID]);
    let mut want = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut want).unwrap_or(0);
    only(headers, &header::SEC_WEBSOCKET_ACCEPT).is_some_and(|a| a.as_bytes().trim_ascii() == &want[..n])
}

/// The gate's answer to an upgrade it will not tunnel.
pub(super) fn bad_upgrade(route: &ProxyRoute) -> ApiError {
    tracing::warn!(route = %route.cfg.prefix, "upstream switched protocols without a valid WebSocket handshake");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream-bad-upgrade",
        "Bad gateway",
        "The service behind the gate answered an upgrade the gate does not allow.",
    )
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
    fn a_websocket_handshake_must_be_well_formed() {
        let good: &[(&str, &str)] = &[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert!(websocket_key(&map(good)).is_some());
        let without = |name: &str| map(&good.iter().copied().filter(|(k, _)| *k != name).collect::<Vec<_>>());
        for name in ["connection", "upgrade", "sec-websocket-version", "sec-websocket-key"] {
            assert!(websocket_key(&without(name)).is_none(), "without {name}");
        }
        let with = |name: &'static str, v: &'static str| {
            let mut h = without(name);
            h.insert(HeaderName::from_static(name), HeaderValue::from_static(v));
            h
        };
        for (name, v) in [
            ("upgrade", "h2c"),
            ("upgrade", "websocket, h2c"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "c2hvcnQ="),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZXg="),
            ("connection", "keep-alive"),
        ] {
            assert!(websocket_key(&with(name, v)).is_none(), "{name}: {v}");
        }
        let mut twice = map(good);
        twice.append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(websocket_key(&twice).is_none());
    }

    #[test]
    fn the_upstreams_101_must_answer_the_key() {
        // RFC 6455 §1.3's example.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let ok = [("upgrade", "websocket"), ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")];
        assert!(websocket_accepted(&map(&ok), &key));
        assert!(!websocket_accepted(&map(&[("upgrade", "h2c"), ok[1]]), &key));
        assert!(!websocket_accepted(&map(&ok[..1]), &key));
        assert!(!websocket_accepted(&map(&[ok[0], ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")]), &key));
    }
}
