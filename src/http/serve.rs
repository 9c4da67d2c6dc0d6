//! The main listener's connection loop: one hyper-util auto (HTTP/1.1 + HTTP/2) connection per
//! accepted socket, the poem app as its service, an idle timeout and a graceful shutdown.
//!
//! Poem's `Server` does the same; this loop exists for the proxy's hot path. A request for a
//! configured upstream goes straight to [`EdgePolicy::proxy`] on hyper's own types — no poem
//! `Request`, no endpoint chain, the upstream's body passed through unboxed — and each HTTP/1
//! client connection carries an [`UpstreamSlot`], its own upstream connection, instead of a
//! checkout from the shared pool per request. Everything else goes to the poem app.
//!
//! Every listener shares one [`ConnectionCaps`]: a connection over the total or per-address
//! cap is closed at accept, before any TLS work. A connection that hyper ends by itself
//! (an early answer such as a 413 with the body unread, `Connection: close`) closes
//! lingering, like nginx: the write side is shut and a bounded amount of what the client
//! still sends is read and discarded, so the close does not reset the answer away.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::listener::Acceptor;
use poem::{Endpoint, EndpointExt, IntoEndpoint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::future::Either;

use crate::http::middleware::EdgePolicy;
use crate::http::proxy::{ClientUpgrade, ConnInfo, ProxiedBody, UpgradedIo, UpstreamSlot};
use crate::ratelimit::{AddrCounts, AddrKey};

/// A lingering close reads and discards at most this much of what the client still sends…
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// …for at most this long.
const LINGER_TIME: Duration = Duration::from_secs(3);

/// Client connections open at once, over every listener: a total (a semaphore) and a count
/// per address (an IPv6 one by its /64, like the rate limits). Trusted proxies, which carry
/// many clients' connections, count only in the total.
pub struct ConnectionCaps {
    total: Arc<Semaphore>,
    per_addr: AddrCounts,
    trusted: Vec<ipnet::IpNet>,
    /// When a refusal was last logged (ms since `started`, per reason): one line a minute.
    logged: [AtomicU64; 2],
    started: Instant,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerAddress,
}

impl ConnectionCaps {
    pub fn new(max_total: usize, max_per_addr: usize, trusted: Vec<ipnet::IpNet>) -> Arc<ConnectionCaps> {
        Arc::new(ConnectionCaps {
            total: Arc::new(Semaphore::new(max_total.min(Semaphore::MAX_PERMITS))),
            per_addr: AddrCounts::new(max_per_addr),
            trusted,
            logged: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            started: Instant::now(),
        })
    }

    /// Takes a place for a connection from `peer` (none for a peer without an IP address:
    /// only the total applies), released when the returned slot drops.
    pub fn admit(self: &Arc<Self>, peer: Option<std::net::IpAddr>) -> Result<ConnectionSlot, Refusal> {
        let permit = self.total.clone().try_acquire_owned().map_err(|_| Refusal::Total)?;
        let key = peer.filter(|ip| !self.trusted.iter().any(|net| net.contains(ip))).map(AddrKey::of);
        if key.is_some_and(|key| !self.per_addr.take(key)) {
            return Err(Refusal::PerAddress);
        }
        Ok(ConnectionSlot { caps: self.clone(), key, _permit: permit })
    }

    /// Counts a refusal; logs it at most once a minute per reason (never an audit record:
    /// a flood of refusals must cost next to nothing).
    fn refused(&self, why: Refusal, peer: Option<std::net::IpAddr>) {
        let reason = match why {
            Refusal::Total => "total",
            Refusal::PerAddress => "per_address",
        };
        metrics::counter!("http_connections_refused_total", "reason" => reason).increment(1);
        let now = self.started.elapsed().as_millis() as u64;
        let last = &self.logged[why as usize];
        let prev = last.load(Ordering::Relaxed);
        if (prev == u64::MAX || now.saturating_sub(prev) >= 60_000)
            && last.compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let peer = peer.map(|ip| AddrKey::of(ip).to_string()).unwrap_or_default();
            tracing::warn!(reason, peer = %peer, "closing a connection over the connection cap (logged once a minute)");
        }
    }
}

