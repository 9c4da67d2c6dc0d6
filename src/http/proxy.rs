//! The reverse proxy: configured routes by path prefix (longest wins), each with a minimum
//! role, a rate class, optional VPN dependency, prefix stripping and a timeout. Bodies stream
//! both ways without buffering; hop-by-hop headers are removed; the client's identity
//! headers are replaced by the gate's.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use poem::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use poem::http::{StatusCode, Uri};

use crate::auth::Principal;
use crate::config::{RouteConfig, RouteRole};
use crate::error::ApiError;

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Request bodies as the proxy streams them upstream.
pub type ProxyBody = BoxBody<Bytes, io::Error>;

/// A proxied response's body: the upstream's, passed through as it is, or the gate's own
/// (problems, preflights, upgrades).
pub type ProxiedBody = http_body_util::Either<hyper::body::Incoming, ProxyBody>;

/// The client side of a connection upgrade (WebSocket), once the 101 has gone out.
pub trait UpgradedIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> UpgradedIo for T {}

/// Resolves to the upgraded client connection (or `None` if the upgrade did not happen).
pub type ClientUpgrade = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Box<dyn UpgradedIo>>> + Send>>;

/// What the proxy knows of the client connection a request came on.
pub struct ConnInfo {
    /// The socket peer.
    pub peer: Option<std::net::IpAddr>,
    /// Set when the request asks to upgrade (`Connection: upgrade`).
    pub upgrade: Option<ClientUpgrade>,
    /// This connection's own upstream connection, for HTTP/1 clients of `http::serve`.
    pub slot: Option<UpstreamSlot>,
}

/// A route ready to serve.
pub struct ProxyRoute {
    pub cfg: RouteConfig,
    prefix: String,
    /// The upstream URL's path without its trailing slash; request paths go below it.
    base: String,
    /// `host:port` of the upstream, as dialled (and the key of a client connection's slot).
    authority: Arc<str>,
    /// The same, as the `Host` header sent upstream.
    host: HeaderValue,
}

impl ProxyRoute {
    /// Whether this route serves `path` (segment-aligned prefix match).
    fn matches(&self, path: &str) -> bool {
        crate::config::is_under(path, &self.prefix)
    }
}

/// Every route and the pooled upstream client.
pub struct Proxy {
    routes: Vec<Arc<ProxyRoute>>,
    client: Client<HttpConnector, ProxyBody>,
}

/// The upstream connection that one HTTP/1 client connection owns (`http::serve` puts a slot
/// into each of its requests). Requests on an HTTP/1 connection come one after another, so
/// one upstream connection per client connection serves them all with no pool in between —
/// like nginx's `keepalive` upstream connections, and about 1.4× the pooled client's
/// throughput here. It closes with the client connection. HTTP/2 clients (concurrent
/// streams), upgrades and requests without a slot use the shared pool.
#[derive(Clone, Default)]
pub struct UpstreamSlot(Arc<std::sync::Mutex<Option<Upstream>>>);

/// An upstream connection: the authority it was dialled for and its sender.
type Upstream = (Arc<str>, SendRequest<ProxyBody>);

impl UpstreamSlot {
    /// The connection to `authority`, if this client connection has one.
    fn take(&self, authority: &str) -> Option<SendRequest<ProxyBody>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some((a, sender)) if *a == *authority && !sender.is_closed() => Some(sender),
            _ => None,
        }
    }

    fn put(&self, authority: &Arc<str>, sender: SendRequest<ProxyBody>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((authority.clone(), sender));
    }
}

/// Why an upstream request failed (logged, never shown to the client).
type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

