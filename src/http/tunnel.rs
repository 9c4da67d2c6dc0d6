//! WebSocket tunnels: what a proxied connection becomes after the upstream's 101.
//!
//! Once upgraded, a connection is no longer HTTP: hyper hands its socket over and the
//! listener's connection caps and idle timeout no longer see it. Without a budget of their
//! own, tunnels from one address held places of the shared upstream pool for as long as
//! they stayed open, so one client could leave every proxied HTTP/2 request a 503. So a
//! tunnel takes a place here instead — `http.max_tunnels` in all, `http.max_tunnels_per_address`
//! per client address (an IPv6 one by its /64, the address `X-Forwarded-For` names when the
//! peer is a trusted proxy) — and is closed after `http.tunnel_idle_timeout_secs` with no
//! byte in either direction.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use poem::http::{HeaderValue, StatusCode, header};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::problem::ApiError;
use crate::http::proxy::UpgradedIo;
use crate::http::serve::{Tracked, idle_watch};
use crate::ratelimit::{AddrCounts, AddrKey};

/// The tunnels open at once, in total and per client address.
pub struct Tunnels {
    total: Arc<Semaphore>,
    per_addr: AddrCounts,
    idle: Duration,
}

/// Why a tunnel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelRefusal {
    Total,
    PerAddress,
}

/// One open tunnel's place; dropping it frees the place.
pub struct TunnelPlace {
    tunnels: Arc<Tunnels>,
    key: Option<AddrKey>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for TunnelPlace {
    fn drop(&mut self) {
        metrics::gauge!("proxy_tunnels_open").decrement(1.0);
        if let Some(key) = self.key {
            self.tunnels.per_addr.give_back(key);
        }
    }
}

impl Tunnels {
    pub fn new(max_total: usize, max_per_addr: usize, idle: Duration) -> Arc<Tunnels> {
        Arc::new(Tunnels {
            total: Arc::new(Semaphore::new(max_total.clamp(1, Semaphore::MAX_PERMITS))),
            per_addr: AddrCounts::new(max_per_addr.max(1)),
            idle,
        })
    }

    /// Takes a place for a tunnel of `client` (the client address as the edge resolved it;
    /// one that is not an address counts only in the total).
    pub fn admit(self: &Arc<Self>, client: &str) -> Result<TunnelPlace, TunnelRefusal> {
        let permit = self.total.clone().try_acquire_owned().map_err(|_| TunnelRefusal::Total)?;
        let key = client.parse::<std::net::IpAddr>().ok().map(AddrKey::of);
        if key.is_some_and(|key| !self.per_addr.take(key)) {
            return Err(TunnelRefusal::PerAddress);
        }
        metrics::gauge!("proxy_tunnels_open").increment(1.0);
        Ok(TunnelPlace { tunnels: self.clone(), key, _permit: permit })
    }

    /// The answer to a refused upgrade: the pool's 503, with its reason counted.
    pub fn refused(why: TunnelRefusal) -> ApiError {
        let reason = match why {
            TunnelRefusal::Total => "total",
            TunnelRefusal::PerAddress => "per_address",
        };
        metrics::counter!("proxy_tunnels_refused_total", "reason" => reason).increment(1);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream-busy",
            "Service unavailable",
            "Too many WebSocket connections are open to the services behind the gate; try again shortly.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
    }

    /// Copies bytes both ways until either side closes or the tunnel has been quiet for the
    /// idle timeout; the place is freed when this returns.
    pub async fn run<U>(&self, place: TunnelPlace, client: Box<dyn UpgradedIo>, mut upstream: U)
    where
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let _place = place;
        let activity = Arc::new(AtomicU64::new(0));
        // Counting the client side sees both directions: its reads are requests, its
        // writes the upstream's answers.
        let mut client = Tracked::counting(client, activity.clone());
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            _ = idle_watch(&activity, self.idle, None) => {
                metrics::counter!("proxy_tunnels_idle_closed_total").increment(1);
                tracing::debug!("closing a WebSocket tunnel that was idle for the idle timeout");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_count_per_address_and_in_total_and_come_back_on_drop() {
        let t = Tunnels::new(3, 2, Duration::from_secs(60));
        let a1 = t.admit("192.0.2.1").unwrap();
        let _a2 = t.admit("::ffff:192.0.2.1").unwrap();
        assert_eq!(t.admit("192.0.2.1").err(), Some(TunnelRefusal::PerAddress), "IPv4-mapped is the same address");
        let _b = t.admit("2001:db8::1").unwrap();
        assert_eq!(t.admit("198.51.100.7").err(), Some(TunnelRefusal::Total));
        drop(a1);
        let _a3 = t.admit("192.0.2.1").unwrap();
        assert_eq!(t.per_addr.len(), 2);
    }
}
