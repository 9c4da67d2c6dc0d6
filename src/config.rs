//! One typed [`Config`], layered: defaults → TOML file → `MIAUFLIX_*` env → CLI flags.
//!
//! Every layer is merged into one TOML table first and deserialized once, so an
//! unknown key or a bad value fails the same way wherever it came from, with one
//! line that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration problem; the CLI prints it as one line and exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// How the main listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// A certificate made and kept by the gate (the default).
    SelfSigned,
    /// Certificates from an ACME CA (Let's Encrypt).
    Acme,
    /// Certificate and key files managed by the user.
    Manual,
    /// Plain HTTP; refused unless the listener is on loopback.
    Off,
}

impl TlsMode {
    /// The name used in config files and env.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::SelfSigned => "self-signed",
            TlsMode::Acme => "acme",
            TlsMode::Manual => "manual",
            TlsMode::Off => "off",
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The whole gate configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding `gate.redb`, the master key and the setup token.
    pub data_dir: PathBuf,
    /// Main listener address (`127.0.0.1:8443`).
    pub listen: SocketAddr,
    /// Plain-HTTP listener for ACME HTTP-01 and the redirect to https.
    pub http_listen: Option<SocketAddr>,
    /// Master key file; `<data_dir>/master.key` when unset.
    pub master_key_file: Option<PathBuf>,
    pub tls: TlsConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub password: PasswordConfig,
    pub auth: AuthConfig,
    pub lockout: crate::auth::lockout::LockoutConfig,
    pub rate_limits: crate::ratelimit::RateLimitConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    /// Upstreams the gate proxies to, by path prefix (longest wins).
    pub routes: Vec<RouteConfig>,
    pub forward_auth: ForwardAuthConfig,
    pub vpn: VpnConfig,
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

/// `[audit]`: retention of the audit log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Records older than this many days are pruned (0 keeps them by age).
    pub retention_days: u64,
    /// At most this many records are kept (0 keeps any number).
    pub max_events: u64,
    /// How often the background pruner runs.
    pub prune_interval_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retention_days: 90, max_events: 1_000_000, prune_interval_secs: 3600 }
    }
}

/// `[metrics]`: who may scrape `/metrics` besides admins.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// File holding a bearer token for a Prometheus scraper (`authorization.credentials_file`).
    pub token_file: Option<PathBuf>,
}

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
    /// `http://host:port[/base]`
    pub upstream: String,
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
    /// Content-Security-Policy for this route's responses (default: the upstream's, else the gate's).
    #[serde(default)]
    pub csp: Option<String>,
    /// Accept a signed stream URL instead of a session.
    #[serde(default)]
    pub stream_keys: bool,
    /// Forward the client's `Authorization` header and the gate's cookies to the upstream.
    #[serde(default)]
    pub forward_credentials: bool,
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
    "/healthz",
    "/readyz",
    "/metrics",
    "/admin",
    "/.well-known",
];

/// Whether `path` belongs to the gate itself.
pub fn is_reserved_path(path: &str) -> bool {
    path == "/" || RESERVED_PREFIXES.iter().any(|p| is_under(path, p))
}

/// Whether `path` has a `.` or `..` segment, also when its dots, slashes or backslashes are
/// percent-encoded (`/media/..%2Fapi`, `/media/%2e%2e/api`). Such a path could match one
/// route here and mean another to an upstream that normalises it, so it is never proxied
/// ([`canonical_path`](crate::http::canonical::canonical_path), which routing uses, refuses
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
    path.len() >= prefix.len()
        && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        && path.as_bytes().get(prefix.len()).is_none_or(|&b| b == b'/')
}

