//! The edge stack every request passes, in this order: request id → client address (trusted
//! proxies) → global per-address rate limit → CORS preflight → CSRF origin check → the
//! request's class rate limit → body limit → endpoint; then
//! every error becomes `application/problem+json`, and every response gets the security
//! headers, CORS headers (allowed origins only) and `X-Request-Id`.
//!
//! Requests for configured upstreams take the same steps in [`EdgePolicy::proxy`], on plain
//! `http` types: `http::serve` calls it directly for them (no poem `Request`, no endpoint
//! chain on the proxy's hot path), and the poem middleware calls it for proxied requests that
//! reach the app another way (tests' `TestClient`).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use http_body_util::BodyExt;
use poem::http::header::{self, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use poem::http::{Method, StatusCode, Uri};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};

use crate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::config::Config;
use crate::http::AppState;
use crate::http::context::{ClientAddr, RequestId};
use crate::http::problem::ApiError;
use crate::http::proxy::{ClientUpgrade, ConnInfo, ProxiedBody, ProxyBody, ProxyRoute, UpgradedIo};
use crate::ratelimit::{RateClass, RateLimits};

/// CSP for pages the gate serves.
pub const GATE_CSP: &str = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";
/// CSP for the Swagger UI page, whose bundle is inline.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// What the edge needs to decide.
pub struct EdgePolicy {
    pub max_body: usize,
    /// The whole body of a request for the gate itself must arrive within this long.
    pub body_timeout: std::time::Duration,
    pub tls: bool,
    pub cors_origins: Vec<String>,
    pub public_origins: Vec<String>,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub limits: Arc<RateLimits>,
    pub state: Arc<AppState>,
}

impl EdgePolicy {
    pub fn new(state: Arc<AppState>) -> EdgePolicy {
        let config: &Config = &state.config;
        EdgePolicy {
            max_body: config.http.max_body_bytes,
            body_timeout: std::time::Duration::from_secs(config.http.body_timeout_secs),
            tls: config.tls_enabled(),
            cors_origins: config.http.cors_origins.clone(),
            public_origins: config.http.public_origins.clone(),
            trusted_proxies: config.http.trusted_proxies.clone(),
            limits: state.limits.clone(),
            state: state.clone(),
        }
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The client's address: the socket `peer`, or, when the peer is a trusted proxy, the
    /// right-most untrusted hop of `X-Forwarded-For` (else `Forwarded: for=`). Walking right
    /// to left, trusted hops are skipped; a hop that does not parse (`unknown`, `_hidden`,
    /// garbage) ends the walk at the peer, since anything left of it is the client's say.
    pub fn client_addr(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let peer = peer?;
        if !self.trusted(peer) {
            return Some(peer);
        }
        let walk = |hops: &mut dyn Iterator<Item = Option<IpAddr>>| {
            for hop in hops {
                match hop {
                    Some(ip) if self.trusted(ip) => continue,
                    Some(ip) => return ip,
                    None => return peer,
                }
            }
            peer
        };
        // Right to left across every line of the header; a value that is not text is one hop
        // that does not parse.
        let hops = |name, node: fn(&str) -> Option<IpAddr>| {
            let values = headers.get_all(name).into_iter().rev();
            values.flat_map(move |v| v.to_str().unwrap_or("\0").rsplit(',').map(node))
        };
        if headers.contains_key("x-forwarded-for") {
            return Some(walk(&mut hops(HeaderName::from_static("x-forwarded-for"), parse_node)));
        }
        if headers.contains_key(header::FORWARDED) {
            return Some(walk(&mut hops(header::FORWARDED, forwarded_for)));
        }
        Some(peer)
    }

    /// The `route_class` label of a request to the gate itself: the rate class of its API,
    /// else `system` (health, metrics, docs, pages). Proxied requests are `upstream`.
    fn route_class(method: &Method, path: &str) -> &'static str {
        match rate_class(method, path) {
            Some(c) => c.as_str(),
            None => "system",
        }
    }

