//! `[[routes]]`: the upstreams the gate proxies to, by path prefix, and the checks that keep
//! a route from shadowing the gate's own paths or being spelt two ways.

use serde::{Deserialize, Serialize};

use crate::paths::{canonical_path, is_reserved_path};
use crate::validate::{ConfigError, bad};

/// Minimum role for a proxied route, in order from loosest to strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteRole {
    /// No sign-in needed.
    Public,
    Guest,
    User,
    Admin,
}

/// `[[routes]]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    /// `http://host:port[/base]`; empty for a static route.
    #[serde(default)]
    pub upstream: String,
    /// Serve the files of this directory instead of proxying (an absolute path; the path below
    /// the prefix names a file in it).
    #[serde(default)]
    pub static_dir: Option<std::path::PathBuf>,
    /// For a static route: a missing path without a file extension, asked for as HTML, answers
    /// the directory's `index.html` (a single-page app's deep links).
    #[serde(default)]
    pub spa_fallback: bool,
    #[serde(default = "default_min_role")]
    pub min_role: RouteRole,
    #[serde(default = "default_rate_class")]
    pub rate_class: crate::ratelimit::RateClass,
    #[serde(default)]
    pub requires_vpn: bool,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default = "default_route_timeout")]
    pub timeout_secs: u64,
    /// Content-Security-Policy for this route's responses (default: the upstream's, else
    /// `script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'`).
    #[serde(default)]
    pub csp: Option<String>,
    /// Accept a signed stream URL instead of a session.
    #[serde(default)]
    pub stream_keys: bool,
    /// Forward the client's `Authorization` header and the gate's cookies to the upstream.
    #[serde(default)]
    pub forward_credentials: bool,
    /// Headers the gate adds to every request it forwards on this route, each from a named
    /// secret (`{ secret = "name" }`, set with the CLI or API) or a file read at start
    /// (`{ value_file = "/run/secrets/x" }`) — never a value in the TOML.
    #[serde(default)]
    pub upstream_headers: std::collections::BTreeMap<String, UpstreamHeader>,
    /// Add `X-Miauflix-Assertion`, a signed JWT saying who the gate forwards for
    /// (`auth::assertion`).
    #[serde(default)]
    pub identity_assertion: bool,
    /// The assertion's `aud` (default: the upstream's origin, `http://host:port`).
    #[serde(default)]
    pub assertion_audience: Option<String>,
}

/// Where a configured upstream header's value comes from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHeader {
    /// A named secret (`secrets set <name>` or `PUT /api/secrets/<name>`).
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the value (trailing newline ignored), read when the gate starts.
    #[serde(default)]
    pub value_file: Option<std::path::PathBuf>,
}

impl RouteConfig {
    /// The `aud` of this route's identity assertions.
    pub fn audience(&self) -> String {
        if let Some(a) = &self.assertion_audience {
            return a.clone();
        }
        match self.upstream.parse::<http::Uri>() {
            Ok(u) => {
                format!("{}://{}", u.scheme_str().unwrap_or("http"), u.authority().map(|a| a.as_str()).unwrap_or(""))
            }
            Err(_) => self.upstream.clone(),
        }
    }
}

/// Header names the gate sets or strips itself: a route cannot configure them.
fn is_gate_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    const OWN: &[&str] = &[
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "forwarded",
        "x-real-ip",
        "authorization",
        "cookie",
        "x-session-id",
    ];
    OWN.contains(&n.as_str())
        || n.starts_with("x-forwarded-")
        || n.starts_with("x-miauflix-")
        || n.starts_with("sec-websocket-")
}

impl RouteRole {
    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteRole::Public => "public",
            RouteRole::Guest => "guest",
            RouteRole::User => "user",
            RouteRole::Admin => "admin",
        }
    }
}

fn default_min_role() -> RouteRole {
    RouteRole::User
}

fn default_rate_class() -> crate::ratelimit::RateClass {
    crate::ratelimit::RateClass::Api
}

fn default_route_timeout() -> u64 {
    30
}

