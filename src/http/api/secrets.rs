//! `/api/secrets` (admin): the named values the gate sends to upstreams (a route's
//! `upstream_headers`). Write-only: an answer names a value, when it was set and the data key
//! sealing it, never the value. Error texts avoid the credential words the Miauflix client
//! treats as a leak, so they speak of "values".

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use zeroize::Zeroizing;

use super::ApiTags;
use crate::auth::Role;
use crate::http::AppState;
use crate::http::context::client_info;
use crate::http::credentials::Auth;
use crate::http::problem::ApiError;
use crate::secrets::{self, SecretsError};

pub struct SecretsApi {
    pub state: Arc<AppState>,
}

/// A named value, without the value.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct SecretDto {
    pub name: String,
    /// Unix seconds of the last change.
    pub updated_at: i64,
    /// The data key the value is sealed with.
    pub key_id: u32,
}

/// Every named value.
#[derive(Object)]
pub struct SecretsDto {
    pub secrets: Vec<SecretDto>,
}

/// The value to store.
#[derive(Object)]
pub struct SecretValueBody {
    /// 1 to 4096 visible ASCII characters (inner spaces allowed); never shown again.
    #[oai(write_only)]
    pub value: String,
}

fn fail(e: SecretsError) -> poem::Error {
    match e {
        SecretsError::BadName => {
            ApiError::bad_request("The name must be 1 to 64 characters of a-z, 0-9, '_', '-' and '.'.").into()
        }
        SecretsError::BadValue => ApiError::bad_request(
            "The value must be 1 to 4096 visible ASCII characters or inner spaces (no line breaks or controls).",
        )
        .into(),
        other => {
            tracing::error!(error = %other, "named values");
            ApiError::internal().into()
        }
    }
}

fn dto(s: secrets::SecretInfo) -> SecretDto {
    SecretDto { name: s.name, updated_at: s.updated_at, key_id: s.key_id }
}

#[OpenApi(tag = "ApiTags::Secrets")]
impl SecretsApi {
    /// Every named value the gate holds for its routes: name, last change and data key, never
    /// the value.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/secrets", method = "get")]
    async fn list(&self, auth: Auth) -> poem::Result<Json<SecretsDto>> {
        auth.require(Role::Admin)?;
        let list = self.state.secrets.list().map_err(fail)?;
        Ok(Json(SecretsDto { secrets: list.into_iter().map(dto).collect() }))
    }

    /// Stores a named value, sealed by the keyring, replacing an earlier one; routes whose
    /// `upstream_headers` name it send it from the next request on.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/secrets/:name", method = "put")]
    async fn set(
        &self,
        req: &Request,
        auth: Auth,
        name: Path<String>,
        body: Json<SecretValueBody>,
    ) -> poem::Result<Json<SecretDto>> {
        let actor = auth.require(Role::Admin)?;
        let value = Zeroizing::new(body.0.value);
        let info = self.state.secrets.set(&name.0, value.as_bytes(), &actor.user_id, &client_info(req)).await;
        Ok(Json(dto(info.map_err(fail)?)))
    }

    /// Deletes a named value; routes that name it answer 503 until it is set again.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/secrets/:name", method = "delete")]
    async fn delete(
        &self,
        req: &Request,
        auth: Auth,
        name: Path<String>,
    ) -> poem::Result<Json<super::dto::MessageDto>> {
        let actor = auth.require(Role::Admin)?;
        if !self.state.secrets.delete(&name.0, &actor.user_id, &client_info(req)).await.map_err(fail)? {
            return Err(ApiError::not_found().into());
        }
        Ok(Json(super::dto::MessageDto { message: "Deleted".into() }))
    }
}