    fn origin_allowed_for_cors(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == origin)
    }

    /// The gate's own origin for this request: scheme + `Host`.
    fn own_origin(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        let host =
            headers.get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()))?;
        Some(format!("{}://{}", if self.tls { "https" } else { "http" }, host.to_ascii_lowercase()))
    }

    fn origin_trusted_for_csrf(&self, headers: &HeaderMap, uri: &Uri, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.own_origin(headers, uri).is_some_and(|own| own == origin)
            || self.public_origins.iter().any(|o| o.eq_ignore_ascii_case(&origin))
            || self.cors_origins.iter().any(|o| o.eq_ignore_ascii_case(&origin))
    }

    /// The answer to a CORS preflight (answered here, never forwarded), if this is one.
    fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if *method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return None;
        }
        let mut resp = Response::builder().status(StatusCode::NO_CONTENT).finish();
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if origin.is_some_and(|o| self.origin_allowed_for_cors(o)) {
            let h = resp.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, x-session-id, x-request-id"),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        Some(resp)
    }

    /// CSRF: a cookie-carrying unsafe request must come from our own or a listed origin.
    async fn check_csrf(
        &self,
        method: &Method,
        headers: &HeaderMap,
        uri: &Uri,
        client: &ClientInfo,
    ) -> Result<(), ApiError> {
        if !is_unsafe(method) || !has_session_cookie(headers) {
            return Ok(());
        }
        let claimed = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string).or_else(|| {
            let referer = headers.get(header::REFERER)?.to_str().ok()?;
            let (scheme, rest) = referer.split_once("://")?;
            Some(format!("{scheme}://{}", rest.split('/').next().unwrap_or("")))
        });
        if claimed.as_deref().is_some_and(|o| self.origin_trusted_for_csrf(headers, uri, o)) {
            return Ok(());
        }
        // Free to repeat: recorded once per address per window, the rest counted.
        if let Some(suppressed) = self.limits.note_refusal("csrf", &client.ip) {
            SecurityEvent::new(EventKind::CsrfRejected, Severity::Warning, client)
                .target(uri.path())
                .detail("origin", claimed.unwrap_or_else(|| "none".into()))
                .suppressed(suppressed)
                .record(self.state.auth.audit())
                .await;
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf-rejected",
            "Forbidden",
            "This request did not come from an allowed origin.",
        ))
    }

    /// One rate limit: `Global` (per address, before every other check), or the request's
    /// class — per user when the caller is known (except for `auth`, always per address).
    /// Allowed requests of a class collect their `RateLimit` headers in `rate`.
    async fn check_limit(
        &self,
        class: RateClass,
        user: Option<&str>,
        path: &str,
        client: &ClientInfo,
        rate: &mut RateHeaders,
    ) -> Result<(), ApiError> {
        let checked = match (class, user) {
            (RateClass::Global | RateClass::Auth, _) | (_, None) => self.limits.check(class, &client.ip),
            (_, Some(user)) => self.limits.check_user(class, user),
        };
        match checked {
            Ok(allowed) => {
                if class != RateClass::Global {
                    *rate = Some((allowed.limit, allowed.window_secs, allowed.remaining));
                }
            }
            Err(denied) => {
                metrics::counter!("rate_limited_total", "class" => denied.class.as_str()).increment(1);
                if let Some(suppressed) = denied.first_in_window {
                    SecurityEvent::new(EventKind::RateLimited, Severity::Warning, client)
                        .target(path)
                        .detail("class", denied.class.as_str())
                        .suppressed(suppressed)
                        .record(self.state.auth.audit())
                        .await;
                }
                let secs = denied.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too many requests",
                    "Too many requests; slow down and try again later.",
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
                .with_header(
                    HeaderName::from_static("ratelimit-policy"),
                    HeaderValue::from_str(&format!("{};w={}", denied.limit, denied.window_secs))
                        .unwrap_or(HeaderValue::from_static("0")),
                )
                .with_header(
                    HeaderName::from_static("ratelimit"),
                    HeaderValue::from_str(&format!("limit={}, remaining=0, reset={secs}", denied.limit))
                        .unwrap_or(HeaderValue::from_static("0")),
                ));
            }
        }
        Ok(())
    }

    /// What every response gets on its way out: `X-Request-Id`, the `RateLimit` headers, the
    /// security headers and, for allowed origins, the CORS headers.
    fn finish(&self, h: &mut HeaderMap, id: &RequestId, rate: RateHeaders, path: &str, origin: Option<&HeaderValue>) {
        h.reserve(12);
        if let Ok(v) = HeaderValue::from_str(&id.0) {
            h.insert("x-request-id", v);
        }
        if let Some((limit, window, remaining)) = rate {
            if let Ok(v) = HeaderValue::from_str(&format!("{limit};w={window}")) {
                h.insert(HeaderName::from_static("ratelimit-policy"), v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!("limit={limit}, remaining={remaining}")) {
                h.insert(HeaderName::from_static("ratelimit"), v);
            }
        }
        security_headers(h, self.tls, path);
        if let Some(o) = origin.filter(|o| o.to_str().is_ok_and(|o| self.origin_allowed_for_cors(o))) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("x-request-id, retry-after, ratelimit, ratelimit-policy"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }

    /// Records `permission_denied` when the gate itself refused a signed-in caller (403).
    async fn note_denied(&self, status: StatusCode, actor: Option<String>, path: &str, client: &ClientInfo) {
        // A signed-in caller can repeat a refusal for free too (a guest hammering admin paths):
        // recorded once per account per window, whatever the path, the rest counted.
        if let (StatusCode::FORBIDDEN, Some(actor)) = (status, actor)
            && let Some(suppressed) = self.limits.note_refusal("permission_denied", &actor)
        {
            SecurityEvent::new(EventKind::PermissionDenied, Severity::Warning, client)
                .actor(actor)
                .target(path)
                .suppressed(suppressed)
                .record(self.state.auth.audit())
                .await;
        }
    }

    /// A request for a configured upstream, whole: the edge stack, the route's policy, the
    /// proxy, the finished response. The one implementation of proxied requests: `http::serve`
    /// calls it directly (no poem `Request` on this path), the poem middleware for requests
    /// that reach the app another way.
    pub async fn proxy(
        &self,
        route: Arc<ProxyRoute>,
        req: poem::http::Request<ProxyBody>,
        conn: ConnInfo,
    ) -> poem::http::Response<ProxiedBody> {
        let started = std::time::Instant::now();
        let id = RequestId::new();
        let (parts, body) = req.into_parts();
        let ip = self.client_addr(&parts.headers, conn.peer);
        let client = crate::http::context::client_info_of(ip, &parts.headers, &id.0);
        let origin = parts.headers.get(header::ORIGIN).cloned();
        let path = parts.uri.path().to_string();
        let mut rate = None;
        let mut resp = match self.proxy_guarded(&route, parts, body, conn, &client, &mut rate).await {
            Ok(resp) => resp,
            Err(e) => poem::http::Response::from(problem_of(e, &id)).map(ProxiedBody::Right),
        };
        self.finish(resp.headers_mut(), &id, rate, &path, origin.as_ref());
        self.state.auth.audit().monitor().request("upstream", resp.status().as_u16(), started.elapsed());
        resp
    }

    async fn proxy_guarded(
        &self,
        route: &ProxyRoute,
        parts: poem::http::request::Parts,
        body: ProxyBody,
        conn: ConnInfo,
        client: &ClientInfo,
        rate: &mut RateHeaders,
    ) -> Result<poem::http::Response<ProxiedBody>, ApiError> {
        let path = parts.uri.path();
        self.check_limit(RateClass::Global, None, path, client, rate).await?;
        if let Some(resp) = self.preflight(&parts.method, &parts.headers) {
            return Ok(poem::http::Response::from(resp).map(ProxiedBody::Right));
        }
        self.check_csrf(&parts.method, &parts.headers, &parts.uri, client).await?;
        let auth = crate::http::credentials::authenticate_request(
            &self.state,
            &parts.headers,
            &parts.uri,
            route.cfg.stream_keys.then_some(path),
        );
        let user = match &auth {
            Ok(Some(a)) => Some(a.0.user_id.as_str()),
            _ => None,
        };
        self.check_limit(route.cfg.rate_class, user, path, client, rate).await?;
        let principal = auth.map_err(crate::http::credentials::auth_error)?.map(|a| a.0);
        let policy = || {
            if let Some(min) = crate::http::proxy::min_role(route) {
                let p = principal.as_ref().ok_or(crate::auth::AuthError::Unauthorized)?;
                p.require(min)?;
            }
            Ok::<_, crate::auth::AuthError>(())
        };
        if let Err(e) = policy() {
            let e = crate::http::credentials::auth_error(e);
            self.note_denied(e.status, principal.as_ref().map(|p| p.user_id.clone()), path, client).await;
            return Err(e);
        }
        if route.cfg.requires_vpn && !self.state.vpn.tunnel_up() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "vpn-down",
                "Service unavailable",
                "The VPN tunnel is not up, so this service is paused.",
            ));
        }
        if let Some(answer) = self.state.proxy.serve_file(route, &parts).await {
            return answer;
        }
        self.state.proxy.forward(route, parts, body, conn, principal.as_ref(), &client.ip, self.tls).await
    }
}

