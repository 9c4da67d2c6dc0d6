//! `/api/audit*` (admin) and `/api/me/events` (the caller's own history).

use std::collections::BTreeMap;
use std::sync::Arc;

use poem::Body;
use poem::http::StatusCode;
use poem_openapi::param::Query;
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use crate::audit::EventKind;
pub use crate::audit::rfc3339_ms;
use crate::audit::{AuditFilter, AuditRecord};
use crate::auth::Role;
use crate::http::AppState;
use crate::http::credentials::Auth;
use crate::http::problem::ApiError;

pub struct AuditApi {
    pub state: Arc<AppState>,
}

/// One audit record.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct AuditEventDto {
    /// Position in the hash chain.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// Event type, e.g. `login_failed`.
    #[oai(rename = "type")]
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// User id of who acted, or `anonymous`.
    pub actor: String,
    /// What was acted on (user id, email, session or route).
    #[oai(nullable)]
    pub target: Option<String>,
    pub ip: String,
    /// Truncated, with control characters escaped.
    pub user_agent: String,
    pub request_id: String,
    pub detail: BTreeMap<String, String>,
}

impl From<AuditRecord> for AuditEventDto {
    fn from(r: AuditRecord) -> Self {
        AuditEventDto {
            seq: r.seq,
            time: rfc3339_ms(r.ts_ms),
            kind: r.kind,
            severity: r.severity,
            actor: r.actor.unwrap_or_else(|| "anonymous".into()),
            target: r.target,
            ip: r.ip,
            user_agent: r.user_agent,
            request_id: r.request_id,
            detail: r.detail,
        }
    }
}

/// A page of records, newest first.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct AuditPageDto {
    pub events: Vec<AuditEventDto>,
    /// Pass as `cursor` to get older records; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// The result of recomputing the hash chain.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct AuditVerifyDto {
    /// Whether every record from `first` to `last` verifies.
    pub ok: bool,
    pub first: u64,
    pub last: u64,
    pub checked: u64,
    /// The first record that fails.
    #[oai(nullable)]
    pub first_bad: Option<u64>,
    #[oai(nullable)]
    pub reason: Option<String>,
}

impl From<crate::audit::VerifyReport> for AuditVerifyDto {
    fn from(r: crate::audit::VerifyReport) -> Self {
        AuditVerifyDto {
            ok: r.ok,
            first: r.first,
            last: r.last,
            checked: r.checked,
            first_bad: r.first_bad,
            reason: r.reason,
        }
    }
}

#[derive(ApiResponse)]
pub enum ExportResponse {
    /// JSON Lines, one record per line, oldest first.
    #[oai(status = 200, content_type = "application/jsonl")]
    Ok(Binary<Body>),
}