/// `[auth]`: sessions and tokens.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    pub access_ttl_secs: i64,
    /// A refresh token unused this long is refused.
    pub refresh_idle_secs: i64,
    /// A session ends this long after login, whatever its use.
    pub session_max_secs: i64,
    /// Live sessions per user; the least recently used goes when a new one is made.
    pub max_sessions_per_user: usize,
    pub password_min_length: usize,
    /// A rotated refresh token presented again within this many seconds is refused
    /// without revoking the session (two tabs refreshing at once); later, it is reuse.
    pub refresh_reuse_grace_secs: i64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "miauflix-gate".into(),
            audience: "miauflix".into(),
            access_ttl_secs: 900,
            refresh_idle_secs: 7 * 86_400,
            session_max_secs: 30 * 86_400,
            max_sessions_per_user: 10,
            password_min_length: 12,
            refresh_reuse_grace_secs: 5,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub mode: TlsMode,
    /// Extra DNS names or IP addresses for the self-signed certificate.
    pub names: Vec<String>,
    /// A TLS handshake that takes longer than this is dropped.
    pub handshake_timeout_secs: u64,
    pub acme: AcmeConfig,
    pub manual: ManualTlsConfig,
}

/// ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum AcmeChallenge {
    /// Answered on the main TLS listener (port 443 as seen from the CA).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// Answered on the plain-HTTP listener (`http_listen`, port 80 as seen from the CA).
    #[serde(rename = "http-01")]
    Http01,
}

/// Let's Encrypt production directory.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt staging directory.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// `[tls.acme]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Names on the certificate; each must resolve to this gate.
    pub domains: Vec<String>,
    /// `mailto:` address for the CA (optional for Let's Encrypt).
    pub contact: Option<String>,
    /// ACME directory URL; Let's Encrypt production (or staging with `staging = true`) when unset.
    pub directory: Option<String>,
    pub staging: bool,
    pub challenge: AcmeChallenge,
    /// Extra PEM root certificates to trust for the ACME server itself.
    pub ca_roots: Vec<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            domains: Vec::new(),
            contact: None,
            directory: None,
            staging: false,
            challenge: AcmeChallenge::TlsAlpn01,
            ca_roots: Vec::new(),
        }
    }
}

impl AcmeConfig {
    /// The directory URL in effect.
    pub fn directory_url(&self) -> &str {
        match &self.directory {
            Some(d) => d,
            None if self.staging => LETS_ENCRYPT_STAGING,
            None => LETS_ENCRYPT_PRODUCTION,
        }
    }
}

