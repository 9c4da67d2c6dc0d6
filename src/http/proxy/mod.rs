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

mod body;
mod files;
mod headers;
mod stream_key;
mod upgrade;

pub use body::{ClientBodyError, client_body};
pub use stream_key::{STREAM_KEY_PARAM, stream_key_of, strip_stream_key};
pub use upgrade::upgrade_protocol;

use body::is_client_body_error;
use headers::{SESSION_ID, has_body, strip_gate_cookies, strip_hop_by_hop, strip_upstream_headers};
use upgrade::{bad_upgrade, websocket_accepted, websocket_key};

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
    /// A static route's directory (then there is no upstream: `base` and `authority` are empty).
    files: Option<files::StaticDir>,
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
            if let Some(dir) = &r.static_dir {
                let private = r.min_role != RouteRole::Public;
                ready.push(Arc::new(ProxyRoute {
                    cfg: r.clone(),
                    prefix: r.prefix.trim_end_matches('/').to_string(),
                    base: String::new(),
                    authority: "".into(),
                    host: HeaderValue::from_static(""),
                    extra: Vec::new(),
                    audience: String::new(),
                    files: Some(files::StaticDir::new(dir.clone(), r.spa_fallback, private)),
                }));
                continue;
            }
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
                files: None,
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
    /// paths never reach here, in any case (so a catch-all route `/` cannot shadow them), nor
    /// do refused paths (they get the gate's 404, forward auth 403), nor a path whose case-folded form falls under another route than its exact form
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

    /// Answers a request for a static route from its directory, or `None` for a proxied route.
    pub async fn serve_file(
        &self,
        route: &ProxyRoute,
        parts: &poem::http::request::Parts,
    ) -> Option<Result<hyper::Response<ProxiedBody>, ApiError>> {
        let files = route.files.as_ref()?;
        let path = parts.uri.path();
        let rest = path.strip_prefix(&route.prefix).unwrap_or(path);
        let mut resp = files.serve(&parts.method, &parts.headers, rest).await;
        if let Ok(resp) = &mut resp {
            route_csp(route, resp.headers_mut());
        }
        Some(resp)
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
        // TRACE (and IIS's TRACK) makes an upstream echo the request it got — with the
        // configured shared values and the identity assertion in it — back to the client.
        // Refused like nginx does, in any case (methods are case-sensitive, upstreams not always).
        let m = parts.method.as_str();
        if m.eq_ignore_ascii_case("TRACE") || m.eq_ignore_ascii_case("TRACK") {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "This address does not accept that method.",
            ));
        }
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
            // nginx's `X-Real-IP $remote_addr`, which Miauflix's backend reads; the client's own
            // (any spelling) went with the identity headers above. Only for an address.
            if client_ip.parse::<std::net::IpAddr>().is_ok() {
                headers.insert(HeaderName::from_static("x-real-ip"), v.clone());
            }
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
            self.configured.strip(&mut parts.headers);
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            let empty = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed();
            return Ok(hyper::Response::from_parts(parts, ProxiedBody::Right(empty)));
        }
        let (mut parts, body) = resp.into_parts();
        strip_upstream_headers(&mut parts.headers);
        // An upstream that echoes request headers must not hand the shared values back.
        self.configured.strip(&mut parts.headers);
        route_csp(route, &mut parts.headers);
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

/// The Content-Security-Policy a route's answers get unless the route sets `csp` or the
/// upstream sends its own: Miauflix's own policy — scripts only from the site, no plugins, no
/// `<base>`, no framing — and no `default-src`, so posters and trailers from CDNs load. The
/// gate's own pages keep the strict `GATE_CSP`.
pub const ROUTE_CSP: &str = "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// The Content-Security-Policy of a route's answer: the route's `csp`, else the upstream's own,
/// else [`ROUTE_CSP`].
fn route_csp(route: &ProxyRoute, headers: &mut HeaderMap) {
    if let Some(csp) = &route.cfg.csp
        && let Ok(v) = HeaderValue::from_str(csp)
    {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    } else if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(ROUTE_CSP));
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
