//! The edge stack every request passes, in this order: request id → client address (trusted
//! proxies) → CORS preflight → CSRF origin check → rate limits → body limit → endpoint; then
//! every error becomes `application/problem+json`, and every response gets the security
//! headers, CORS headers (allowed origins only) and `X-Request-Id`.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use futures_util::StreamExt;
use poem::http::header::{self, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue};
use poem::http::{Method, StatusCode};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};

use crate::auth::{ClientInfo, EventKind, SecurityEvent, Severity};
use crate::config::Config;
use crate::error::ApiError;
use crate::http::AppState;
use crate::ratelimit::{RateClass, RateLimits};

/// The id of one request, in responses as `X-Request-Id` and in every problem body.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn new() -> Self {
        RequestId(hex::encode(crate::crypto::id_bytes::<12>()))
    }
}

/// The client's address: the socket peer, or the right-most untrusted `X-Forwarded-For` hop
/// when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// CSP for pages the gate serves.
pub const GATE_CSP: &str = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";
/// CSP for the Swagger UI page, whose bundle is inline.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// What the edge needs to decide.
pub struct EdgePolicy {
    pub max_body: usize,
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

    /// Walks `X-Forwarded-For` (or `Forwarded: for=`) right to left past trusted hops.
    fn client_addr(&self, req: &Request) -> Option<IpAddr> {
        let peer = req.remote_addr().as_socket_addr()?.ip();
        if !self.trusted(peer) {
            return Some(peer);
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for v in req.headers().get_all("x-forwarded-for") {
            for part in v.to_str().unwrap_or("").split(',') {
                if let Ok(ip) = part.trim().parse() {
                    hops.push(ip);
                }
            }
        }
        if hops.is_empty() {
            for v in req.headers().get_all(header::FORWARDED) {
                for elem in v.to_str().unwrap_or("").split(',') {
                    for pair in elem.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=')
                            && k.eq_ignore_ascii_case("for")
                        {
                            let val = val.trim_matches('"');
                            let val = val.strip_prefix('[').and_then(|v| v.split(']').next()).unwrap_or(val);
                            let val =
                                if val.matches(':').count() == 1 { val.split(':').next().unwrap_or(val) } else { val };
                            if let Ok(ip) = val.parse() {
                                hops.push(ip);
                            }
                        }
                    }
                }
            }
        }
        Some(hops.into_iter().rev().find(|ip| !self.trusted(*ip)).unwrap_or(peer))
    }

    /// The `route_class` label of a request: `upstream` for proxied routes, else the rate
    /// class of the gate's own API, else `system` (health, metrics, docs, pages).
    fn route_class(route: Option<&crate::http::proxy::ProxyRoute>, method: &Method, path: &str) -> &'static str {
        if route.is_some() {
            return "upstream";
        }
        match rate_class(method, path) {
            Some(c) => c.as_str(),
            None => "system",
        }
    }

    fn origin_allowed_for_cors(&self, origin: &str) -> bool {
        self.cors_origins.iter().any(|o| o == origin)
    }

    /// The gate's own origin for this request: scheme + `Host`.
    fn own_origin(&self, req: &Request) -> Option<String> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
        Some(format!("{}://{}", if self.tls { "https" } else { "http" }, host.to_ascii_lowercase()))
    }

    fn origin_trusted_for_csrf(&self, req: &Request, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.own_origin(req).is_some_and(|own| own == origin)
            || self.public_origins.iter().any(|o| o.eq_ignore_ascii_case(&origin))
            || self.cors_origins.iter().any(|o| o.eq_ignore_ascii_case(&origin))
    }
}

/// The rate class of a request to the gate's own API.
fn rate_class(method: &Method, path: &str) -> Option<RateClass> {
    let auth_paths = ["/api/auth/login", "/api/auth/token", "/api/auth/token/refresh", "/api/auth/setup"];
    if *method == Method::POST && (auth_paths.contains(&path) || path.starts_with("/api/auth/refresh/")) {
        return Some(RateClass::Auth);
    }
    path.starts_with("/api/").then_some(RateClass::Api)
}