/// `[tls.manual]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManualTlsConfig {
    /// PEM certificate chain, leaf first; watched for changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1); watched for changes.
    pub key_file: Option<PathBuf>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `miauflix_gate=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

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

/// `[password]`: argon2id parameters.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hashes computed at once; the rest wait in line. Defaults to the number of cores.
    pub max_concurrent: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            http_listen: None,
            master_key_file: None,
            tls: TlsConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            password: PasswordConfig::default(),
            auth: AuthConfig::default(),
            lockout: Default::default(),
            rate_limits: Default::default(),
            audit: AuditConfig::default(),
            metrics: MetricsConfig::default(),
            routes: Vec::new(),
            forward_auth: ForwardAuthConfig::default(),
            vpn: VpnConfig::default(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: TlsMode::SelfSigned,
            names: Vec::new(),
            handshake_timeout_secs: 10,
            acme: AcmeConfig::default(),
            manual: ManualTlsConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
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

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig { memory_kib: 19_456, iterations: 2, parallelism: 1, max_concurrent: None }
    }
}

/// Values given as command-line flags; the last layer.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub tls: Option<String>,
}

/// Env vars whose names do not follow the `__` nesting rule.
const ENV_ALIASES: &[(&str, &str)] = &[("TLS", "tls.mode"), ("LOG", "log.level"), ("LOG_FORMAT", "log.format")];

/// Env vars read by the CLI itself, not part of the config table.
const ENV_IGNORED: &[&str] = &["CONFIG"];

impl Config {
    /// Loads the configuration from an optional TOML file, the given env vars and flags.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
                parse_toml(&text).map_err(|msg| ConfigError(format!("config file {}: {msg}", path.display())))?
            }
            None => toml::Table::new(),
        };
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("MIAUFLIX_") else { continue };
            if ENV_IGNORED.contains(&rest) {
                continue;
            }
            let key = ENV_ALIASES
                .iter()
                .find(|(alias, _)| *alias == rest)
                .map(|(_, key)| (*key).to_string())
                .unwrap_or_else(|| rest.to_ascii_lowercase().replace("__", "."));
            set_path(&mut table, &key, env_value(&value)).map_err(|msg| ConfigError(format!("env {name}: {msg}")))?;
        }
        if let Some(dir) = &flags.data_dir {
            set_path(&mut table, "data_dir", toml::Value::String(dir.display().to_string())).map_err(ConfigError)?;
        }
        if let Some(listen) = &flags.listen {
            set_path(&mut table, "listen", toml::Value::String(listen.clone())).map_err(ConfigError)?;
        }
        if let Some(tls) = &flags.tls {
            set_path(&mut table, "tls.mode", toml::Value::String(tls.clone())).map_err(ConfigError)?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim().replace('\n', " ");
            if path == "." || path.is_empty() {
                ConfigError(format!("invalid configuration: {inner}"))
            } else {
                ConfigError(format!("invalid configuration at `{path}`: {inner}"))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, msg: String| Err(ConfigError(format!("invalid configuration at `{key}`: {msg}")));
        if self.tls.mode == TlsMode::Off && !self.listen.ip().is_loopback() {
            return err(
                "tls.mode",
                format!("TLS can only be off on a loopback listener, but listen is {}", self.listen),
            );
        }
        if self.tls.mode == TlsMode::Acme {
            let a = &self.tls.acme;
            if a.domains.is_empty() {
                return err("tls.acme.domains", "name at least one domain for the certificate".into());
            }
            for d in &a.domains {
                if d.parse::<std::net::IpAddr>().is_ok() || !is_dns_name(d) || !d.contains('.') {
                    return err("tls.acme.domains", format!("`{d}` is not a public DNS name"));
                }
            }
            if let Some(c) = &a.contact
                && (!c.starts_with("mailto:") || !c.contains('@'))
            {
                return err("tls.acme.contact", format!("`{c}` must look like mailto:you@example.org"));
            }
            if !a.directory_url().starts_with("https://") {
                return err("tls.acme.directory", "must be an https:// URL".into());
            }
            if a.challenge == AcmeChallenge::Http01 && self.http_listen.is_none() {
                return err("tls.acme.challenge", "http-01 needs http_listen (e.g. 0.0.0.0:80)".into());
            }
            for root in &a.ca_roots {
                if !root.is_file() {
                    return err("tls.acme.ca_roots", format!("{} is not a readable file", root.display()));
                }
            }
        }
        if self.tls.mode == TlsMode::Manual {
            let m = &self.tls.manual;
            for (key, file) in [("tls.manual.cert_file", &m.cert_file), ("tls.manual.key_file", &m.key_file)] {
                match file {
                    None => return err(key, "required when tls.mode is manual".into()),
                    Some(f) if !f.is_file() => return err(key, format!("{} is not a readable file", f.display())),
                    Some(_) => {}
                }
            }
        }
        if let Some(http) = self.http_listen
            && http == self.listen
        {
            return err("http_listen", format!("must differ from listen ({http})"));
        }
        for name in &self.tls.names {
            if name.parse::<std::net::IpAddr>().is_err() && !is_dns_name(name) {
                return err("tls.names", format!("`{name}` is neither an IP address nor a DNS name"));
            }
        }
        if !(1..=300).contains(&self.tls.handshake_timeout_secs) {
            return err("tls.handshake_timeout_secs", "must be between 1 and 300".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return err("log.level", format!("not a valid log filter ({e})"));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return err("http.max_body_bytes", "must be between 1024 and 67108864".into());
        }
        if self.http.shutdown_grace_secs > 600 {
            return err("http.shutdown_grace_secs", "must be at most 600".into());
        }
        if self.http.idle_timeout_secs == 0 {
            return err("http.idle_timeout_secs", "must be at least 1".into());
        }
        if !(1..=3600).contains(&self.http.body_timeout_secs) {
            return err("http.body_timeout_secs", "must be between 1 and 3600".into());
        }
        if !(1..=1_000_000).contains(&self.http.max_connections) {
            return err("http.max_connections", "must be between 1 and 1000000".into());
        }
        if !(1..=self.http.max_connections).contains(&self.http.max_connections_per_ip) {
            return err("http.max_connections_per_ip", "must be between 1 and http.max_connections".into());
        }
        if !(1..=1_000_000).contains(&self.http.max_upstream_requests) {
            return err("http.max_upstream_requests", "must be between 1 and 1000000".into());
        }
        if !(1..=100_000).contains(&self.http.max_tunnels) {
            return err("http.max_tunnels", "must be between 1 and 100000".into());
        }
        if !(1..=self.http.max_tunnels).contains(&self.http.max_tunnels_per_address) {
            return err("http.max_tunnels_per_address", "must be between 1 and http.max_tunnels".into());
        }
        if !(1..=86_400).contains(&self.http.tunnel_idle_timeout_secs) {
            return err("http.tunnel_idle_timeout_secs", "must be between 1 and 86400".into());
        }
        if self.password.memory_kib < 19_456 {
            return err("password.memory_kib", "must be at least 19456 (OWASP minimum for argon2id)".into());
        }
        if self.password.memory_kib > 4 * 1024 * 1024 {
            return err("password.memory_kib", "must be at most 4194304 (4 GiB)".into());
        }
        if !(2..=100).contains(&self.password.iterations) {
            return err("password.iterations", "must be between 2 and 100".into());
        }
        if !(1..=16).contains(&self.password.parallelism) {
            return err("password.parallelism", "must be between 1 and 16".into());
        }
        let a = &self.auth;
        if a.issuer.trim().is_empty() || a.audience.trim().is_empty() {
            return err("auth.issuer", "issuer and audience must not be empty".into());
        }
        if !(60..=3600).contains(&a.access_ttl_secs) {
            return err("auth.access_ttl_secs", "must be between 60 and 3600".into());
        }
        if !(300..=90 * 86_400).contains(&a.refresh_idle_secs) {
            return err("auth.refresh_idle_secs", "must be between 300 and 7776000".into());
        }
        if a.session_max_secs < a.refresh_idle_secs || a.session_max_secs > 365 * 86_400 {
            return err("auth.session_max_secs", "must be at least refresh_idle_secs and at most a year".into());
        }
        if !(1..=100).contains(&a.max_sessions_per_user) {
            return err("auth.max_sessions_per_user", "must be between 1 and 100".into());
        }
        if !(8..=128).contains(&a.password_min_length) {
            return err("auth.password_min_length", "must be between 8 and 128".into());
        }
        if !(0..=60).contains(&a.refresh_reuse_grace_secs) {
            return err("auth.refresh_reuse_grace_secs", "must be between 0 and 60".into());
        }
        if !(1..=86_400).contains(&self.audit.prune_interval_secs) {
            return err("audit.prune_interval_secs", "must be between 1 and 86400".into());
        }
        if self.audit.retention_days > 36_500 {
            return err("audit.retention_days", "must be at most 36500 (0 keeps records by age)".into());
        }
        if let Err(msg) = self.lockout.validate().and_then(|_| self.rate_limits.validate()) {
            let (key, rest) = msg.split_once(": ").unwrap_or(("lockout", msg.as_str()));
            return err(key, rest.to_string());
        }
        for origin in self.http.cors_origins.iter().chain(self.http.public_origins.iter()) {
            if !is_origin(origin) {
                return err(
                    "http.cors_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                );
            }
        }
        let mut prefixes = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            if !r.prefix.starts_with('/') || r.prefix.contains(['?', '#', ' ', '\\']) || r.prefix.contains("..") {
                return err(&key, format!("prefix `{}` must be an absolute path", r.prefix));
            }
            if crate::http::canonical::canonical_path(&r.prefix).is_none_or(|c| c != r.prefix) {
                return err(
                    &key,
                    format!(
                        "prefix `{}` must be a canonical path (no %-encoded letters, digits or -._~, no //, no ;)",
                        r.prefix
                    ),
                );
            }
            if r.prefix == "/" || is_reserved_path(&r.prefix) || is_reserved_path(r.prefix.trim_end_matches('/')) {
                return err(&key, format!("prefix `{}` would shadow the gate's own paths", r.prefix));
            }
            if !prefixes.insert(r.prefix.trim_end_matches('/').to_string()) {
                return err(&key, format!("prefix `{}` is configured twice", r.prefix));
            }
            match r.upstream.parse::<poem::http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() && u.query().is_none() => {}
                _ => return err(&key, format!("upstream `{}` must be an http://host:port URL", r.upstream)),
            }
            if !(1..=3600).contains(&r.timeout_secs) {
                return err(&key, "timeout_secs must be between 1 and 3600".into());
            }
            if r.stream_keys && r.min_role == RouteRole::Public {
                return err(&key, "stream_keys makes no sense on a public route".into());
            }
        }
        if let Err((key, msg)) = self.vpn.validate() {
            return err(&key, msg);
        }
        if self.password.max_concurrent == Some(0) {
            return err("password.max_concurrent", "must be at least 1".into());
        }
        Ok(())
    }

    /// What is valid but probably not meant, one line each (`config check` prints them): a
    /// route nested under a looser one, whose paths the looser upstream also serves whenever
    /// the stricter prefix is spelt differently there (another case, an encoding the gate does
    /// not decode).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, inner) in self.routes.iter().enumerate() {
            let inner_prefix = inner.prefix.trim_end_matches('/');
            for (j, outer) in self.routes.iter().enumerate() {
                let outer_prefix = outer.prefix.trim_end_matches('/');
                if i != j
                    && outer_prefix.len() < inner_prefix.len()
                    && is_under(inner_prefix, outer_prefix)
                    && (inner.min_role > outer.min_role || (inner.requires_vpn && !outer.requires_vpn))
                {
                    out.push(format!(
                        "routes[{i}] `{}` ({}) nests under the looser routes[{j}] `{}` ({}): \
                         `{}`'s upstream must not serve `{}` under another spelling",
                        inner.prefix,
                        inner.min_role.as_str(),
                        outer.prefix,
                        outer.min_role.as_str(),
                        outer.prefix,
                        inner.prefix
                    ));
                }
            }
        }
        out
    }

    /// Where the master key lives.
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file.clone().unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    /// The redb file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("gate.redb")
    }

    /// The one-time setup token file.
    pub fn setup_token_path(&self) -> PathBuf {
        self.data_dir.join("setup-token")
    }

    /// Whether the main listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.mode != TlsMode::Off
    }
}

fn parse_toml(text: &str) -> Result<toml::Table, String> {
    text.parse::<toml::Table>().map_err(|e| {
        let msg = e.message().trim().replace('\n', " ");
        match e.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: {msg}")
            }
            None => msg,
        }
    })
}

/// An env value is read as a TOML value when it parses as one (numbers, booleans,
/// arrays), else as a plain string.
fn env_value(raw: &str) -> toml::Value {
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<(), String> {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let last = parts.pop().ok_or_else(|| "empty key".to_string())?;
    if last.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("malformed key `{dotted}`"));
    }
    let mut cur = table;
    for part in parts {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a table, cannot set `{dotted}`")),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        })
}

/// `scheme://host[:port]` with no path, query or trailing slash.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else { return false };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