fn bad(msg: String) -> poem::Error {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid-input", "Invalid input", msg).into()
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
fn parse_time(name: &str, v: Option<String>) -> poem::Result<Option<i64>> {
    v.map(|v| {
        crate::audit::parse_rfc3339_ms(&v)
            .ok_or_else(|| bad(format!("`{name}` must be an RFC 3339 time such as 2026-11-29T08:00:00Z.")))
    })
    .transpose()
}

fn parse_cursor(v: Option<String>) -> poem::Result<Option<u64>> {
    match v {
        None => Ok(None),
        Some(c) => c.trim().parse().map(Some).map_err(|_| bad("`cursor` is not one this API returned.".into())),
    }
}

fn page_dto(page: crate::audit::AuditPage) -> AuditPageDto {
    AuditPageDto {
        events: page.records.into_iter().map(AuditEventDto::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }
}

fn store_failed(e: crate::store::StoreError) -> poem::Error {
    tracing::error!(error = %e, "audit read failed");
    ApiError::internal().into()
}

#[OpenApi(tag = "ApiTags::Audit")]
impl AuditApi {
    /// Audit records, newest first, filtered and paginated.
    ///
    /// Minimum role: admin.
    #[allow(clippy::too_many_arguments)]
    #[oai(path = "/api/audit", method = "get")]
    async fn list(
        &self,
        auth: Auth,
        /// Event type, e.g. `login_failed`.
        #[oai(name = "type")]
        kind: Query<Option<String>>,
        /// `info`, `warning` or `critical`.
        severity: Query<Option<String>>,
        /// User id or email: matches actor, target or the affected account.
        user: Query<Option<String>>,
        /// Client IP address.
        ip: Query<Option<String>>,
        /// RFC 3339; records at or after.
        since: Query<Option<String>>,
        /// RFC 3339; records at or before.
        until: Query<Option<String>>,
        /// Page size, 1–1000 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// `nextCursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> poem::Result<Json<AuditPageDto>> {
        auth.require(Role::Admin)?;
        if let Some(k) = kind.0.as_deref()
            && EventKind::parse(k).is_none()
        {
            return Err(bad(format!("`type` {k:?} is not an event type.")));
        }
        if let Some(s) = severity.0.as_deref()
            && !crate::audit::valid_severity(s)
        {
            return Err(bad("`severity` must be info, warning or critical.".into()));
        }
        let filter = AuditFilter {
            kind: kind.0,
            severity: severity.0,
            user: user.0.map(|u| u.trim().to_lowercase()).filter(|u| !u.is_empty()),
            ip: ip.0.map(|i| i.trim().to_string()).filter(|i| !i.is_empty()),
            since_ms: parse_time("since", since.0)?,
            until_ms: parse_time("until", until.0)?,
        };
        let page = self
            .state
            .auth
            .audit()
            .query(&filter, limit.0.unwrap_or(50) as usize, parse_cursor(cursor.0)?)
            .map_err(store_failed)?;
        Ok(Json(page_dto(page)))
    }

    /// Recomputes the hash chain and reports the first bad record, if any.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/audit/verify", method = "get")]
    async fn verify(&self, auth: Auth) -> poem::Result<Json<AuditVerifyDto>> {
        auth.require(Role::Admin)?;
        let audit = self.state.auth.audit().clone();
        let r = tokio::task::spawn_blocking(move || audit.verify())
            .await
            .map_err(|_| poem::Error::from(ApiError::internal()))?
            .map_err(store_failed)?;
        Ok(Json(AuditVerifyDto::from(r)))
    }

    /// Every record in a time range as JSON Lines, streamed oldest first.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/audit/export", method = "get")]
    async fn export(
        &self,
        auth: Auth,
        /// RFC 3339; records at or after.
        since: Query<Option<String>>,
        /// RFC 3339; records at or before.
        until: Query<Option<String>>,
    ) -> poem::Result<ExportResponse> {
        auth.require(Role::Admin)?;
        let since = parse_time("since", since.0)?;
        let until = parse_time("until", until.0)?;
        let audit = self.state.auth.audit().clone();
        Ok(ExportResponse::Ok(Binary(Body::from_bytes_stream(export_stream(audit, since, until)))))
    }

    /// The caller's own sign-ins, sign-outs and account events, newest first.
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/me/events", method = "get", tag = "ApiTags::Account")]
    async fn my_events(
        &self,
        auth: Auth,
        /// Page size, 1–200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<u32>>,
        /// `nextCursor` of the previous page.
        cursor: Query<Option<String>>,
    ) -> poem::Result<Json<AuditPageDto>> {
        let me = auth.principal();
        let filter = AuditFilter { user: Some(me.user_id.clone()), ..Default::default() };
        let page = self
            .state
            .auth
            .audit()
            .query(&filter, limit.0.unwrap_or(50) as usize, parse_cursor(cursor.0)?)
            .map_err(store_failed)?;
        Ok(Json(page_dto(page)))
    }
}

/// Records as JSON Lines, read in chunks so memory stays flat however long the log is.
pub fn export_stream(
    audit: crate::audit::Audit,
    since: Option<i64>,
    until: Option<i64>,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures_util::stream::unfold(Some(0u64), move |after| {
        let audit = audit.clone();
        async move {
            match audit.export_chunk(since, until, after?) {
                Ok(Some((bytes, _, last))) => Some((Ok(bytes::Bytes::from(bytes)), Some(last))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        }
    })
}
