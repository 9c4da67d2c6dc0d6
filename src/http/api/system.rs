//! `/healthz`, `/readyz`, `/metrics` and `/api/system/status`.

use std::sync::Arc;

use poem::Request;
use poem::http::StatusCode;
use poem_openapi::payload::{Json, PlainText};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::http::AppState;

pub struct SystemApi {
    pub state: Arc<AppState>,
}

/// Liveness answer.
#[derive(Object)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
    /// Gate version.
    pub version: String,
}

/// Readiness answer with the state of each dependency.
#[derive(Object)]
pub struct Readiness {
    /// `ready` or `not-ready`.
    pub status: String,
    /// Whether the data file answers reads.
    pub store: bool,
    /// Whether a write commits within two seconds (the writer is not stalled).
    pub store_writable: bool,
    /// What the main listener serves: `self-signed`, `acme`, `acme-pending` (self-signed
    /// until the first ACME certificate arrives), `manual` or `off`.
    pub tls: String,
    /// Seconds since the gate started.
    pub uptime_secs: u64,
}

#[derive(ApiResponse)]
pub enum ReadyResponse {
    /// Every dependency answers.
    #[oai(status = 200)]
    Ready(Json<Readiness>),
    /// A dependency does not answer.
    #[oai(status = 503)]
    NotReady(Json<Readiness>),
}

/// Audit chain state for the dashboard.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct ChainStatus {
    pub length: u64,
    pub first: u64,
    pub last: u64,
    /// Result of the last full verification (at startup or via `/api/audit/verify`).
    #[oai(nullable)]
    pub last_verified_ok: Option<bool>,
    #[oai(nullable)]
    pub last_verified_at: Option<String>,
    #[oai(nullable)]
    pub first_bad: Option<u64>,
}

/// One minute of the dashboard charts.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct MinutePoint {
    pub minutes_ago: u64,
    pub requests: u64,
    pub errors: u64,
    pub logins_succeeded: u64,
    pub logins_failed: u64,
}

/// A proxied route, as configured.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct RouteView {
    pub prefix: String,
    /// The upstream URL, or `file://` and the directory of a static route.
    pub upstream: String,
    pub min_role: String,
    pub rate_class: String,
    pub requires_vpn: bool,
    pub stream_keys: bool,
}

/// One rate-limit class.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct LimitView {
    pub class: String,
    pub per_minute: u32,
    pub burst: u32,
}

/// Routes, limits and origins in force (read-only).
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct EdgeConfigView {
    pub routes: Vec<RouteView>,
    pub rate_limits: Vec<LimitView>,
    pub cors_origins: Vec<String>,
    pub public_origins: Vec<String>,
    pub trusted_proxies: Vec<String>,
    pub lockout_max_failures: u32,
    pub lockout_window_secs: i64,
}

/// One summary for the dashboard.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct SystemStatus {
    pub version: String,
    pub uptime_secs: u64,
    /// What the main listener serves: `self-signed`, `acme`, `manual` or `off`.
    pub tls: String,
    /// VPN supervisor state.
    pub vpn: String,
    pub logins_succeeded_1h: u64,
    pub logins_failed_1h: u64,
    pub lockouts_1h: u64,
    /// Share of sign-ins that succeeded in the last hour (absent without any).
    #[oai(nullable)]
    pub login_success_rate_1h: Option<f64>,
    pub requests_5m: u64,
    pub requests_per_sec_5m: f64,
    /// Share of 5xx answers in the last five minutes.
    #[oai(nullable)]
    pub error_rate_5m: Option<f64>,
    /// 95th percentile time to the response head, bucket upper bound, last five minutes.
    #[oai(nullable)]
    pub p95_latency_ms_5m: Option<f64>,
    pub active_sessions: u64,
    /// Size of the data file in bytes.
    pub store_bytes: u64,
    #[oai(nullable)]
    pub resident_memory_bytes: Option<u64>,
    pub audit_chain: ChainStatus,
    /// Per-minute requests, errors and sign-ins over the last hour, oldest first.
    pub series: Vec<MinutePoint>,
}

#[derive(ApiResponse)]
pub enum MetricsResponse {
    /// Prometheus text exposition format.
    #[oai(status = 200, content_type = "text/plain; version=0.0.4; charset=utf-8")]
    Ok(PlainText<String>),
}

/// Whether `req` carries the configured scraper token.
fn has_metrics_token(state: &AppState, req: &Request) -> bool {
    let Some(expected) = state.metrics_token.as_ref() else { return false };
    req.headers()
        .get(poem::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| crate::crypto::constant_time_eq(t.trim().as_bytes(), expected.as_bytes()))
}