/// `[vpn]`: the WireGuard tunnel that torrent traffic must use.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnConfig {
    pub enabled: bool,
    /// Interface name (at most 15 characters).
    pub interface: String,
    pub backend: VpnBackend,
    /// Tunnel addresses (CIDR), e.g. `10.5.0.2/32`.
    pub address: Vec<ipnet::IpNet>,
    /// DNS servers reached through the tunnel; the only DNS the kill switch lets through.
    pub dns: Vec<std::net::IpAddr>,
    /// `nordvpn` fills the servers from NordVPN's recommendation API.
    pub provider: Option<VpnProvider>,
    pub nordvpn: NordVpnConfig,
    pub servers: Vec<VpnServer>,
    pub health: VpnHealthConfig,
    pub reconnect: VpnReconnectConfig,
    pub killswitch: KillswitchConfig,
}

impl Default for VpnConfig {
    fn default() -> Self {
        VpnConfig {
            enabled: false,
            interface: "wg0".into(),
            backend: VpnBackend::Auto,
            address: Vec::new(),
            dns: Vec::new(),
            provider: None,
            nordvpn: NordVpnConfig::default(),
            servers: Vec::new(),
            health: VpnHealthConfig::default(),
            reconnect: VpnReconnectConfig::default(),
            killswitch: KillswitchConfig::default(),
        }
    }
}