fn is_unsafe(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// Whether the request carries one of the gate's session cookies.
fn has_session_cookie(req: &Request) -> bool {
    req.headers()
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
    async fn guarded(
        &self,
        mut req: Request,
        route: Option<Arc<crate::http::proxy::ProxyRoute>>,
        client: &ClientInfo,
        rate: &mut Vec<(HeaderName, String)>,
    ) -> poem::Result<Response> {
        let p = &self.policy;
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string);

        // CORS preflight: answered here, never forwarded.
        if method == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            let mut resp = Response::builder().status(StatusCode::NO_CONTENT).finish();
            if let Some(o) = origin.as_deref().filter(|o| p.origin_allowed_for_cors(o)) {
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
                let _ = o;
            }
            return Ok(resp);
        }

        // CSRF: a cookie-carrying unsafe request must come from our own or a listed origin.
        if is_unsafe(&method) && has_session_cookie(&req) {
            let claimed = origin.clone().or_else(|| {
                let referer = req.headers().get(header::REFERER)?.to_str().ok()?;
                let (scheme, rest) = referer.split_once("://")?;
                Some(format!("{scheme}://{}", rest.split('/').next().unwrap_or("")))
            });
            let ok = claimed.as_deref().is_some_and(|o| p.origin_trusted_for_csrf(&req, o));
            if !ok {
                SecurityEvent::new(EventKind::CsrfRejected, Severity::Warning, client)
                    .target(&path)
                    .detail("origin", claimed.unwrap_or_else(|| "none".into()))
                    .record(p.state.auth.audit())
                    .await;
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf-rejected",
                    "Forbidden",
                    "This request did not come from an allowed origin.",
                )
                .into());
            }
        }

        // Rate limits: the global per-IP ceiling, then the request's class.
        let ip = client.ip.clone();
        let mut classes = vec![RateClass::Global];
        if let Some(r) = &route {
            classes.push(r.cfg.rate_class);
        } else if let Some(c) = rate_class(&method, &path) {
            classes.push(c);
        }
        // Credentials are read once: for proxied routes they decide access below; for every
        // non-auth class a known user is limited as that user, whatever address they use.
        let auth = match &route {
            Some(r) => Some(crate::http::auth::authenticate_request(
                &p.state,
                &req,
                r.cfg.stream_keys.then_some(path.as_str()),
            )),
            None if path.starts_with("/api/") => Some(crate::http::auth::authenticate_request(&p.state, &req, None)),
            None => None,
        };
        let user_key = match &auth {
            Some(Ok(Some(a))) => {
                req.extensions_mut().insert(a.clone());
                Some(format!("user:{}", a.0.user_id))
            }
            _ => None,
        };
        for class in classes {
            let key = match (class, &user_key) {
                (RateClass::Global | RateClass::Auth, _) | (_, None) => &ip,
                (_, Some(user)) => user,
            };
            match p.limits.check(class, key) {
                Ok(allowed) => {
                    if class != RateClass::Global {
                        rate.push((
                            HeaderName::from_static("ratelimit-policy"),
                            format!("{};w={}", allowed.limit, allowed.window_secs),
                        ));
                        rate.push((
                            HeaderName::from_static("ratelimit"),
                            format!("limit={}, remaining={}", allowed.limit, allowed.remaining),
                        ));
                    }
                }
                Err(denied) => {
                    metrics::counter!("rate_limited_total", "class" => denied.class.as_str()).increment(1);
                    if denied.first_in_window {
                        SecurityEvent::new(EventKind::RateLimited, Severity::Warning, client)
                            .target(&path)
                            .detail("class", denied.class.as_str())
                            .record(p.state.auth.audit())
                            .await;
                    }
                    let secs = denied.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                    let e = ApiError::new(
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
                    );
                    return Err(e.into());
                }
            }
        }

        if let Some(route) = route {
            let principal = auth.unwrap_or(Ok(None)).map_err(crate::http::auth::fail)?.map(|a| a.0);
            let actor = principal.as_ref().map(|p| p.user_id.clone());
            let result = self.proxied(req, &route, principal, client).await;
            return self.note_denied(result, actor, &path, client).await;
        }
        if path.starts_with("/api/") {
            limit_body(&mut req, p.max_body).await?;
        }
        let actor = user_key.as_deref().and_then(|k| k.strip_prefix("user:")).map(str::to_string);
        let result = self.inner.call(req).await.map(IntoResponse::into_response);
        self.note_denied(result, actor, &path, client).await
    }

    /// Records `permission_denied` when the gate itself refused a signed-in caller (403).
    async fn note_denied(
        &self,
        result: poem::Result<Response>,
        actor: Option<String>,
        path: &str,
        client: &ClientInfo,
    ) -> poem::Result<Response> {
        if let (Err(e), Some(actor)) = (&result, actor)
            && e.status() == StatusCode::FORBIDDEN
        {
            SecurityEvent::new(EventKind::PermissionDenied, Severity::Warning, client)
                .actor(actor)
                .target(path)
                .record(self.policy.state.auth.audit())
                .await;
        }
        result
    }

    /// A request for a configured upstream: route policy, then the proxy.
    async fn proxied(
        &self,
        req: Request,
        route: &crate::http::proxy::ProxyRoute,
        principal: Option<crate::auth::Principal>,
        client: &ClientInfo,
    ) -> poem::Result<Response> {
        let state = &self.policy.state;
        if let Some(min) = crate::http::proxy::min_role(route) {
            let p = principal.as_ref().ok_or_else(|| crate::http::auth::fail(crate::auth::AuthError::Unauthorized))?;
            p.require(min).map_err(crate::http::auth::fail)?;
        }
        if route.cfg.requires_vpn && !state.vpn.tunnel_up() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "vpn-down",
                "Service unavailable",
                "The VPN tunnel is not up, so this service is paused.",
            )
            .into());
        }
        Ok(state.proxy.forward(route, req, principal.as_ref(), &client.ip, self.policy.tls).await?)
    }
}