/// One hop of `X-Forwarded-For` or one `for=` node of `Forwarded` (RFC 7239 §6): an IPv4
/// address with an optional port, an IPv6 address bare or in brackets with an optional port.
/// Anything else (`unknown`, an obfuscated `_name`, garbage) is `None`.
pub fn parse_node(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let hop = hop.strip_prefix('"').and_then(|h| h.strip_suffix('"')).unwrap_or(hop);
    let port_ok = |p: &str| {
        (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
            || (p.len() > 1
                && p.starts_with('_')
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    };
    if let Some(rest) = hop.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = ip.parse().ok()?;
        return match after {
            "" => Some(IpAddr::V6(ip)),
            _ => after.strip_prefix(':').filter(|p| port_ok(p)).map(|_| IpAddr::V6(ip)),
        };
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    let (ip, port) = hop.split_once(':')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    port_ok(port).then_some(IpAddr::V4(ip))
}

/// The `for=` node of one `Forwarded` element (`for=1.2.3.4;proto=https`), parsed by
/// [`parse_node`]; an element without `for=` names no address and counts as unparsable.
pub fn forwarded_for(element: &str) -> Option<IpAddr> {
    element
        .split(';')
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v)
        })
        .and_then(parse_node)
}

/// The `RateLimit` figures of the request's class: (limit, window seconds, remaining).
type RateHeaders = Option<(u32, u64, u32)>;