/// How the WireGuard interface is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VpnBackend {
    /// Kernel WireGuard configured over netlink (not in this build: see README).
    Kernel,
    /// A supervised `wireguard-go` child configured over its UAPI socket.
    Userspace,
    /// Userspace (the kernel backend is not in this build).
    Auto,
}

/// Server list providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VpnProvider {
    Nordvpn,
}

/// `[vpn.nordvpn]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NordVpnConfig {
    /// API base URL (`https://api.nordvpn.com`).
    pub api_base: String,
    /// NordVPN country id filter (e.g. 208 for Sweden); all countries when unset.
    pub country_id: Option<u32>,
    /// How many recommended servers to keep.
    pub limit: u32,
    /// How often the list is refreshed.
    pub refresh_secs: u64,
}

impl Default for NordVpnConfig {
    fn default() -> Self {
        NordVpnConfig { api_base: "https://api.nordvpn.com".into(), country_id: None, limit: 5, refresh_secs: 86_400 }
    }
}

/// `[[vpn.servers]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VpnServer {
    pub name: String,
    /// `ip:port` (a host name is resolved when the server is applied).
    pub endpoint: String,
    /// The server's WireGuard public key (base64).
    pub public_key: String,
    #[serde(default = "default_allowed_ips")]
    pub allowed_ips: Vec<ipnet::IpNet>,
}

