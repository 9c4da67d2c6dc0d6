//! `[tls]`: how the main listener gets its certificate — the section's types, their defaults
//! and the checks types alone cannot make. `config` composes it and makes the checks that
//! span sections (TLS off only on loopback, HTTP-01 needs the plain listener).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::validate::{ConfigError, bad, is_dns_name};

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

impl TlsConfig {
    /// Checks what types alone cannot; keys are relative to `[tls]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == TlsMode::Acme {
            let a = &self.acme;
            if a.domains.is_empty() {
                return bad("acme.domains", "name at least one domain for the certificate");
            }
            for d in &a.domains {
                if d.parse::<std::net::IpAddr>().is_ok() || !is_dns_name(d) || !d.contains('.') {
                    return bad("acme.domains", format!("`{d}` is not a public DNS name"));
                }
            }
            if let Some(c) = &a.contact
                && (!c.starts_with("mailto:") || !c.contains('@'))
            {
                return bad("acme.contact", format!("`{c}` must look like mailto:you@example.org"));
            }
            if !a.directory_url().starts_with("https://") {
                return bad("acme.directory", "must be an https:// URL");
            }
            for root in &a.ca_roots {
                if !root.is_file() {
                    return bad("acme.ca_roots", format!("{} is not a readable file", root.display()));
                }
            }
        }
        if self.mode == TlsMode::Manual {
            let m = &self.manual;
            for (key, file) in [("manual.cert_file", &m.cert_file), ("manual.key_file", &m.key_file)] {
                match file {
                    None => return bad(key, "required when tls.mode is manual"),
                    Some(f) if !f.is_file() => return bad(key, format!("{} is not a readable file", f.display())),
                    Some(_) => {}
                }
            }
        }
        for name in &self.names {
            if name.parse::<std::net::IpAddr>().is_err() && !is_dns_name(name) {
                return bad("names", format!("`{name}` is neither an IP address nor a DNS name"));
            }
        }
        if !(1..=300).contains(&self.handshake_timeout_secs) {
            return bad("handshake_timeout_secs", "must be between 1 and 300");
        }
        Ok(())
    }
}
