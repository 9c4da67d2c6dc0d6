//! `[http]` and `[forward_auth]`: limits and origins of the listeners, and which headers of a
//! proxy in front name the original request.

use serde::{Deserialize, Serialize};

use crate::validate::{ConfigError, bad};

/// `[http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted under `/api`, in bytes.
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace_secs: u64,
    /// Idle keep-alive connections are closed after this long.
    pub idle_timeout_secs: u64,
    /// Origins allowed to make credentialed cross-origin requests (exact match).
    pub cors_origins: Vec<String>,
    /// Extra origins the gate is reached under (besides scheme + Host), for CSRF checks.
    pub public_origins: Vec<String>,
    /// Peers (CIDRs) whose `X-Forwarded-For` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The whole request body of a request for the gate itself must arrive within this long
    /// (else 408); proxied bodies are bounded by the idle timeout instead.
    pub body_timeout_secs: u64,
    /// Client connections open at once, over every listener; more are closed at accept.
    pub max_connections: usize,
    /// Client connections open at once from one address (an IPv6 one by its /64).
    pub max_connections_per_ip: usize,
    /// Proxied requests in flight at once through the shared upstream pool (HTTP/2 streams; an
    /// HTTP/1 client connection has its own upstream connection, counted
    /// by `max_connections`): each holds an upstream socket, so streams multiplexed on a few
    /// connections cannot use up the descriptors. More get 503.
    pub max_upstream_requests: usize,
    /// WebSocket tunnels open at once through the proxy; more upgrades get 503.
    pub max_tunnels: usize,
    /// WebSocket tunnels open at once for one client address (an IPv6 one by its /64).
    pub max_tunnels_per_address: usize,
    /// A WebSocket tunnel with no byte in either direction for this long is closed.
    pub tunnel_idle_timeout_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 64 * 1024,
            shutdown_grace_secs: 10,
            idle_timeout_secs: 60,
            cors_origins: Vec::new(),
            public_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            body_timeout_secs: 10,
            max_connections: 4096,
            max_connections_per_ip: 256,
            max_upstream_requests: 1024,
            max_tunnels: 256,
            max_tunnels_per_address: 16,
            tunnel_idle_timeout_secs: 300,
        }
    }
}

impl HttpConfig {
    /// Checks what types alone cannot; keys are relative to `[http]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1024..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return bad("max_body_bytes", "must be between 1024 and 67108864");
        }
        if self.shutdown_grace_secs > 600 {
            return bad("shutdown_grace_secs", "must be at most 600");
        }
        if self.idle_timeout_secs == 0 {
            return bad("idle_timeout_secs", "must be at least 1");
        }
        if !(1..=3600).contains(&self.body_timeout_secs) {
            return bad("body_timeout_secs", "must be between 1 and 3600");
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad("max_connections", "must be between 1 and 1000000");
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_ip) {
            return bad("max_connections_per_ip", "must be between 1 and http.max_connections");
        }
        if !(1..=1_000_000).contains(&self.max_upstream_requests) {
            return bad("max_upstream_requests", "must be between 1 and 1000000");
        }
        if !(1..=100_000).contains(&self.max_tunnels) {
            return bad("max_tunnels", "must be between 1 and 100000");
        }
        if !(1..=self.max_tunnels).contains(&self.max_tunnels_per_address) {
            return bad("max_tunnels_per_address", "must be between 1 and http.max_tunnels");
        }
        if !(1..=86_400).contains(&self.tunnel_idle_timeout_secs) {
            return bad("tunnel_idle_timeout_secs", "must be between 1 and 86400");
        }
        for origin in self.cors_origins.iter().chain(self.public_origins.iter()) {
            if !is_origin(origin) {
                return bad("cors_origins", format!("`{origin}` is not an origin (scheme://host[:port], no path)"));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]` with no path, query or trailing slash.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else { return false };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

/// `[forward_auth]`: which header of the reverse proxy in front names the original request.
/// One header only: proxies that pass client headers on (Traefik, Caddy) would otherwise let a
/// client name the path that is checked.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// `x-original-uri` (nginx sets it itself) or `x-forwarded-uri` (Caddy, Traefik).
    pub uri_header: UriHeader,
    /// `x-original-method` (nginx snippet) or `x-forwarded-method` (Caddy, Traefik).
    pub method_header: MethodHeader,
}

/// The header that carries the original request URI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UriHeader {
    #[default]
    XOriginalUri,
    XForwardedUri,
}

impl UriHeader {
    /// The header name.
    pub fn name(self) -> &'static str {
        match self {
            UriHeader::XOriginalUri => "x-original-uri",
            UriHeader::XForwardedUri => "x-forwarded-uri",
        }
    }

    /// The header the other proxies use; refused when it disagrees.
    pub fn other(self) -> &'static str {
        match self {
            UriHeader::XOriginalUri => "x-forwarded-uri",
            UriHeader::XForwardedUri => "x-original-uri",
        }
    }
}

/// The header that carries the original request method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodHeader {
    #[default]
    XOriginalMethod,
    XForwardedMethod,
}

impl MethodHeader {
    /// The header name.
    pub fn name(self) -> &'static str {
        match self {
            MethodHeader::XOriginalMethod => "x-original-method",
            MethodHeader::XForwardedMethod => "x-forwarded-method",
        }
    }

    /// The header the other proxies use; refused when it disagrees.
    pub fn other(self) -> &'static str {
        match self {
            MethodHeader::XOriginalMethod => "x-forwarded-method",
            MethodHeader::XForwardedMethod => "x-original-method",
        }
    }
}