/// A connection's place under the caps; dropping it frees the place.
pub struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    key: Option<AddrKey>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.caps.per_addr.give_back(key);
        }
    }
}

/// How long to wait after `failures` accept errors in a row (out of descriptors and the
/// like): 10 ms doubling to 1 s, so the loop neither spins nor sleeps long once it recovers.
fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << failures.min(7))).min(Duration::from_secs(1))
}

/// Serves `app` on every connection `acceptor` yields until `stop` resolves; then stops
/// accepting, lets open connections finish their requests for up to `grace`, and returns.
/// With `edge`, requests for configured upstreams take the proxy's fast path; without it
/// (the plain-HTTP redirect listener) every request goes to `app`.
pub async fn run<A, E>(
    mut acceptor: A,
    caps: Arc<ConnectionCaps>,
    edge: Option<Arc<EdgePolicy>>,
    app: E,
    idle: Duration,
    stop: impl Future<Output = ()>,
    grace: Option<Duration>,
) -> io::Result<()>
where
    A: Acceptor + 'static,
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let app: Arc<dyn poem::endpoint::DynEndpoint<Output = poem::Response>> =
        Arc::new(poem::endpoint::ToDynEndpoint(app.into_endpoint().map_to_response()));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::pin!(stop);
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = acceptor.accept() => {
                let (io, local, remote, scheme) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(accept_backoff(failures)).await;
                        failures = failures.saturating_add(1);
                        continue;
                    }
                };
                failures = 0;
                // Over a cap the socket closes here, before the TLS handshake (the TLS
                // acceptor's handshake runs on the connection's task, not yet started).
                let peer = remote.as_socket_addr().map(|a| a.ip());
                let slot = match caps.admit(peer) {
                    Ok(slot) => slot,
                    Err(why) => {
                        drop(io);
                        caps.refused(why, peer);
                        continue;
                    }
                };
                let (app, edge, shutdown) = (app.clone(), edge.clone(), shutdown.clone());
                tracker.spawn(async move {
                    connection(io, local, remote, scheme, edge, app, idle, shutdown).await;
                    drop(slot);
                });
            }
        }
    }
    drop(acceptor);
    shutdown.cancel();
    tracker.close();
    match grace {
        Some(grace) => {
            let _ = tokio::time::timeout(grace, tracker.wait()).await;
        }
        None => tracker.wait().await,
    }
    Ok(())
}