/// The rate class of a request to the gate's own API.
fn rate_class(method: &Method, path: &str) -> Option<RateClass> {
    // Everything that checks a password or a secret token (a password change checks the
    // current password).
    let auth_paths =
        ["/api/auth/login", "/api/auth/token", "/api/auth/token/refresh", "/api/auth/setup", "/api/me/password"];
    if *method == Method::POST && (auth_paths.contains(&path) || path.starts_with("/api/auth/refresh/")) {
        return Some(RateClass::Auth);
    }
    path.starts_with("/api/").then_some(RateClass::Api)
}

/// Every method but GET, HEAD and OPTIONS. Methods are case-sensitive tokens, so `post`,
/// `get` or `PROPFIND` are extension methods — which an upstream may still treat as POST or
/// GET, or as a write (WebDAV, `PURGE`) — and count as unsafe.
fn is_unsafe(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether the request carries one of the gate's session cookies.
fn has_session_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| v.to_str().map(|s| s.contains("__miauflix_at_") || s.contains("__miauflix_rt_")).unwrap_or(true))
}

/// Outermost middleware of the stack.
pub struct RequestContext {
    policy: Arc<EdgePolicy>,
}

impl RequestContext {
    pub fn new(policy: Arc<EdgePolicy>) -> Self {
        RequestContext { policy }
    }
}

impl<E: Endpoint> Middleware<E> for RequestContext {
    type Output = RequestContextEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RequestContextEndpoint { inner: ep, policy: self.policy.clone() }
    }
}

pub struct RequestContextEndpoint<E> {
    inner: E,
    policy: Arc<EdgePolicy>,
}

