//! What the gate adds to a proxied request for the upstream to trust: a route's
//! `upstream_headers` (a named secret, or a file read at start — Miauflix's
//! `X-Reverse-Proxy-Secret`) and the signed identity assertion (`auth::assertion`).
//!
//! A client's own copies of a configured header are removed on every route — in either
//! spelling, `-` or `_`, since some upstreams read them as one — before the value is set; a
//! route whose secret is not set refuses with 503 instead of forwarding without it. Values
//! are marked sensitive (never indexed by HPACK) and never logged.

use std::sync::Arc;

use poem::http::header::{HeaderMap, HeaderName, HeaderValue};
use poem::http::{Method, StatusCode};

use crate::auth::{AuthService, Principal};
use crate::config::RouteConfig;
use crate::http::problem::ApiError;
use crate::secrets::Secrets;

/// Where a configured upstream header's value comes from once the gate runs.
pub enum HeaderSource {
    /// A named secret, read from `Secrets` on each request (it may be set or changed live).
    Secret(String),
    /// A `value_file`'s content, read at start.
    Fixed(HeaderValue),
}

/// A route whose configuration cannot be put to work (a `value_file` unreadable or not a
/// header value). Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum RouteSetupError {
    #[error("routes[{route}].upstream_headers.{header}: cannot read {path}: {source}")]
    ValueFile {
        route: usize,
        header: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "routes[{route}].upstream_headers.{header}: {path} does not hold one line of visible ASCII (1 to 4096 bytes)"
    )]
    BadValue { route: usize, header: String, path: std::path::PathBuf },
}

/// Route `index`'s `upstream_headers`, resolved: files read now, secrets by name.
pub fn resolve(index: usize, route: &RouteConfig) -> Result<Vec<(HeaderName, HeaderSource)>, RouteSetupError> {
    let mut out = Vec::new();
    for (name, h) in &route.upstream_headers {
        let Ok(hname) = HeaderName::from_bytes(name.as_bytes()) else { continue };
        let source = match (&h.secret, &h.value_file) {
            (Some(secret), _) => HeaderSource::Secret(secret.clone()),
            (None, Some(path)) => {
                let bad = || RouteSetupError::BadValue { route: index, header: name.clone(), path: path.clone() };
                let text = zeroize::Zeroizing::new(std::fs::read(path).map_err(|source| {
                    RouteSetupError::ValueFile { route: index, header: name.clone(), path: path.clone(), source }
                })?);
                let mut v: &[u8] = &text;
                while let [rest @ .., b'\n' | b'\r'] = v {
                    v = rest;
                }
                if !crate::secrets::valid_value(v) {
                    return Err(bad());
                }
                let mut value = HeaderValue::from_bytes(v).map_err(|_| bad())?;
                value.set_sensitive(true);
                HeaderSource::Fixed(value)
            }
            (None, None) => continue,
        };
        out.push((hname, source));
    }
    Ok(out)
}

/// Every header name some route configures.
pub struct Configured(Vec<HeaderName>);

impl Configured {
    pub fn new<'a>(names: impl Iterator<Item = &'a HeaderName>) -> Configured {
        let mut v: Vec<HeaderName> = names.cloned().collect();
        v.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        v.dedup();
        Configured(v)
    }

    /// Removes every copy of a configured header, `-` and `_` read as one (both ways: a
    /// configured `X_Secret` goes in the `X-Secret` spelling too).
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.0.is_empty() {
            return;
        }
        let sep = |b: u8| b == b'-' || b == b'_';
        let same = |c: &HeaderName, n: &HeaderName| {
            c.as_str().len() == n.as_str().len()
                && c.as_str().bytes().zip(n.as_str().bytes()).all(|(a, b)| a == b || (sep(a) && sep(b)))
        };
        let configured = |n: &HeaderName| self.0.iter().any(|c| same(c, n));
        if !headers.keys().any(configured) {
            return;
        }
        let spoofed: Vec<HeaderName> = headers.keys().filter(|n| configured(n)).cloned().collect();
        for n in spoofed {
            headers.remove(&n);
        }
    }
}

/// Sets the route's configured headers; 503 when one names a secret that is not set.
pub fn apply(
    extra: &[(HeaderName, HeaderSource)],
    secrets: &Secrets,
    route: &str,
    headers: &mut HeaderMap,
) -> Result<(), ApiError> {
    for (name, source) in extra {
        let value = match source {
            HeaderSource::Fixed(v) => v.clone(),
            HeaderSource::Secret(secret) => {
                let v = secrets.value(secret).and_then(|v| HeaderValue::from_bytes(&v).ok());
                let Some(mut v) = v else {
                    tracing::warn!(route = %route, secret = %secret, "a route's upstream header names a secret that is not set; refusing the request");
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "route-not-ready",
                        "Service unavailable",
                        "This route is not fully configured yet.",
                    ));
                };
                v.set_sensitive(true);
                v
            }
        };
        headers.insert(name.clone(), value);
    }
    Ok(())
}

/// The `X-Miauflix-Assertion` value for `principal` calling `method path` on `audience`.
pub fn assertion(
    auth: &Arc<AuthService>,
    principal: &Principal,
    audience: &str,
    method: &Method,
    path: &str,
) -> Result<HeaderValue, ApiError> {
    let token = auth.identity_assertion(principal, audience, method.as_str(), path).map_err(|e| {
        tracing::error!(error = %e, "signing an identity assertion");
        ApiError::internal()
    })?;
    let mut v = HeaderValue::from_maybe_shared(token).map_err(|_| ApiError::internal())?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::Configured;
    use poem::http::header::{HeaderMap, HeaderName, HeaderValue};

    #[test]
    fn client_copies_go_in_both_spellings_and_others_stay() {
        let names = [HeaderName::from_static("x-reverse-proxy-secret")];
        let c = Configured::new(names.iter());
        let mut h = HeaderMap::new();
        for n in
            ["x-reverse-proxy-secret", "x_reverse_proxy_secret", "x-reverse_proxy-secret", "x-reverse-proxy", "accept"]
        {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("v"));
        }
        h.append(HeaderName::from_static("x-reverse-proxy-secret"), HeaderValue::from_static("second"));
        c.strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["accept", "x-reverse-proxy"]);

        // A configured name with `_` goes in its `-` spellings too.
        let names = [HeaderName::from_static("x_under_secret")];
        let c = Configured::new(names.iter());
        let mut h = HeaderMap::new();
        for n in ["x-under-secret", "x-under_secret", "x_under-secret", "x_under_secret", "x-under-secrets"] {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static("v"));
        }
        c.strip(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-under-secrets"]);
    }
}