/// One client connection.
#[allow(clippy::too_many_arguments)]
async fn connection<Io>(
    io: Io,
    local: poem::web::LocalAddr,
    remote: poem::web::RemoteAddr,
    scheme: poem::http::uri::Scheme,
    edge: Option<Arc<EdgePolicy>>,
    app: Arc<dyn poem::endpoint::DynEndpoint<Output = poem::Response>>,
    idle: Duration,
    shutdown: CancellationToken,
) where
    Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let activity = Arc::new(AtomicU64::new(0));
    // Requests whose response head is not out yet: their wait is bounded by the route's
    // timeout, not by the idle timeout.
    let heads = Arc::new(AtomicUsize::new(0));
    // The socket comes back here when hyper drops it (unless an upgrade took it).
    let (back, mut returned) = oneshot::channel();
    let io = Tracked { inner: Some(io), activity: activity.clone(), back: Some(back) };
    let waiting = heads.clone();
    let slot = UpstreamSlot::default();
    let peer = remote.as_socket_addr().map(|a| a.ip());
    let tls = scheme == poem::http::uri::Scheme::HTTPS;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let pending = PendingHead::new(&waiting);
        if let Some(resp) = missing_host(&req, tls) {
            return Either::Right(Either::Left(std::future::ready(Ok::<_, Infallible>(resp))));
        }
        if let Some(edge) = &edge
            && let Some(route) = edge.state.proxy.route_request(req.uri_mut())
        {
            let edge = edge.clone();
            let upgrade = crate::http::proxy::upgrade_protocol(req.headers()).map(|_| {
                let on = hyper::upgrade::on(&mut req);
                Box::pin(async move { on.await.ok().map(|io| Box::new(TokioIo::new(io)) as Box<dyn UpgradedIo>) })
                    as ClientUpgrade
            });
            let slot = (req.version() <= hyper::Version::HTTP_11).then(|| slot.clone());
            let req = req.map(crate::http::proxy::client_body);
            let conn = ConnInfo { peer, upgrade, slot };
            return Either::Left(async move {
                let _pending = pending;
                Ok::<_, Infallible>(edge.proxy(route, req, conn).await)
            });
        }
        let app = app.clone();
        let req = poem::Request::from((req, local.clone(), remote.clone(), scheme.clone()));
        Either::Right(Either::Right(async move {
            let _pending = pending;
            let resp = hyper::Response::from(app.get_response(req).await);
            Ok::<_, Infallible>(resp.map(ProxiedBody::Right))
        }))
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its request head a byte at a time keeps the idle watch quiet
    // (slowloris): the head must be complete within the idle timeout or the connection
    // closes. hyper starts this clock when it waits for a head, so an idle keep-alive
    // connection still gets the whole idle timeout.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
    // nginx's http2_max_concurrent_streams (hyper's default is 200); proxied streams are
    // also bounded across connections by `http.max_upstream_requests`.
    builder.http2().max_concurrent_streams(128);
    // Whether hyper ended the connection itself without an error (not a timeout cutting it,
    // nor a head overdue or malformed: those close at once).
    let ended = async {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r.is_ok(),
            _ = idle_watch(&activity, idle, None) => tracing::debug!("closing an idle connection"),
            _ = shutdown.cancelled() => {}
        }
        // Finish the requests in flight, take no new ones. A response still makes progress,
        // or waits for its head within the route's timeout; one that moves no byte for
        // another idle period (a client that stopped reading) is cut, like nginx's
        // `send_timeout`.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            r = conn.as_mut() => r.is_ok(),
            _ = idle_watch(&activity, idle, Some(&heads)) => {
                tracing::debug!("dropping a connection whose response made no progress");
                false
            }
        }
    }
    .await;
    if ended && let Ok(io) = returned.try_recv() {
        linger(io).await;
    }
}

/// A lingering close: shuts the write side (TLS close_notify, FIN), then reads and discards
/// what the client still sends — a body the answer made moot — until it closes too, within
/// [`LINGER_BYTES`] and [`LINGER_TIME`]. Closing with unread data would send a reset, and
/// a reset makes the client's stack drop the answer it has not read yet.
async fn linger<Io: AsyncRead + AsyncWrite + Unpin>(mut io: Io) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    })
    .await;
}

/// The 400 for an HTTP/1.1 request without exactly one `Host` (RFC 9112 §3.2), for the
/// gate's own paths and proxied ones alike: without it the gate cannot say which host was
/// asked for. HTTP/1.0 may omit it; HTTP/2 names the host in `:authority`.
fn missing_host<B>(req: &hyper::Request<B>, tls: bool) -> Option<hyper::Response<ProxiedBody>> {
    if req.version() != hyper::Version::HTTP_11 {
        return None;
    }
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_none() {
        return None;
    }
    let problem = crate::http::problem::ApiError::bad_request("An HTTP/1.1 request needs exactly one Host header.");
    let mut resp = crate::http::middleware::early_problem(problem, tls);
    resp.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
    Some(hyper::Response::from(resp).map(ProxiedBody::Right))
}

