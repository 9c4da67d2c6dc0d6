//! The main listener's connection loop: one hyper-util auto (HTTP/1.1 + HTTP/2) connection per
//! accepted socket, the poem app as its service, an idle timeout and a graceful shutdown.
//!
//! Poem's `Server` does the same; this loop exists for the proxy's hot path. A request for a
//! configured upstream goes straight to [`EdgePolicy::proxy`] on hyper's own types — no poem
//! `Request`, no endpoint chain, the upstream's body passed through unboxed — and each HTTP/1
//! client connection carries an [`UpstreamSlot`], its own upstream connection, instead of a
//! checkout from the shared pool per request. Everything else goes to the poem app.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::listener::Acceptor;
use poem::{Endpoint, EndpointExt, IntoEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use futures_util::future::Either;
use http_body_util::BodyExt;

use crate::http::middleware::EdgePolicy;
use crate::http::proxy::{ClientUpgrade, ConnInfo, ProxiedBody, UpgradedIo, UpstreamSlot};

/// Serves `app` on every connection `acceptor` yields until `stop` resolves; then stops
/// accepting, lets open connections finish their requests for up to `grace`, and returns.
/// With `edge`, requests for configured upstreams take the proxy's fast path; without it
/// (the plain-HTTP redirect listener) every request goes to `app`.
pub async fn run<A, E>(
    mut acceptor: A,
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
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = acceptor.accept() => {
                let (io, local, remote, scheme) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let (app, edge, shutdown) = (app.clone(), edge.clone(), shutdown.clone());
                tracker.spawn(connection(io, local, remote, scheme, edge, app, idle, shutdown));
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
    let io = Tracked { inner: io, activity: activity.clone() };
    let waiting = heads.clone();
    let slot = UpstreamSlot::default();
    let peer = remote.as_socket_addr().map(|a| a.ip());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let pending = PendingHead::new(&waiting);
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
            let req = req.map(|body| body.map_err(io::Error::other).boxed());
            let conn = ConnInfo { peer, upgrade, slot };
            return Either::Left(async move {
                let _pending = pending;
                Ok::<_, Infallible>(edge.proxy(route, req, conn).await)
            });
        }
        let app = app.clone();
        let req = poem::Request::from((req, local.clone(), remote.clone(), scheme.clone()));
        Either::Right(async move {
            let _pending = pending;
            let resp = hyper::Response::from(app.get_response(req).await);
            Ok::<_, Infallible>(resp.map(ProxiedBody::Right))
        })
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // A client that trickles its request head a byte at a time keeps the idle watch quiet
    // (slowloris): the head must be complete within the idle timeout or the connection
    // closes. hyper starts this clock when it waits for a head, so an idle keep-alive
    // connection still gets the whole idle timeout.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(idle);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = idle_watch(&activity, idle, None) => tracing::debug!("closing an idle connection"),
        _ = shutdown.cancelled() => {}
    }
    // Finish the requests in flight, take no new ones. A response still makes progress, or
    // waits for its head within the route's timeout; one that moves no byte for another idle
    // period (a client that stopped reading) is cut, like nginx's `send_timeout`.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = idle_watch(&activity, idle, Some(&heads)) => {
            tracing::debug!("dropping a connection whose response made no progress");
        }
    }
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
async fn idle_watch(activity: &AtomicU64, idle: Duration, heads: Option<&AtomicUsize>) {
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
/// where poem's wrapper wakes a `Notify` on every call).
struct Tracked<Io> {
    inner: Io,
    activity: Arc<AtomicU64>,
}

impl<Io: AsyncRead + Unpin> AsyncRead for Tracked<Io> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Tracked<Io> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
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
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
