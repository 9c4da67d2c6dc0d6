//! The reverse proxy: configured routes by path prefix (longest wins), each with a minimum
//! role, a rate class, optional VPN dependency, prefix stripping and a timeout. Bodies stream
//! both ways without buffering; hop-by-hop headers are removed; the client's identity
//! headers are replaced by the gate's.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use poem::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use poem::http::{StatusCode, Uri};
use poem::{Request, Response};

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

/// A route ready to serve.
pub struct ProxyRoute {
    pub cfg: RouteConfig,
    prefix: String,
    upstream: Uri,
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
    client: Client<HttpConnector, BoxBody<Bytes, io::Error>>,
}

impl Proxy {
    pub fn new(routes: &[RouteConfig]) -> Proxy {
        let mut routes: Vec<Arc<ProxyRoute>> = routes
            .iter()
            .filter_map(|r| {
                let upstream: Uri = r.upstream.parse().ok()?;
                let prefix = r.prefix.trim_end_matches('/').to_string();
                Some(Arc::new(ProxyRoute { cfg: r.clone(), prefix, upstream }))
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

    /// The route for a path, if any (the gate's own paths never reach here).
    pub fn route_for(&self, path: &str) -> Option<Arc<ProxyRoute>> {
        if crate::config::is_reserved_path(path) {
            return None;
        }
        self.routes.iter().find(|r| r.matches(path)).cloned()
    }

    /// Forwards the request to the route's upstream and streams the answer back.
    pub async fn forward(
        &self,
        route: &ProxyRoute,
        mut req: Request,
        principal: Option<&Principal>,
        client_ip: &str,
        tls: bool,
    ) -> Result<Response, ApiError> {
        let path = req.uri().path();
        let rest = if route.cfg.strip_prefix { path.strip_prefix(&route.prefix).unwrap_or(path) } else { path };
        let rest = if rest.starts_with('/') { rest.to_string() } else { format!("/{rest}") };
        let base = route.upstream.path().trim_end_matches('/');
        let pq = match req.uri().query() {
            Some(q) => format!("{base}{rest}?{}", strip_stream_key(q)),
            None => format!("{base}{rest}"),
        };
        let pq = pq.trim_end_matches('?').to_string();
        let authority = route.upstream.authority().map(|a| a.as_str()).unwrap_or("");
        let uri: Uri = format!("http://{authority}{pq}")
            .parse()
            .map_err(|_| ApiError::bad_request("The request path cannot be forwarded."))?;

        let original_host = req.headers().get(header::HOST).cloned();
        let upgrade = upgrade_protocol(req.headers());
        let mut headers = forwardable(req.headers());
        // WebSocket (and other) upgrades pass through: keep the two headers that ask for it.
        let client_upgrade = match &upgrade {
            Some(proto) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, proto.clone());
                req.take_upgrade().ok()
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
        if let Ok(v) = HeaderValue::from_str(authority) {
            headers.insert(header::HOST, v);
        }

        let body: BoxBody<Bytes, io::Error> = req.take_body().into();
        // A request without a body goes upstream without one (not as an empty chunked body,
        // which makes some upstreams close the connection instead of keeping it pooled).
        let http1 = req.version() <= poem::http::Version::HTTP_11;
        let body = if http_body::Body::is_end_stream(&body) || (http1 && !has_body(req.headers())) {
            http_body_util::Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
        } else {
            body
        };
        let mut upstream_req = hyper::Request::builder()
            .method(req.method().clone())
            .uri(uri)
            .body(body)
            .map_err(|_| ApiError::internal())?;
        *upstream_req.headers_mut() = headers;

        let timeout = Duration::from_secs(route.cfg.timeout_secs);
        let resp = match tokio::time::timeout(timeout, self.client.request(upstream_req)).await {
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
                let (Ok(mut client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
                    tracing::debug!(route = %prefix, "upgrade did not complete");
                    return;
                };
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
            let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS).finish();
            *out.headers_mut() = forwardable(resp.headers());
            out.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            out.headers_mut().insert(header::UPGRADE, proto);
            return Ok(out);
        }
        let (parts, body) = resp.into_parts();
        let body = body.map_err(io::Error::other).boxed();
        let mut out = Response::builder().status(parts.status).body(poem::Body::from(body));
        *out.headers_mut() = forwardable(&parts.headers);
        if let Some(csp) = &route.cfg.csp
            && let Ok(v) = HeaderValue::from_str(csp)
        {
            out.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
        }
        Ok(out)
    }
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

/// Copies headers minus hop-by-hop ones (and those named in `Connection`) and any
/// client-sent identity headers.
fn forwardable(src: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = src
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    let mut out = HeaderMap::with_capacity(src.len());
    for (name, value) in src {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n)
            || named.iter().any(|x| x == n)
            || n.starts_with("x-miauflix-")
            || n.starts_with("remote-")
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` + `Upgrade`).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
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