/// Counts a request as waiting for its response head while it lives.
struct PendingHead(Arc<AtomicUsize>);

impl PendingHead {
    fn new(count: &Arc<AtomicUsize>) -> PendingHead {
        count.fetch_add(1, Ordering::Relaxed);
        PendingHead(count.clone())
    }
}

impl Drop for PendingHead {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has read and written nothing for `idle` (checked four times
/// per period, so it closes between `idle` and 1.25 × `idle` after the last byte) — and, with
/// `heads`, while no request waits for its response head.
pub(crate) async fn idle_watch(activity: &AtomicU64, idle: Duration, heads: Option<&AtomicUsize>) {
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.load(Ordering::Relaxed);
        if now == last && heads.is_none_or(|h| h.load(Ordering::Relaxed) == 0) {
            quiet += tick;
            if quiet >= idle {
                return;
            }
        } else {
            last = now;
            quiet = Duration::ZERO;
        }
    }
}

/// The socket, counting reads and writes so the idle watch sees activity (one relaxed add,
/// where poem's wrapper wakes a `Notify` on every call). Dropped, it hands the socket back
/// through `back` for the lingering close.
pub(crate) struct Tracked<Io> {
    /// Always `Some` until dropped.
    inner: Option<Io>,
    activity: Arc<AtomicU64>,
    back: Option<oneshot::Sender<Io>>,
}

impl<Io> Tracked<Io> {
    /// Counts the activity of `io` only (no lingering close): a WebSocket tunnel's client side.
    pub(crate) fn counting(io: Io, activity: Arc<AtomicU64>) -> Tracked<Io> {
        Tracked { inner: Some(io), activity, back: None }
    }

    fn io(&mut self) -> io::Result<&mut Io> {
        self.inner.as_mut().ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<Io> Drop for Tracked<Io> {
    fn drop(&mut self) {
        if let (Some(io), Some(back)) = (self.inner.take(), self.back.take()) {
            let _ = back.send(io);
        }
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Tracked<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(self.io()?).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Tracked<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(self.io()?).poll_write(cx, buf);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(self.io()?).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_from_10_ms_to_1_s() {
        let waits: Vec<u64> = (0..10).map(|n| accept_backoff(n).as_millis() as u64).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert_eq!(accept_backoff(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn caps_count_per_address_and_in_total_and_release_on_drop() {
        let caps = ConnectionCaps::new(8, 2, vec!["10.0.0.0/8".parse().unwrap()]);
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        let a1 = caps.admit(ip("192.0.2.1")).unwrap();
        let _a2 = caps.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(caps.admit(ip("192.0.2.1")).err(), Some(Refusal::PerAddress), "IPv4-mapped is the same address");
        // One IPv6 /64 is one address; another /64 is another.
        let _b1 = caps.admit(ip("2001:db8:0:1::1")).unwrap();
        let _b2 = caps.admit(ip("2001:db8:0:1::ffff")).unwrap();
        assert_eq!(caps.admit(ip("2001:db8:0:1:abcd::1")).err(), Some(Refusal::PerAddress));
        let _c1 = caps.admit(ip("2001:db8:0:2::1")).unwrap();
        // A trusted proxy counts only in the total.
        let proxied: Vec<_> = (0..3).map(|_| caps.admit(ip("10.0.0.1")).unwrap()).collect();
        assert_eq!(caps.admit(ip("198.51.100.7")).err(), Some(Refusal::Total));
        assert_eq!(caps.admit(None).err(), Some(Refusal::Total));
        drop(proxied);
        drop(a1);
        assert!(caps.per_addr.len() == 3);
        let _a3 = caps.admit(ip("192.0.2.1")).unwrap();
        drop(_a3);
        drop(_a2);
        assert!(caps.per_addr.get(&AddrKey::of("192.0.2.1".parse().unwrap())).is_none(), "an address at 0 is removed");
    }
}