#[OpenApi(tag = "ApiTags::System")]
impl SystemApi {
    /// Liveness: the process is up.
    ///
    /// Minimum role: public.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
    }

    /// Readiness: the store answers.
    ///
    /// Minimum role: public.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let store = self.state.store.ping();
        let store_writable =
            tokio::time::timeout(std::time::Duration::from_secs(2), self.state.store.write(|_| Ok(())))
                .await
                .is_ok_and(|r| r.is_ok());
        let ready = store && store_writable;
        let body = Readiness {
            status: if ready { "ready" } else { "not-ready" }.into(),
            store,
            store_writable,
            tls: self.state.tls.get().source,
            uptime_secs: self.state.started.elapsed().as_secs(),
        };
        if ready { ReadyResponse::Ready(Json(body)) } else { ReadyResponse::NotReady(Json(body)) }
    }

    /// Prometheus metrics: for admins, or for a scraper presenting the token from
    /// `metrics.token_file` as a bearer token. Never public.
    ///
    /// Minimum role: admin.
    #[oai(path = "/metrics", method = "get")]
    async fn metrics(&self, req: &Request) -> poem::Result<MetricsResponse> {
        if !has_metrics_token(&self.state, req) {
            let principal =
                match crate::http::credentials::authenticate_request(&self.state, req.headers(), req.uri(), None) {
                    Ok(Some(a)) => a.0,
                    Ok(None) => return Err(crate::http::credentials::fail(crate::auth::AuthError::Unauthorized)),
                    Err(e) => return Err(crate::http::credentials::fail(e)),
                };
            principal.require(crate::auth::Role::Admin).map_err(crate::http::credentials::fail)?;
        }
        Ok(MetricsResponse::Ok(PlainText(crate::monitor::render(
            self.state.auth.active_sessions(),
            self.state.tls.expires_in(),
        ))))
    }

    /// Dashboard summary: uptime, sign-in and request figures, store and audit chain.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/system/status", method = "get")]
    async fn status(&self, auth: crate::http::credentials::Auth) -> poem::Result<Json<SystemStatus>> {
        auth.require(crate::auth::Role::Admin)?;
        let audit = self.state.auth.audit();
        let m = audit.monitor().summary();
        let info = audit.info().map_err(|e| {
            tracing::error!(error = %e, "reading the audit chain failed");
            poem::Error::from(crate::http::problem::ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "The audit log could not be read.",
            ))
        })?;
        let last = audit.last_verify();
        Ok(Json(SystemStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.state.started.elapsed().as_secs(),
            tls: self.state.tls.get().source,
            vpn: self.state.vpn.state().into(),
            logins_succeeded_1h: m.logins_succeeded_1h,
            logins_failed_1h: m.logins_failed_1h,
            lockouts_1h: m.lockouts_1h,
            login_success_rate_1h: m.login_success_rate_1h,
            requests_5m: m.requests_5m,
            requests_per_sec_5m: m.requests_per_sec_5m,
            error_rate_5m: m.error_rate_5m,
            p95_latency_ms_5m: m.p95_latency_ms_5m,
            active_sessions: self.state.auth.active_sessions() as u64,
            store_bytes: std::fs::metadata(self.state.store.path()).map(|m| m.len()).unwrap_or(0),
            resident_memory_bytes: crate::monitor::resident_memory_bytes(),
            audit_chain: ChainStatus {
                length: info.length,
                first: info.first,
                last: info.last,
                last_verified_ok: last.as_ref().map(|(_, r)| r.ok),
                last_verified_at: last.as_ref().map(|(t, _)| super::audit::rfc3339_ms(*t)),
                first_bad: last.as_ref().and_then(|(_, r)| r.first_bad),
            },
            series: audit
                .monitor()
                .series()
                .into_iter()
                .map(|(minutes_ago, requests, errors, logins_succeeded, logins_failed)| MinutePoint {
                    minutes_ago,
                    requests,
                    errors,
                    logins_succeeded,
                    logins_failed,
                })
                .collect(),
        }))
    }

    /// Routes, rate limits, CORS origins and lockout settings in force (admin, read-only).
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/system/config", method = "get")]
    async fn edge_config(&self, auth: crate::http::credentials::Auth) -> poem::Result<Json<EdgeConfigView>> {
        auth.require(crate::auth::Role::Admin)?;
        let c = &self.state.config;
        let role = |r: crate::config::RouteRole| {
            match r {
                crate::config::RouteRole::Public => "public",
                crate::config::RouteRole::Guest => "guest",
                crate::config::RouteRole::User => "user",
                crate::config::RouteRole::Admin => "admin",
            }
            .to_string()
        };
        let rl = &c.rate_limits;
        let limit = |class: &str, q: &crate::ratelimit::QuotaConfig| LimitView {
            class: class.into(),
            per_minute: q.per_minute,
            burst: q.burst,
        };
        Ok(Json(EdgeConfigView {
            routes: c
                .routes
                .iter()
                .map(|r| RouteView {
                    prefix: r.prefix.clone(),
                    upstream: match &r.static_dir {
                        Some(dir) => format!("file://{}", dir.display()),
                        None => r.upstream.clone(),
                    },
                    min_role: role(r.min_role),
                    rate_class: r.rate_class.as_str().into(),
                    requires_vpn: r.requires_vpn,
                    stream_keys: r.stream_keys,
                })
                .collect(),
            rate_limits: vec![
                limit("auth", &rl.auth),
                limit("api", &rl.api),
                limit("stream", &rl.stream),
                limit("global", &rl.global),
            ],
            cors_origins: c.http.cors_origins.clone(),
            public_origins: c.http.public_origins.clone(),
            trusted_proxies: c.http.trusted_proxies.iter().map(|n| n.to_string()).collect(),
            lockout_max_failures: c.lockout.max_failures,
            lockout_window_secs: c.lockout.window_secs,
        }))
    }
}
