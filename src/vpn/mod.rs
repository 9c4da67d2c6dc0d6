//! The WireGuard supervisor's public seam. Until the supervisor exists, the tunnel is
//! reported as not configured, which counts as down: routes that require the VPN fail closed.

/// What the rest of the gate may ask about the tunnel.
pub trait VpnStatus: Send + Sync {
    /// Whether traffic that must use the tunnel may flow now.
    fn tunnel_up(&self) -> bool;
    /// A short state name for status pages (`up`, `down`, `not-configured`, …).
    fn state(&self) -> &'static str;
}

/// No VPN is configured: the tunnel is never up.
#[derive(Debug, Default)]
pub struct NotConfigured;

impl VpnStatus for NotConfigured {
    fn tunnel_up(&self) -> bool {
        false
    }

    fn state(&self) -> &'static str {
        "not-configured"
    }
}
