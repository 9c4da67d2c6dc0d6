//! `GET /api/tls` (admin): what the main listener serves and how renewal goes.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use super::audit::rfc3339_ms;
use crate::auth::Role;
use crate::http::AppState;
use crate::http::credentials::Auth;

pub struct TlsApi {
    pub state: Arc<AppState>,
}

/// The served certificate and its renewal state.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct TlsInfoDto {
    /// Configured mode: `self-signed`, `acme`, `manual` or `off`.
    pub mode: String,
    /// What is served now; `acme-pending` means the self-signed stand-in until the first
    /// ACME certificate arrives.
    pub source: String,
    pub names: Vec<String>,
    #[oai(nullable)]
    pub issuer: Option<String>,
    #[oai(nullable)]
    pub serial: Option<String>,
    #[oai(nullable)]
    pub not_before: Option<String>,
    #[oai(nullable)]
    pub not_after: Option<String>,
    /// Seconds until the certificate expires.
    #[oai(nullable)]
    pub expires_in_secs: Option<i64>,
    /// SHA-256 of the certificate, colon-separated hex.
    #[oai(nullable)]
    pub fingerprint_sha256: Option<String>,
    /// When an ACME renewal is due.
    #[oai(nullable)]
    pub renew_at: Option<String>,
    /// Last issuance, renewal or reload attempt, and its error if it failed.
    #[oai(nullable)]
    pub last_attempt: Option<String>,
    #[oai(nullable)]
    pub last_error: Option<String>,
}

#[OpenApi(tag = "ApiTags::System")]
impl TlsApi {
    /// TLS mode, certificate names, issuer, validity, fingerprint and renewal status.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/tls", method = "get")]
    async fn tls(&self, auth: Auth) -> poem::Result<Json<TlsInfoDto>> {
        auth.require(Role::Admin)?;
        let info = self.state.tls.get();
        let secs = |t: i64| rfc3339_ms(t * 1000);
        let cert = info.cert.as_ref();
        Ok(Json(TlsInfoDto {
            mode: info.mode.clone(),
            source: info.source.clone(),
            names: cert.map(|c| c.names.clone()).unwrap_or_default(),
            issuer: cert.map(|c| c.issuer.clone()),
            serial: cert.map(|c| c.serial.clone()),
            not_before: cert.map(|c| secs(c.not_before)),
            not_after: cert.map(|c| secs(c.not_after)),
            expires_in_secs: self.state.tls.expires_in(),
            fingerprint_sha256: cert.map(|c| c.fingerprint.clone()),
            renew_at: info.renew_at.map(secs),
            last_attempt: info.last_attempt.map(secs),
            last_error: info.last_error.clone(),
        }))
    }
}