/// Checks every route; keys are `routes[i]`.
pub fn validate(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    let mut prefixes = std::collections::HashSet::new();
    for (i, r) in routes.iter().enumerate() {
        let key = format!("routes[{i}]");
        if !r.prefix.starts_with('/') || r.prefix.contains(['?', '#', ' ', '\\']) || r.prefix.contains("..") {
            return bad(key, format!("prefix `{}` must be an absolute path", r.prefix));
        }
        if canonical_path(&r.prefix).is_none_or(|c| c != r.prefix) {
            return bad(
                key,
                format!(
                    "prefix `{}` must be a canonical path (no %-encoded letters, digits or -._~, no //, no ;)",
                    r.prefix
                ),
            );
        }
        // `/` is the catch-all: the gate's own paths still win over it (`Proxy::route_for`).
        if is_reserved_path(&r.prefix) || is_reserved_path(r.prefix.trim_end_matches('/')) {
            return bad(key, format!("prefix `{}` would shadow the gate's own paths", r.prefix));
        }
        if !prefixes.insert(r.prefix.trim_end_matches('/').to_string()) {
            return bad(key, format!("prefix `{}` is configured twice", r.prefix));
        }
        match (&r.static_dir, r.upstream.is_empty()) {
            (Some(_), false) => return bad(key, "a route has either upstream or static_dir, not both"),
            (Some(dir), true) => {
                if !dir.is_absolute() || !dir.is_dir() {
                    return bad(
                        key,
                        format!("static_dir `{}` must be an existing directory (absolute path)", dir.display()),
                    );
                }
                if r.strip_prefix
                    || r.forward_credentials
                    || r.stream_keys
                    || r.identity_assertion
                    || !r.upstream_headers.is_empty()
                    || r.assertion_audience.is_some()
                {
                    return bad(
                        key,
                        "strip_prefix, forward_credentials, stream_keys, upstream_headers and identity_assertion do not apply to a static route",
                    );
                }
            }
            (None, _) => match r.upstream.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() && u.query().is_none() => {}
                _ => return bad(key, format!("upstream `{}` must be an http://host:port URL", r.upstream)),
            },
        }
        if let Some(csp) = &r.csp
            && (csp.trim().is_empty() || csp.len() > 4096 || !csp.bytes().all(|b| (b' '..=b'~').contains(&b)))
        {
            return bad(key, "csp must be one line of printable ASCII, at most 4096 characters");
        }
        if r.spa_fallback && r.static_dir.is_none() {
            return bad(key, "spa_fallback needs static_dir");
        }
        if !(1..=3600).contains(&r.timeout_secs) {
            return bad(key, "timeout_secs must be between 1 and 3600");
        }
        if r.stream_keys && r.min_role == RouteRole::Public {
            return bad(key, "stream_keys makes no sense on a public route");
        }
        for (name, h) in &r.upstream_headers {
            let hkey = format!("{key}.upstream_headers.{name}");
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return bad(hkey, "is not a valid header name");
            }
            if is_gate_header(name) {
                return bad(hkey, "is a header the gate sets or removes itself");
            }
            match (&h.secret, &h.value_file) {
                (Some(s), None) if crate::secrets::valid_name(s) => {}
                (Some(_), None) => {
                    return bad(hkey, "secret must name a secret: 1 to 64 of a-z, 0-9, '_', '-', '.'");
                }
                (None, Some(f)) if f.is_absolute() => {}
                (None, Some(_)) => return bad(hkey, "value_file must be an absolute path"),
                _ => return bad(hkey, "give exactly one of secret = \"<name>\" or value_file = \"<path>\""),
            }
        }
        if r.upstream_headers
            .keys()
            .map(|n| n.to_ascii_lowercase().replace('_', "-"))
            .collect::<std::collections::HashSet<_>>()
            .len()
            != r.upstream_headers.len()
        {
            return bad(format!("{key}.upstream_headers"), "names a header twice");
        }
        if let Some(a) = &r.assertion_audience
            && (a.is_empty() || a.len() > 512 || a.chars().any(|c| c.is_control() || c == ' '))
        {
            return bad(format!("{key}.assertion_audience"), "must be a non-empty string without blanks or controls");
        }
    }
    Ok(())
}