impl<E: Endpoint> Endpoint for RequestContextEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = std::time::Instant::now();
        let id = RequestId::new();
        req.extensions_mut().insert(id.clone());
        if let Some(ip) = self.policy.client_addr(&req) {
            req.extensions_mut().insert(ClientAddr(ip));
        }
        let client = crate::http::auth::client_info(&req);
        let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string);
        let path = req.uri().path().to_string();
        // The route is looked up once: it decides the policy and labels the metrics.
        let route = self.policy.state.proxy.route_for(&path);
        let class = EdgePolicy::route_class(route.as_deref(), req.method(), &path);
        let mut rate = Vec::new();
        let mut resp = match self.guarded(req, route, &client, &mut rate).await {
            Ok(resp) => resp,
            Err(err) => problem_response(err, &id),
        };
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&id.0) {
            h.insert("x-request-id", v);
        }
        for (name, value) in rate {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        security_headers(h, self.policy.tls, &path);
        if let Some(o) = origin.filter(|o| self.policy.origin_allowed_for_cors(o))
            && let Ok(v) = HeaderValue::from_str(&o)
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("x-request-id, retry-after, ratelimit, ratelimit-policy"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
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

/// Refuses bodies over `max`: at once by `Content-Length`, or while reading the body.
async fn limit_body(req: &mut Request, max: usize) -> Result<(), ApiError> {
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("The Content-Length header is not a number."))?;
        return if len > max as u64 { Err(ApiError::payload_too_large(max)) } else { Ok(()) };
    }
    // No length given (chunked HTTP/1.1, or HTTP/2): count while reading.
    let mut stream = req.take_body().into_bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("The request body could not be read."))?;
        if buf.len() + chunk.len() > max {
            return Err(ApiError::payload_too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
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
    let mut resp = Response::builder()
        .status(problem.status)
        .header(CONTENT_TYPE, "application/problem+json")
        .body(problem.body(&id.0).to_string());
    for (name, value) in problem.headers {
        resp.headers_mut().insert(name, value);
    }
    resp
}
