//! `/healthz` and `/readyz`.

use std::sync::Arc;

use poem_openapi::payload::Json;
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
    /// What the main listener serves: `self-signed`, `acme`, `manual` or `off`.
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

#[OpenApi(tag = "ApiTags::System")]
impl SystemApi {
    /// Liveness: the process is up.
    #[oai(path = "/healthz", method = "get")]
    async fn healthz(&self) -> Json<Health> {
        Json(Health { status: "ok".into(), version: env!("CARGO_PKG_VERSION").into() })
    }

    /// Readiness: the store answers.
    #[oai(path = "/readyz", method = "get")]
    async fn readyz(&self) -> ReadyResponse {
        let store = self.state.store.ping();
        let body = Readiness {
            status: if store { "ready" } else { "not-ready" }.into(),
            store,
            tls: self.state.tls_source.clone(),
            uptime_secs: self.state.started.elapsed().as_secs(),
        };
        if store { ReadyResponse::Ready(Json(body)) } else { ReadyResponse::NotReady(Json(body)) }
    }
}