impl<E: Endpoint> RequestContextEndpoint<E> {
    /// A request for the gate itself.
    async fn guarded(&self, mut req: Request, client: &ClientInfo, rate: &mut RateHeaders) -> poem::Result<Response> {
        let p = &self.policy;
        let path = req.uri().path().to_string();
        p.check_limit(RateClass::Global, None, &path, client, rate).await?;
        if let Some(resp) = p.preflight(req.method(), req.headers()) {
            return Ok(resp);
        }
        p.check_csrf(req.method(), req.headers(), req.uri(), client).await?;
        // Credentials are read once: a known user is limited as that user (except for the
        // auth class), whatever address they use, and endpoints reuse the verification.
        let auth = path
            .starts_with("/api/")
            .then(|| crate::http::credentials::authenticate_request(&p.state, req.headers(), req.uri(), None));
        let actor = match &auth {
            Some(Ok(Some(a))) => {
                req.extensions_mut().insert(a.clone());
                Some(a.0.user_id.clone())
            }
            _ => None,
        };
        if let Some(class) = rate_class(req.method(), &path) {
            p.check_limit(class, actor.as_deref(), &path, client, rate).await?;
        }
        if path.starts_with("/api/") {
            limit_body(&mut req, p.max_body, p.body_timeout).await?;
        }
        let result = self.inner.call(req).await.map(IntoResponse::into_response);
        if let Err(e) = &result {
            p.note_denied(e.status(), actor, &path, client).await;
        }
        result
    }

    /// A request for a configured upstream that reached the app without `http::serve` (so
    /// it has no upstream slot of its own): converted once, then the same
    /// [`EdgePolicy::proxy`].
    async fn proxied(&self, mut req: Request, route: Arc<ProxyRoute>) -> Response {
        let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
        let upgrade: Option<ClientUpgrade> = match crate::http::proxy::upgrade_protocol(req.headers()) {
            Some(_) => req.take_upgrade().ok().map(|on| {
                Box::pin(async move { on.await.ok().map(|io| Box::new(io) as Box<dyn UpgradedIo>) }) as ClientUpgrade
            }),
            None => None,
        };
        let body: ProxyBody = req.take_body().into();
        let mut http_req = poem::http::Request::new(body);
        *http_req.method_mut() = req.method().clone();
        *http_req.uri_mut() = req.uri().clone();
        *http_req.version_mut() = req.version();
        *http_req.headers_mut() = std::mem::take(req.headers_mut());
        let resp = self.policy.proxy(route, http_req, ConnInfo { peer, upgrade, slot: None }).await;
        Response::from(resp.map(|b| b.map_err(std::io::Error::other).boxed()))
    }
}

impl<E: Endpoint> Endpoint for RequestContextEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        if let Some(route) = self.policy.state.proxy.route_request(req.uri_mut()) {
            return Ok(self.proxied(req, route).await);
        }
        let started = std::time::Instant::now();
        let id = RequestId::new();
        req.extensions_mut().insert(id.clone());
        if let Some(ip) = self.policy.client_addr(req.headers(), req.remote_addr().as_socket_addr().map(|a| a.ip())) {
            req.extensions_mut().insert(ClientAddr(ip));
        }
        let client = crate::http::context::client_info(&req);
        let origin = req.headers().get(header::ORIGIN).cloned();
        let path = req.uri().path().to_string();
        let class = EdgePolicy::route_class(req.method(), &path);
        let mut rate = None;
        let mut resp = match self.guarded(req, &client, &mut rate).await {
            Ok(resp) => resp,
            Err(err) => problem_response(err, &id),
        };
        self.policy.finish(resp.headers_mut(), &id, rate, &path, origin.as_ref());
        self.policy.state.auth.audit().monitor().request(class, resp.status().as_u16(), started.elapsed());
        Ok(resp)
    }
}

/// The headers every response carries.
fn security_headers(h: &mut poem::http::HeaderMap, tls: bool, path: &str) {
    if tls {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    }
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        let csp = if path.starts_with("/api/docs") { DOCS_CSP } else { GATE_CSP };
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("strict-origin-when-cross-origin"));
    h.insert("permissions-policy", HeaderValue::from_static("geolocation=(), microphone=(), camera=()"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.remove(header::SERVER);
}

/// Reads the body of a request for the gate itself: refused over `max` at once by
/// `Content-Length`, else while reading; the whole body must arrive within `deadline`, so a
/// client trickling it cannot hold the connection and the handler (408 otherwise).
async fn limit_body(req: &mut Request, max: usize, deadline: std::time::Duration) -> Result<(), ApiError> {
    let mut expected = 0;
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("The Content-Length header is not a number."))?;
        if len > max as u64 {
            return Err(ApiError::payload_too_large(max));
        }
        expected = len as usize;
    }
    // Without a length (chunked HTTP/1.1, or HTTP/2) the limit is counted while reading. The
    // buffer grows with what arrives, not with what the client announced.
    let mut stream = req.take_body().into_bytes_stream();
    let read = async {
        let mut buf = BytesMut::with_capacity(expected.min(16 * 1024));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| ApiError::bad_request("The request body could not be read."))?;
            if buf.len() + chunk.len() > max {
                return Err(ApiError::payload_too_large(max));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let buf = tokio::time::timeout(deadline, read).await.map_err(|_| {
        ApiError::new(
            poem::http::StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            "The request body did not arrive in time.",
        )
    })??;
    req.set_body(Body::from(buf.freeze()));
    Ok(())
}

