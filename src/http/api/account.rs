//! `/api/me/*`: the caller's own account and sessions.

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use zeroize::Zeroizing;

use super::ApiTags;
use super::dto::{MessageDto, RevokedDto, SessionInfoDto, UserDto};
use crate::auth::{AuthError, Role};
use crate::http::AppState;
use crate::http::context::client_info;
use crate::http::credentials::{Auth, fail};

pub struct AccountApi {
    pub state: Arc<AppState>,
}

/// Change one's own password.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct ChangePasswordRequest {
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub current_password: String,
    #[oai(validator(min_length = 1, max_length = 256))]
    pub new_password: String,
}

#[OpenApi(tag = "ApiTags::Account")]
impl AccountApi {
    /// The caller.
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/me", method = "get")]
    async fn me(&self, auth: Auth) -> poem::Result<Json<UserDto>> {
        let p = auth.require(Role::Guest)?;
        let user = self.state.auth.get_user(&p.user_id).map_err(fail)?;
        Ok(Json(UserDto::from(&user)))
    }

    /// Change the caller's password; every other session of the caller is revoked.
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/me/password", method = "post")]
    async fn change_password(
        &self,
        req: &Request,
        auth: Auth,
        body: Json<ChangePasswordRequest>,
    ) -> poem::Result<Json<RevokedDto>> {
        let p = auth.require(Role::Guest)?;
        let b = body.0;
        let n = self
            .state
            .auth
            .change_password(p, Zeroizing::new(b.current_password), Zeroizing::new(b.new_password), &client_info(req))
            .await
            .map_err(fail)?;
        Ok(Json(RevokedDto {
            message: format!("Password changed; {n} other session(s) were signed out."),
            revoked_sessions: n as u32,
        }))
    }

    /// The caller's live sessions.
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/me/sessions", method = "get")]
    async fn sessions(&self, auth: Auth) -> poem::Result<Json<Vec<SessionInfoDto>>> {
        let p = auth.require(Role::Guest)?;
        let list = self.state.auth.list_sessions(&p.user_id).map_err(fail)?;
        Ok(Json(list.iter().map(|s| SessionInfoDto::from_record(s, Some(&p.session_id))).collect()))
    }

    /// Revoke one of the caller's sessions.
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/me/sessions/:id", method = "delete")]
    async fn revoke_session(&self, req: &Request, auth: Auth, id: Path<String>) -> poem::Result<Json<MessageDto>> {
        let p = auth.require(Role::Guest)?;
        let found = self
            .state
            .auth
            .revoke_session(&id.0, Some(&p.user_id), &p.user_id, &client_info(req))
            .await
            .map_err(fail)?;
        if !found {
            return Err(fail(AuthError::NotFound));
        }
        Ok(Json(MessageDto { message: "Session revoked".into() }))
    }

    /// Revoke every session of the caller, this one included.
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/me/logout-all", method = "post")]
    async fn logout_all(&self, req: &Request, auth: Auth) -> poem::Result<Json<RevokedDto>> {
        let p = auth.require(Role::Guest)?;
        let n = self
            .state
            .auth
            .revoke_user_sessions(&p.user_id, None, &p.user_id, &client_info(req))
            .await
            .map_err(fail)?;
        Ok(Json(RevokedDto { message: format!("{n} session(s) were signed out."), revoked_sessions: n as u32 }))
    }
}
