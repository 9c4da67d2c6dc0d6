//! `[audit]`: retention of the audit log — the section's type, its defaults and its checks.
//! `config` composes it.

use serde::{Deserialize, Serialize};

use crate::validate::{ConfigError, bad};

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

impl AuditConfig {
    /// Checks what types alone cannot; keys are relative to `[audit]`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=86_400).contains(&self.prune_interval_secs) {
            return bad("prune_interval_secs", "must be between 1 and 86400");
        }
        if self.retention_days > 36_500 {
            return bad("retention_days", "must be at most 36500 (0 keeps records by age)");
        }
        Ok(())
    }
}