fn default_allowed_ips() -> Vec<ipnet::IpNet> {
    vec!["0.0.0.0/0".parse().expect("static CIDR")]
}

impl VpnServer {
    /// Checks one server entry; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.len() > 64 || self.name.chars().any(char::is_control) {
            return Err("name must be 1 to 64 printable characters".into());
        }
        match self.endpoint.rsplit_once(':') {
            Some((host, port))
                if port.parse::<u16>().is_ok_and(|p| p > 0)
                    && (host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok() || is_dns_name(host)) => {}
            _ => return Err(format!("endpoint `{}` must be host:port", self.endpoint)),
        }
        if crate::vpn::decode_key(&self.public_key).is_none() {
            return Err("public_key must be a base64 WireGuard key (32 bytes)".into());
        }
        if self.allowed_ips.is_empty() {
            return Err("allowed_ips must not be empty".into());
        }
        Ok(())
    }
}

/// `[vpn.health]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnHealthConfig {
    pub interval_secs: u64,
    /// A handshake older than this counts as a failed check.
    pub handshake_max_age_secs: u64,
    /// `tcp://ip:port` reached through the tunnel on every check.
    pub probe: Option<String>,
    pub failures_to_down: u32,
    pub successes_to_up: u32,
}

impl Default for VpnHealthConfig {
    fn default() -> Self {
        VpnHealthConfig {
            interval_secs: 5,
            handshake_max_age_secs: 180,
            probe: None,
            failures_to_down: 2,
            successes_to_up: 2,
        }
    }
}

impl VpnHealthConfig {
    /// The probe target, when one is configured.
    pub fn probe_addr(&self) -> Option<std::net::SocketAddr> {
        self.probe.as_deref().and_then(|p| p.strip_prefix("tcp://")).and_then(|a| a.parse().ok())
    }
}

/// `[vpn.reconnect]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VpnReconnectConfig {
    pub backoff_base_secs: u64,
    pub backoff_max_secs: u64,
    /// Failed attempts on one server before the next server is tried.
    pub rotate_after_failures: u32,
}

impl Default for VpnReconnectConfig {
    fn default() -> Self {
        VpnReconnectConfig { backoff_base_secs: 2, backoff_max_secs: 300, rotate_after_failures: 3 }
    }
}

