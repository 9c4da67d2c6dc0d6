//! What every configuration section shares: the one error type its `validate` returns, and
//! the syntax checks more than one section needs. A leaf module, so the domains that own a
//! section (`auth`, `tls`, `vpn`, …) never import `config`, which composes them.

/// A configuration problem: the key it is about and what is wrong. The CLI prints it as one
/// line and exits with code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`tls.acme.domains`, `routes[2]`); empty when the problem is not one key's
    /// (an unreadable file, a TOML syntax error).
    pub key: String,
    pub msg: String,
}

impl ConfigError {
    /// A bad value at `key`.
    pub fn at(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
        ConfigError { key: key.into(), msg: msg.into() }
    }

    /// A problem with the configuration as a whole; `msg` is the whole line.
    pub fn whole(msg: impl Into<String>) -> ConfigError {
        ConfigError { key: String::new(), msg: msg.into() }
    }

    /// The same problem one level down: `servers[2]` becomes `vpn.servers[2]`.
    pub fn under(mut self, section: &str) -> ConfigError {
        self.key = if self.key.is_empty() { section.to_string() } else { format!("{section}.{}", self.key) };
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.msg)
        } else {
            write!(f, "invalid configuration at `{}`: {}", self.key, self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

/// `Err(ConfigError::at(key, msg))`, for the long runs of checks in the `validate`s.
pub fn bad<T>(key: impl Into<String>, msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::at(key, msg))
}

/// A DNS name (letters, digits, `-`, a leading `*` label allowed; no IP-address check).
pub fn is_dns_name(name: &str) -> bool {
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