impl Proxy {
    pub fn new(routes: &[RouteConfig]) -> Proxy {
        let mut routes: Vec<Arc<ProxyRoute>> = routes
            .iter()
            .filter_map(|r| {
                let upstream: Uri = r.upstream.parse().ok()?;
                let prefix = r.prefix.trim_end_matches('/').to_string();
                let authority = upstream.authority()?.as_str();
                let host = HeaderValue::from_str(authority).ok()?;
                let base = upstream.path().trim_end_matches('/').to_string();
                Some(Arc::new(ProxyRoute { cfg: r.clone(), prefix, base, authority: authority.into(), host }))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Proxy { routes, client }
    }

    /// Sends a request (origin-form URI) down the client connection's own upstream
    /// connection when it has a slot, else through the pool.
    async fn send(
        &self,
        route: &ProxyRoute,
        slot: Option<UpstreamSlot>,
        req: hyper::Request<ProxyBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        let Some(slot) = slot else { return self.pooled(route, req).await };
        let mut sender = match slot.take(&route.authority) {
            Some(sender) => sender,
            None => connect(&route.authority).await?,
        };
        if sender.ready().await.is_err() {
            // The upstream closed it while it was idle: dial again.
            sender = connect(&route.authority).await?;
            sender.ready().await?;
        }
        // Back into the slot once the answer's head is in: a request that times out or
        // fails drops its connection with it, and the next one dials a fresh one.
        match sender.try_send_request(req).await {
            Ok(resp) => {
                slot.put(&route.authority, sender);
                Ok(resp)
            }
            // Not written before the connection failed: safe to send again, through the pool.
            Err(mut e) => match e.take_message() {
                Some(req) => self.pooled(route, req).await,
                None => Err(e.into_error().into()),
            },
        }
    }

    /// Sends through the shared pool (which wants an absolute URI).
    async fn pooled(
        &self,
        route: &ProxyRoute,
        mut req: hyper::Request<ProxyBody>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        let pq = req.uri().path_and_query().map(|pq| pq.as_str()).unwrap_or("/");
        *req.uri_mut() = format!("http://{}{pq}", route.authority).parse()?;
        Ok(self.client.request(req).await?)
    }

    /// The route for a request path and the path's canonical form
    /// ([`canonical_path`](crate::http::canonical::canonical_path)), if any. The gate's own
    /// paths never reach here, nor do refused paths (they get the gate's 404, forward auth
    /// 403), nor a path whose case-folded form falls under another route than its exact form
    /// (`/media/PRIVATE` with `/media` and `/media/private`: case-insensitive upstreams would
    /// serve the stricter route's path under the looser policy).
    pub fn route_for<'a>(&self, path: &'a str) -> Option<(Arc<ProxyRoute>, Cow<'a, str>)> {
        let path = crate::http::canonical::canonical_path(path)?;
        if crate::config::is_reserved_path(&path) {
            return None;
        }
        let exact = self.routes.iter().find(|r| r.matches(&path))?;
        if path.bytes().any(|b| b.is_ascii_uppercase())
            && let Some(folded) = self.routes.iter().find(|r| crate::config::is_under_ignore_case(&path, &r.prefix))
            && !Arc::ptr_eq(folded, exact)
        {
            return None;
        }
        Some((exact.clone(), path))
    }

    /// The route for a request, with its URI rewritten to the canonical path (the query as it
    /// is) when that differs, so that every later step — policy, stream keys, the path sent
    /// upstream — reads the one canonical form. Allocates nothing when the path is canonical.
    pub fn route_request(&self, uri: &mut Uri) -> Option<Arc<ProxyRoute>> {
        let (route, path) = self.route_for(uri.path())?;
        if let Cow::Owned(path) = path {
            let pq = match uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut parts = std::mem::take(uri).into_parts();
            parts.path_and_query = Some(pq.parse().ok()?);
            *uri = Uri::from_parts(parts).ok()?;
        }
        Some(route)
    }

    /// Forwards the request to the route's upstream and streams the answer back.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        route: &ProxyRoute,
        mut parts: poem::http::request::Parts,
        body: ProxyBody,
        conn: ConnInfo,
        principal: Option<&Principal>,
        client_ip: &str,
        tls: bool,
    ) -> Result<hyper::Response<ProxiedBody>, ApiError> {
        let path = parts.uri.path();
        let rest = if route.cfg.strip_prefix { path.strip_prefix(&route.prefix).unwrap_or(path) } else { path };
        let base = &route.base;
        let slash = if rest.starts_with('/') { "" } else { "/" };
        let pq = match parts.uri.query() {
            Some(q) if q.contains(STREAM_KEY_PARAM) => format!("{base}{slash}{rest}?{}", strip_stream_key(q)),
            Some(q) => format!("{base}{slash}{rest}?{q}"),
            None => format!("{base}{slash}{rest}"),
        };
        let uri: Uri = pq
            .trim_end_matches('?')
            .parse()
            .map_err(|_| ApiError::bad_request("The request path cannot be forwarded."))?;

        // The client's headers, edited in place: connection-level and identity headers out.
        let mut headers = std::mem::take(&mut parts.headers);
        let original_host = headers.remove(header::HOST);
        let upgrade = upgrade_protocol(&headers);
        let has_body = has_body(&headers);
        strip_hop_by_hop(&mut headers);
        // WebSocket (and other) upgrades pass through: keep the two headers that ask for it.
        let client_upgrade = match &upgrade {
            Some(proto) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, proto.clone());
                conn.upgrade
            }
            None => None,
        };
        if !route.cfg.forward_credentials {
            headers.remove(header::AUTHORIZATION);
            strip_gate_cookies(&mut headers);
        }
        // Identity: whatever the client claimed is gone; the gate says who it is.
        if let Some(p) = principal {
            let put = |h: &mut HeaderMap, name: &'static str, v: &str| {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(HeaderName::from_static(name), v);
                }
            };
            put(&mut headers, "x-miauflix-user", &p.user_id);
            put(&mut headers, "x-miauflix-email", &p.email);
            put(&mut headers, "x-miauflix-role", p.role.as_str());
        }
        if let Ok(v) = HeaderValue::from_str(client_ip) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        );
        if let Some(h) = original_host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), h);
        }
        headers.insert(header::HOST, route.host.clone());

        // A request without a body goes upstream without one (not as an empty chunked body,
        // which makes some upstreams close the connection instead of keeping it pooled).
        let http1 = parts.version <= poem::http::Version::HTTP_11;
        let body = if http_body::Body::is_end_stream(&body) || (http1 && !has_body) {
            http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
        } else {
            body
        };
        let mut upstream_req = hyper::Request::new(body);
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = headers;

        // An upgrade takes its upstream connection for itself: those go through the pool.
        let slot = if client_upgrade.is_none() { conn.slot } else { None };
        let timeout = Duration::from_secs(route.cfg.timeout_secs);
        let resp = match tokio::time::timeout(timeout, self.send(route, slot, upstream_req)).await {
            Err(_) => {
                tracing::warn!(route = %route.cfg.prefix, "upstream timed out");
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream-timeout",
                    "Gateway timeout",
                    "The service behind the gate did not answer in time.",
                ));
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %route.cfg.prefix, error = %e, "upstream unreachable");
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "upstream-unavailable",
                    "Bad gateway",
                    "The service behind the gate is not reachable.",
                ));
            }
            Ok(Ok(r)) => r,
        };
        let mut resp = resp;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let (Some(client_upgrade), Some(proto)) = (client_upgrade, upgrade)
        {
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let prefix = route.cfg.prefix.clone();
            tokio::spawn(async move {
                let (Some(mut client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
                    tracing::debug!(route = %prefix, "upgrade did not complete");
                    return;
                };
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            let (mut parts, _) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, proto);
            let empty = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed();
            return Ok(hyper::Response::from_parts(parts, ProxiedBody::Right(empty)));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        strip_cors(&mut parts.headers);
        if let Some(csp) = &route.cfg.csp
            && let Ok(v) = HeaderValue::from_str(csp)
        {
            parts.headers.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        Ok(hyper::Response::from_parts(parts, ProxiedBody::Left(body)))
    }
}

/// Dials an upstream and starts an HTTP/1.1 client connection on it.
async fn connect(authority: &str) -> Result<SendRequest<ProxyBody>, UpstreamError> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(authority))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// The minimum role of a route, or `None` for public routes.
pub fn min_role(route: &ProxyRoute) -> Option<crate::auth::Role> {
    match route.cfg.min_role {
        RouteRole::Public => None,
        RouteRole::Guest => Some(crate::auth::Role::Guest),
        RouteRole::User => Some(crate::auth::Role::User),
        RouteRole::Admin => Some(crate::auth::Role::Admin),
    }
}

/// Removes, in place, the hop-by-hop headers (and those named in `Connection`) and any
/// identity headers (`X-Miauflix-*`, `Remote-*`) that did not come from the gate. One pass
/// over the names; nothing is allocated when there is nothing to remove.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut out: Vec<HeaderName> = headers
        .keys()
        .filter(|n| {
            let n = n.as_str();
            HOP_BY_HOP.contains(&n) || is_identity_header(n)
        })
        .cloned()
        .collect();
    if out.is_empty() {
        return;
    }
    for value in headers.get_all(header::CONNECTION) {
        let named = value.to_str().unwrap_or("").split(',');
        out.extend(named.filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()));
    }
    for name in out {
        headers.remove(name);
    }
}