/// Renders any error as a problem document; 5xx causes are logged, never shown.
pub fn problem_response(err: poem::Error, id: &RequestId) -> Response {
    let problem = match err.downcast_ref::<ApiError>() {
        Some(api) => api.clone(),
        None => {
            let status = err.status();
            if status.is_server_error() {
                tracing::error!(request_id = %id.0, error = %err, "request failed");
            }
            ApiError::from_status(status, &err.to_string())
        }
    };
    problem_of(problem, id)
}

/// A problem answered before any edge step ran (the listener refusing a request outright):
/// with its own request id and the security headers every answer carries.
pub(crate) fn early_problem(problem: ApiError, tls: bool) -> Response {
    let id = RequestId::new();
    let mut resp = problem_of(problem, &id);
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert("x-request-id", v);
    }
    security_headers(resp.headers_mut(), tls, "");
    resp
}

/// Renders a problem document with the request id.
fn problem_of(problem: ApiError, id: &RequestId) -> Response {
    let mut resp = Response::builder()
        .status(problem.status)
        .header(CONTENT_TYPE, "application/problem+json")
        .body(problem.body(&id.0).to_string());
    for (name, value) in problem.headers {
        resp.headers_mut().insert(name, value);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::{forwarded_for, parse_node};
    use std::net::IpAddr;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn forwarding_nodes_parse_with_ports_and_brackets() {
        for (hop, want) in [
            ("203.0.113.11", ip("203.0.113.11")),
            (" 203.0.113.11 ", ip("203.0.113.11")),
            ("203.0.113.11:4711", ip("203.0.113.11")),
            ("203.0.113.11:_port", ip("203.0.113.11")),
            ("\"203.0.113.11:80\"", ip("203.0.113.11")),
            ("2001:db8::1", ip("2001:db8::1")),
            ("[2001:db8::1]", ip("2001:db8::1")),
            ("[2001:db8::1]:443", ip("2001:db8::1")),
            ("\"[2001:db8::1]:443\"", ip("2001:db8::1")),
            ("::ffff:192.0.2.1", ip("::ffff:192.0.2.1")),
            ("", None),
            ("unknown", None),
            ("_hidden", None),
            ("_", None),
            ("203.0.113.11:", None),
            ("203.0.113.11:65536", None),
            ("203.0.113.11:12a", None),
            ("203.0.113.11:80:80", None),
            ("203.0.113.256", None),
            ("[203.0.113.11]", None),
            ("[2001:db8::1", None),
            ("[2001:db8::1]443", None),
            ("[2001:db8::1]:", None),
            ("[2001:db8::1]:x", None),
            ("2001:db8::1:443]", None),
            ("evil.example", None),
            ("\"203.0.113.11", None),
        ] {
            assert_eq!(parse_node(hop), want, "{hop:?}");
        }
    }

    #[test]
    fn forwarded_elements_give_their_for_node() {
        assert_eq!(forwarded_for("for=192.0.2.60;proto=http;by=203.0.113.43"), ip("192.0.2.60"));
        assert_eq!(forwarded_for(" proto=https; FOR=\"[2001:db8:cafe::17]:4711\""), ip("2001:db8:cafe::17"));
        assert_eq!(forwarded_for("for=unknown"), None);
        assert_eq!(forwarded_for("for=_hidden"), None);
        assert_eq!(forwarded_for("by=203.0.113.43"), None);
        assert_eq!(forwarded_for(""), None);
    }
}
