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
use crate::http::problem::ApiError;
use crate::http::upstream_headers::{Configured, HeaderSource, RouteSetupError};

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

/// The gate's session header, a credential like the cookies it names.
const SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");

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
    /// `upstream_headers`, resolved: a file's value read at start, a secret by name.
    extra: Vec<(HeaderName, HeaderSource)>,
    /// The `aud` of this route's identity assertions.
    audience: String,
}

impl ProxyRoute {
    /// Whether this route serves `path` (segment-aligned prefix match).
    fn matches(&self, path: &str) -> bool {
        crate::paths::is_under(path, &self.prefix)
    }
}

/// Every route and the pooled upstream client.
pub struct Proxy {
    routes: Vec<Arc<ProxyRoute>>,
    /// Signs identity assertions.
    auth: Arc<crate::auth::AuthService>,
    /// Values of `upstream_headers` that name a secret.
    secrets: Arc<crate::secrets::Secrets>,
    /// Every header name some route's `upstream_headers` sets: trust signals for some
    /// upstream, so a client's own copy is removed on every route, not only on that one.
    configured: Configured,
    client: Client<HttpConnector, ProxyBody>,
    /// Requests in flight through the shared pool (`http.max_upstream_requests`). Each holds
    /// an upstream socket until its answer's body ends: without this,
    /// HTTP/2 streams multiplexed on a few client connections — which the connection caps
    /// count once each — opened an upstream socket apiece and used up the descriptors.
    pooled_slots: Arc<tokio::sync::Semaphore>,
    /// WebSocket tunnels, with their own budget and idle timeout.
    tunnels: Arc<crate::http::tunnel::Tunnels>,
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
    pub fn new(
        routes: &[RouteConfig],
        max_pooled: usize,
        tunnels: Arc<crate::http::tunnel::Tunnels>,
        auth: Arc<crate::auth::AuthService>,
        secrets: Arc<crate::secrets::Secrets>,
    ) -> Result<Proxy, RouteSetupError> {
        let mut ready = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let Ok(upstream) = r.upstream.parse::<Uri>() else { continue };
            let prefix = r.prefix.trim_end_matches('/').to_string();
            let Some(authority) = upstream.authority().map(|a| a.as_str()) else { continue };
            let Ok(host) = HeaderValue::from_str(authority) else { continue };
            let base = upstream.path().trim_end_matches('/').to_string();
            let extra = super::upstream_headers::resolve(i, r)?;
            let audience = r.audience();
            ready.push(Arc::new(ProxyRoute {
                cfg: r.clone(),
                prefix,
                base,
                authority: authority.into(),
                host,
                extra,
                audience,
            }));
        }
        let mut routes = ready;
        let configured = Configured::new(routes.iter().flat_map(|r| r.extra.iter().map(|(n, _)| n)));
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Proxy {
            routes,
            auth,
            secrets,
            configured,
            client,
            pooled_slots: Arc::new(tokio::sync::Semaphore::new(max_pooled)),
            tunnels,
        })
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
                // After a 101 the connection is no longer HTTP.
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    slot.put(&route.authority, sender);
                }
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
    /// ([`canonical_path`](crate::paths::canonical_path)), if any. The gate's own
    /// paths never reach here, nor do refused paths (they get the gate's 404, forward auth
    /// 403), nor a path whose case-folded form falls under another route than its exact form
    /// (`/media/PRIVATE` with `/media` and `/media/private`: case-insensitive upstreams would
    /// serve the stricter route's path under the looser policy).
    pub fn route_for<'a>(&self, path: &'a str) -> Option<(Arc<ProxyRoute>, Cow<'a, str>)> {
        let path = crate::paths::canonical_path(path)?;
        if crate::paths::is_reserved_path(&path) {
            return None;
        }
        let exact = self.routes.iter().find(|r| r.matches(&path))?;
        if path.bytes().any(|b| b.is_ascii_uppercase())
            && let Some(folded) = self.routes.iter().find(|r| crate::paths::is_under_ignore_case(&path, &r.prefix))
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
        // The host the client asked for: `Host`, else HTTP/2's `:authority` (in the URI).
        let original_host = headers.remove(header::HOST).or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_maybe_shared(Bytes::copy_from_slice(a.as_str().as_bytes())).ok())
        });
        // Only a well-formed WebSocket handshake without a body (RFC 6455 §4.1; a body would
        // hold the tunnel's place while it trickles in) upgrades; any other upgrade request goes
        // on as a plain request (its upgrade headers are hop-by-hop and removed below).
        let has_body = has_body(&headers);
        let get11 = parts.method == poem::http::Method::GET && parts.version == poem::http::Version::HTTP_11;
        let ws_key = (get11 && !has_body).then(|| websocket_key(&headers)).flatten();
        strip_hop_by_hop(&mut headers);
        let client_upgrade = match &ws_key {
            Some(key) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
                headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                conn.upgrade
            }
            None => None,
        };
        if !route.cfg.forward_credentials {
            headers.remove(header::AUTHORIZATION);
            headers.remove(SESSION_ID);
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
            if route.cfg.identity_assertion {
                let assertion =
                    super::upstream_headers::assertion(&self.auth, p, &route.audience, &parts.method, uri.path())?;
                headers.insert(HeaderName::from_static("x-miauflix-assertion"), assertion);
            }
        }
        // Configured headers: a client's own spellings of any of them go, on every route;
        // then this route's values.
        self.configured.strip(&mut headers);
        super::upstream_headers::apply(&route.extra, &self.secrets, &route.cfg.prefix, &mut headers)?;
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

        // An upgrade takes an upstream connection for itself, and a tunnel's place (not one of
        // the pool's: a tunnel stays open for as long as its client likes).
        let tunnel = match client_upgrade {
            Some(_) => Some(self.tunnels.admit(client_ip).map_err(crate::http::tunnel::Tunnels::refused)?),
            None => None,
        };
        let slot = if tunnel.is_none() { conn.slot } else { None };
        // Without its own upstream connection, a request takes one of the pool's places or
        // is turned away at once (nothing queues on a busy gate).
        let pooled = match (&slot, &tunnel) {
            (Some(_), _) | (_, Some(_)) => None,
            (None, None) => Some(self.pooled_slots.clone().try_acquire_owned().map_err(|_| {
                metrics::counter!("upstream_requests_refused_total").increment(1);
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream-busy",
                    "Service unavailable",
                    "Too many requests are in flight to the services behind the gate; try again shortly.",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            })?),
        };
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
            Ok(Err(e)) if is_client_body_error(&*e) => {
                // The client's own body was malformed (bad chunk, HTTP/2 length mismatch).
                tracing::debug!(route = %route.cfg.prefix, error = %e, "client request body unreadable");
                return Err(ApiError::bad_request("The request body could not be read."));
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
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            // A 101 the gate did not ask for, or not the WebSocket answer to this key: the
            // upstream would tunnel whatever follows past the gate.
            let (Some(client_upgrade), Some(key)) = (client_upgrade, ws_key) else {
                return Err(bad_upgrade(route));
            };
            if !websocket_accepted(resp.headers(), &key) {
                return Err(bad_upgrade(route));
            }
            let Some(place) = tunnel else { return Err(bad_upgrade(route)) };
            let upstream_upgrade = hyper::upgrade::on(&mut resp);
            let prefix = route.cfg.prefix.clone();
            let tunnels = self.tunnels.clone();
            tokio::spawn(async move {
                let (Some(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
                    tracing::debug!(route = %prefix, "upgrade did not complete");
                    return;
                };
                tunnels.run(place, client, hyper_util::rt::TokioIo::new(upstream)).await;
            });
            let (mut parts, _) = resp.into_parts();
            strip_upstream_headers(&mut parts.headers);
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let empty = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed();
            return Ok(hyper::Response::from_parts(parts, ProxiedBody::Right(empty)));
        }
        let (mut parts, body) = resp.into_parts();
        strip_upstream_headers(&mut parts.headers);
        if let Some(csp) = &route.cfg.csp
            && let Ok(v) = HeaderValue::from_str(csp)
        {
            parts.headers.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        let body = match pooled {
            None => ProxiedBody::Left(body),
            // The place is given back when the body ends or is dropped (client gone).
            Some(place) => ProxiedBody::Right(
                body.map_frame(move |frame| {
                    let _held = &place;
                    frame
                })
                .map_err(io::Error::other)
                .boxed(),
            ),
        };
        Ok(hyper::Response::from_parts(parts, body))
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

/// What an upstream's answer may not pass on: hop-by-hop headers, its own CORS headers and
/// `Set-Cookie` for the gate's cookies.
fn strip_upstream_headers(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    strip_cors(headers);
    strip_gate_set_cookies(headers);
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
/// (`X-Miauflix-*`, `Remote-*` and the names other auth proxies use), the client's address or
/// the request's original host, scheme, port or URL (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`,
/// …; the gate sets `X-Forwarded-Host/Proto/For` itself), also spelt with `_` for `-`, which
/// CGI/WSGI-style servers map to the same variable. No allocation: `_` and `-` compare equal.
fn is_identity_header(n: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "x-miauflix-",
        "remote-",
        "x-forwarded-",
        "x-auth-request-",
        "x-webauth-",
        "x-authentik-",
        "oidc-claim-",
        "x-ms-client-principal",
    ];
    const NAMES: &[&str] = &[
        "forwarded",
        "x-real-ip",
        "x-remote-user",
        "x-remote-group",
        "x-remote-groups",
        "x-remote-email",
        "x-auth-user",
        "x-proxy-user",
        "x-authenticated-user",
        "x-authenticated-userid",
        "x-oidc-user",
        "x-token-subject",
        "x-ms-client-principal",
        "x-user",
        "x-email",
        "x-original-url",
        "x-rewrite-url",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
    ];
    let n = n.as_bytes();
    let same = |a: &[u8], b: &[u8]| a.iter().zip(b).all(|(x, y)| x == y || (*x == b'_' && *y == b'-'));
    PREFIXES.iter().any(|p| n.len() > p.len() && same(&n[..p.len()], p.as_bytes()))
        || NAMES.iter().any(|m| n.len() == m.len() && same(n, m.as_bytes()))
}

/// Whether an HTTP/1.1 request asks to upgrade to WebSocket with a well-formed handshake
/// (`Connection: upgrade`, `Upgrade: websocket`, a valid `Sec-WebSocket-Key`, version 13),
/// so the listener should hold on to its connection. The method and version are checked by
/// the proxy.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    websocket_key(headers).map(|_| HeaderValue::from_static("websocket"))
}

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade request (RFC 6455 §4.2.1).
fn websocket_key(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")));
    if !asks
        || !only(headers, &header::UPGRADE)
            .is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
        || only(headers, &header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes().trim_ascii() != b"13")
    {
        return None;
    }
    let key = only(headers, &header::SEC_WEBSOCKET_KEY)?;
    let mut nonce = [0u8; 18];
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD.decode_slice(key.as_bytes().trim_ascii(), &mut nonce);
    (decoded == Ok(16)).then(|| key.clone())
}

/// The one value of `name`, or `None` when it is absent or repeated.
fn only<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// Whether an upstream's 101 is the WebSocket answer to `key`: `Upgrade: websocket` and
/// `Sec-WebSocket-Accept` = base64(SHA-1(key + GUID)) (RFC 6455 §4.2.2).
fn websocket_accepted(headers: &HeaderMap, key: &HeaderValue) -> bool {
    use base64::Engine;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    if !only(headers, &header::UPGRADE).is_some_and(|u| u.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")) {
        return false;
    }
    let digest = crate::crypto::sign::sha1_legacy(&[key.as_bytes().trim_ascii(), GUID]);
    let mut want = [0u8; 28];
    let n = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut want).unwrap_or(0);
    only(headers, &header::SEC_WEBSOCKET_ACCEPT).is_some_and(|a| a.as_bytes().trim_ascii() == &want[..n])
}