/// Removes an upstream's own CORS headers: the gate answers CORS for every route from its
/// allow-list (in `EdgePolicy::finish`), so an upstream's `*` or reflected origin cannot open
/// a route to other sites.
fn strip_cors(headers: &mut HeaderMap) {
    let cors: Vec<HeaderName> = headers.keys().filter(|n| n.as_str().starts_with("access-control-")).cloned().collect();
    for name in cors {
        headers.remove(name);
    }
}

/// Whether a client could pass `n` off as a header that only the gate may state: identity
/// (`X-Miauflix-*`, `Remote-*`) or the client's address (`Forwarded`, `X-Real-IP`; the gate
/// sets `X-Forwarded-*` itself), also spelt with `_` for `-`, which CGI/WSGI-style servers
/// map to the same variable. Allocates only for names with `_`.
fn is_identity_header(n: &str) -> bool {
    let ours =
        |n: &str| n.starts_with("x-miauflix-") || n.starts_with("remote-") || matches!(n, "forwarded" | "x-real-ip");
    if ours(n) {
        return true;
    }
    if !n.contains('_') {
        return false;
    }
    let n = n.replace('_', "-");
    ours(&n) || n.starts_with("x-forwarded-")
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if asks { headers.get(header::UPGRADE).cloned() } else { None }
}

/// Whether HTTP/1.1 framing headers announce a request body.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0")
}

/// Removes the gate's own cookies, keeping the upstream's.
fn strip_gate_cookies(headers: &mut HeaderMap) {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';').map(|c| c.trim().to_string()))
        .filter(|c| !c.is_empty() && !c.starts_with("__miauflix_"))
        .collect();
    headers.remove(header::COOKIE);
    if !kept.is_empty()
        && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
    {
        headers.insert(header::COOKIE, v);
    }
}

/// Query-string parameter that carries a signed stream key.
pub const STREAM_KEY_PARAM: &str = "mf_sk";

/// Removes the stream key from a query string before it goes upstream.
fn strip_stream_key(query: &str) -> String {
    query.split('&').filter(|p| !p.starts_with(&format!("{STREAM_KEY_PARAM}="))).collect::<Vec<_>>().join("&")
}