/// Which local traffic the kill switch confines to the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KillswitchScope {
    /// Sockets owned by the listed uids (the torrent engine's user).
    Uid,
    /// Sockets of processes in the listed cgroups (not in this build: see README).
    Cgroup,
    /// Every local process.
    All,
}

/// `[vpn.killswitch]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KillswitchConfig {
    pub enabled: bool,
    pub scope: KillswitchScope,
    pub uids: Vec<u32>,
    pub cgroups: Vec<String>,
    /// Local networks the traffic in scope may still reach.
    pub allow_lan: Vec<ipnet::IpNet>,
}

impl Default for KillswitchConfig {
    fn default() -> Self {
        KillswitchConfig {
            enabled: true,
            scope: KillswitchScope::Uid,
            uids: Vec::new(),
            cgroups: Vec::new(),
            allow_lan: Vec::new(),
        }
    }
}

impl VpnConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("vpn.{k}"), m.to_string()));
        if !self.enabled {
            return Ok(());
        }
        let i = &self.interface;
        if i.is_empty() || i.len() > 15 || !i.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return err("interface", "must be 1 to 15 letters, digits, - or _");
        }
        if self.backend == VpnBackend::Kernel {
            return err("backend", "kernel WireGuard is not supported by this build; use userspace or auto");
        }
        if self.address.is_empty() {
            return err("address", "name the tunnel address the provider gave you (e.g. 10.5.0.2/32)");
        }
        if self.servers.is_empty() && self.provider.is_none() {
            return err("servers", "configure at least one [[vpn.servers]] or provider = \"nordvpn\"");
        }
        for (n, s) in self.servers.iter().enumerate() {
            if let Err(m) = s.check() {
                return Err((format!("vpn.servers[{n}]"), m));
            }
        }
        let names: std::collections::HashSet<_> = self.servers.iter().map(|s| &s.name).collect();
        if names.len() != self.servers.len() {
            return err("servers", "server names must be unique");
        }
        if self.provider == Some(VpnProvider::Nordvpn) {
            let n = &self.nordvpn;
            if !(n.api_base.starts_with("https://") || n.api_base.starts_with("http://")) {
                return err("nordvpn.api_base", "must be an http(s):// URL");
            }
            if !(1..=50).contains(&n.limit) {
                return err("nordvpn.limit", "must be between 1 and 50");
            }
            if n.refresh_secs < 60 {
                return err("nordvpn.refresh_secs", "must be at least 60");
            }
        }
        let h = &self.health;
        if !(1..=3600).contains(&h.interval_secs) {
            return err("health.interval_secs", "must be between 1 and 3600");
        }
        if !(10..=86_400).contains(&h.handshake_max_age_secs) {
            return err("health.handshake_max_age_secs", "must be between 10 and 86400");
        }
        if h.probe.is_some() && h.probe_addr().is_none() {
            return err("health.probe", "must be tcp://ip:port");
        }
        if !(1..=100).contains(&h.failures_to_down) || !(1..=100).contains(&h.successes_to_up) {
            return err("health.failures_to_down", "failures_to_down and successes_to_up must be between 1 and 100");
        }
        let r = &self.reconnect;
        if r.backoff_base_secs == 0 || r.backoff_max_secs < r.backoff_base_secs || r.backoff_max_secs > 86_400 {
            return err("reconnect.backoff_base_secs", "need 1 <= backoff_base_secs <= backoff_max_secs <= 86400");
        }
        if !(1..=100).contains(&r.rotate_after_failures) {
            return err("reconnect.rotate_after_failures", "must be between 1 and 100");
        }
        let k = &self.killswitch;
        if k.enabled {
            match k.scope {
                KillswitchScope::Uid if k.uids.is_empty() => {
                    return err("killswitch.uids", "scope uid needs the torrent engine's uid(s)");
                }
                KillswitchScope::Uid if k.uids.contains(&0) => {
                    return err("killswitch.uids", "uid 0 would confine the gate itself; use scope = \"all\"");
                }
                KillswitchScope::Cgroup => {
                    return err("killswitch.scope", "cgroup scope is not supported by this build; use uid or all");
                }
                _ => {}
            }
        }
        Ok(())
    }
}