/// The gate's answer to an upgrade it will not tunnel.
fn bad_upgrade(route: &ProxyRoute) -> ApiError {
    tracing::warn!(route = %route.cfg.prefix, "upstream switched protocols without a valid WebSocket handshake");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "upstream-bad-upgrade",
        "Bad gateway",
        "The service behind the gate answered an upgrade the gate does not allow.",
    )
}

/// A client's request body that failed to read (bad chunked framing, an HTTP/2 length
/// mismatch), tagged so that the upstream's send error can tell it from an upstream failure.
#[derive(Debug)]
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The client's body as the proxy streams it upstream, its errors tagged [`ClientBodyError`].
pub fn client_body(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(|e| io::Error::other(ClientBodyError(e))).boxed()
}

/// Whether an upstream send failed because the client's body did (hyper reports the body's
/// error in the send error's source chain).
fn is_client_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // `io::Error::source` skips the error it wraps, so look inside it too.
        let inner = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).map(|i| i as &dyn std::error::Error);
        if err.is::<ClientBodyError>() || inner.is_some_and(|i| i.is::<ClientBodyError>()) {
            return true;
        }
        cur = err.source();
    }
    false
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

/// Removes an upstream's `Set-Cookie` for a cookie the gate owns (any `__miauflix_` name,
/// also behind `__Host-`/`__Secure-`, in any case): an upstream must not plant or replace a
/// session. Others are kept; nothing is allocated unless one is dropped.
fn strip_gate_set_cookies(headers: &mut HeaderMap) {
    if !headers.get_all(header::SET_COOKIE).iter().any(is_gate_set_cookie) {
        return;
    }
    let kept: Vec<HeaderValue> =
        headers.get_all(header::SET_COOKIE).iter().filter(|v| !is_gate_set_cookie(v)).cloned().collect();
    headers.remove(header::SET_COOKIE);
    for v in kept {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Whether a `Set-Cookie` value names a gate cookie. The name is what precedes `=` in the
/// first `;` part, trimmed; with no `=` browsers keep it as a nameless cookie sent back as
/// that text, so it counts too.
fn is_gate_set_cookie(v: &HeaderValue) -> bool {
    let pair = v.as_bytes().split(|b| *b == b';').next().unwrap_or(b"").trim_ascii();
    // An empty name (`=__miauflix_at_x=1`): browsers keep the value as a nameless cookie and
    // send it back as `__miauflix_at_x=1`, so the value is read as the name.
    let pair = pair.strip_prefix(b"=").unwrap_or(pair);
    let name = pair.split(|b| *b == b'=').next().unwrap_or(b"").trim_ascii();
    fn strip<'a>(n: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
        (n.len() >= p.len() && n[..p.len()].eq_ignore_ascii_case(p)).then(|| &n[p.len()..])
    }
    let name = strip(name, b"__host-").or_else(|| strip(name, b"__secure-")).unwrap_or(name);
    strip(name, b"__miauflix_").is_some()
}

/// Query-string parameter that carries a signed stream key.
pub const STREAM_KEY_PARAM: &str = "mf_sk";

/// The stream key of a query string: the value of its first `mf_sk=` parameter.
pub fn stream_key_of(query: &str) -> Option<&str> {
    query.split('&').find_map(|p| p.strip_prefix(STREAM_KEY_PARAM).and_then(|rest| rest.strip_prefix('=')))
}

/// Removes the stream key from a query string before it goes upstream.
pub fn strip_stream_key(query: &str) -> String {
    query.split('&').filter(|p| !p.starts_with(&format!("{STREAM_KEY_PARAM}="))).collect::<Vec<_>>().join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn identity_headers_in_both_spellings() {
        for n in [
            "x-miauflix-user",
            "x_miauflix_role",
            "remote-user",
            "remote_groups",
            "x-forwarded-host",
            "x_forwarded_for",
            "x-forwarded-preferred-username",
            "x-forwarded-prefix",
            "x-auth-request-email",
            "x_auth_request_user",
            "x-webauth-user",
            "x-remote-user",
            "x-user",
            "x_email",
            "x-original-url",
            "x-rewrite-url",
            "x-client-ip",
            "true_client_ip",
            "cf-connecting-ip",
            "forwarded",
            "x-real-ip",
            "x-remote-groups",
            "x_authentik_username",
            "oidc-claim-sub",
            "x-ms-client-principal",
            "x-ms-client-principal-name",
            "x-auth-user",
            "x-proxy-user",
            "x-authenticated-user",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["x-users", "x-user-agent", "user-agent", "x-forwarded", "x-miauflix", "x-request-id", "accept", "x-e"]
        {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn a_websocket_handshake_must_be_well_formed() {
        let good: &[(&str, &str)] = &[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        assert!(websocket_key(&map(good)).is_some());
        let without = |name: &str| map(&good.iter().copied().filter(|(k, _)| *k != name).collect::<Vec<_>>());
        for name in ["connection", "upgrade", "sec-websocket-version", "sec-websocket-key"] {
            assert!(websocket_key(&without(name)).is_none(), "without {name}");
        }
        let with = |name: &'static str, v: &'static str| {
            let mut h = without(name);
            h.insert(HeaderName::from_static(name), HeaderValue::from_static(v));
            h
        };
        for (name, v) in [
            ("upgrade", "h2c"),
            ("upgrade", "websocket, h2c"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "c2hvcnQ="),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZXg="),
            ("connection", "keep-alive"),
        ] {
            assert!(websocket_key(&with(name, v)).is_none(), "{name}: {v}");
        }
        let mut twice = map(good);
        twice.append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert!(websocket_key(&twice).is_none());
    }

    #[test]
    fn the_upstreams_101_must_answer_the_key() {
        // RFC 6455 §1.3's example.
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        let ok = [("upgrade", "websocket"), ("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")];
        assert!(websocket_accepted(&map(&ok), &key));
        assert!(!websocket_accepted(&map(&[("upgrade", "h2c"), ok[1]]), &key));
        assert!(!websocket_accepted(&map(&ok[..1]), &key));
        assert!(!websocket_accepted(&map(&[ok[0], ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")]), &key));
    }

    #[test]
    fn gate_cookie_names_in_set_cookie() {
        for v in [
            "__miauflix_at_s=x; Path=/",
            "__MIAUFLIX_RT_s=x",
            "__Host-__miauflix_at_s=x",
            "__secure-__Miauflix_x=1",
            " __miauflix_at_s =x",
            "__miauflix_at_s",
            "=__miauflix_at_s=x",
            " = __miauflix_rt_s=x; Path=/api/auth/",
        ] {
            assert!(is_gate_set_cookie(&HeaderValue::from_static(v)), "{v}");
        }
        for v in ["a=__miauflix_at_s", "__Host-a=1", "x__miauflix_at=1", "a=1; __miauflix_at_s=2"] {
            assert!(!is_gate_set_cookie(&HeaderValue::from_static(v)), "{v}");
        }
        let mut h = map(&[("set-cookie", "a=1"), ("set-cookie", "__miauflix_at_s=x"), ("set-cookie", "b=2")]);
        strip_gate_set_cookies(&mut h);
        assert_eq!(h.get_all(header::SET_COOKIE).iter().collect::<Vec<_>>(), ["a=1", "b=2"]);
    }
}
