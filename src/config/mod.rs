//! One typed [`Config`], layered: defaults → TOML file → `MIAUFLIX_*` env → CLI flags.
//!
//! Every layer is merged into one TOML table first and deserialized once, so an
//! unknown key or a bad value fails the same way wherever it came from, with one
//! line that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod http;
mod layers;
mod routes;

pub use self::http::{ForwardAuthConfig, HttpConfig, MethodHeader, UriHeader};
use self::layers::{env_value, parse_toml, set_path};
pub use self::routes::{RouteConfig, RouteRole};
pub use crate::audit::config::AuditConfig;
pub use crate::auth::config::AuthConfig;
pub use crate::auth::lockout::LockoutConfig;
pub use crate::crypto::password::PasswordConfig;
use crate::paths::is_under;
pub use crate::ratelimit::RateLimitConfig;
pub use crate::tls::config::{
    AcmeChallenge, AcmeConfig, LETS_ENCRYPT_PRODUCTION, LETS_ENCRYPT_STAGING, ManualTlsConfig, TlsConfig, TlsMode,
};
pub use crate::validate::ConfigError;
use crate::validate::bad;
pub use crate::vpn::config::{
    KillswitchConfig, KillswitchScope, NordVpnConfig, VpnBackend, VpnConfig, VpnHealthConfig, VpnProvider,
    VpnReconnectConfig, VpnServer,
};

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
    pub lockout: LockoutConfig,
    pub rate_limits: RateLimitConfig,
    pub audit: AuditConfig,
    pub metrics: MetricsConfig,
    /// Upstreams the gate proxies to, by path prefix (longest wins).
    pub routes: Vec<RouteConfig>,
    pub forward_auth: ForwardAuthConfig,
    pub vpn: VpnConfig,
}

/// `[metrics]`: who may scrape `/metrics` besides admins.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// File holding a bearer token for a Prometheus scraper (`authorization.credentials_file`).
    pub token_file: Option<PathBuf>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `miauflix_gate=debug,info`.
    pub level: String,
    pub format: LogFormat,
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

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
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
                    .map_err(|e| ConfigError::whole(format!("cannot read config file {}: {e}", path.display())))?;
                parse_toml(&text).map_err(|e| ConfigError::whole(format!("config file {}: {e}", path.display())))?
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
            set_path(&mut table, &key, env_value(&value))
                .map_err(|e| ConfigError::whole(format!("env {name}: {e}")))?;
        }
        if let Some(dir) = &flags.data_dir {
            set_path(&mut table, "data_dir", toml::Value::String(dir.display().to_string()))
                .map_err(|e| ConfigError::whole(e.to_string()))?;
        }
        if let Some(listen) = &flags.listen {
            set_path(&mut table, "listen", toml::Value::String(listen.clone()))
                .map_err(|e| ConfigError::whole(e.to_string()))?;
        }
        if let Some(tls) = &flags.tls {
            set_path(&mut table, "tls.mode", toml::Value::String(tls.clone()))
                .map_err(|e| ConfigError::whole(e.to_string()))?;
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim().replace('\n', " ");
            if path == "." || path.is_empty() {
                ConfigError::whole(format!("invalid configuration: {inner}"))
            } else {
                ConfigError::at(path, inner)
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: each section checks itself, and here what spans
    /// sections (listeners, TLS against listeners, routes).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tls.mode == TlsMode::Off && !self.listen.ip().is_loopback() {
            return bad(
                "tls.mode",
                format!("TLS can only be off on a loopback listener, but listen is {}", self.listen),
            );
        }
        self.tls.validate().map_err(|e| e.under("tls"))?;
        if self.tls.mode == TlsMode::Acme
            && self.tls.acme.challenge == AcmeChallenge::Http01
            && self.http_listen.is_none()
        {
            return bad("tls.acme.challenge", "http-01 needs http_listen (e.g. 0.0.0.0:80)");
        }
        if let Some(http) = self.http_listen
            && http == self.listen
        {
            return bad("http_listen", format!("must differ from listen ({http})"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return bad("log.level", format!("not a valid log filter ({e})"));
        }
        self.http.validate().map_err(|e| e.under("http"))?;
        self.password.validate().map_err(|e| e.under("password"))?;
        self.auth.validate().map_err(|e| e.under("auth"))?;
        self.audit.validate().map_err(|e| e.under("audit"))?;
        self.lockout.validate().map_err(|e| e.under("lockout"))?;
        self.rate_limits.validate().map_err(|e| e.under("rate_limits"))?;
        routes::validate(&self.routes)?;
        self.vpn.validate().map_err(|e| e.under("vpn"))?;
        Ok(())
    }

    /// What is valid but probably not meant, one line each (`config check` prints them): a
    /// route nested under a looser one, whose paths the looser upstream also serves whenever
    /// the stricter prefix is spelt differently there (another case, an encoding the gate does
    /// not decode). A static route is no upstream: its directory reads the one canonical path.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, inner) in self.routes.iter().enumerate() {
            let inner_prefix = inner.prefix.trim_end_matches('/');
            for (j, outer) in self.routes.iter().enumerate() {
                let outer_prefix = outer.prefix.trim_end_matches('/');
                if i != j
                    && outer.static_dir.is_none()
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

    /// The admin socket the CLI talks to a running gate over.
    pub fn admin_socket_path(&self) -> PathBuf {
        self.data_dir.join("admin.sock")
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
