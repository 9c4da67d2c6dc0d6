//! `/api/users/*`: user administration (admin only).

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use zeroize::Zeroizing;

use super::ApiTags;
use super::auth::{CreateUserRequest, Created, create_user};
use super::dto::{AdminUserDto, MessageDto, RevokedDto, RoleDto, SessionInfoDto};
use crate::auth::UserPatch;
use crate::auth::{AuthError, Role};
use crate::http::AppState;
use crate::http::context::client_info;
use crate::http::credentials::{Auth, fail};

pub struct UsersApi {
    pub state: Arc<AppState>,
}

/// Fields to change; absent fields stay.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct UpdateUserRequest {
    #[oai(validator(min_length = 1, max_length = 100))]
    pub display_name: Option<String>,
    pub role: Option<RoleDto>,
    pub disabled: Option<bool>,
}

/// A new password set by an admin.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct ResetPasswordRequest {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub new_password: String,
}

fn user_id(id: &str) -> poem::Result<&str> {
    // Ids are 32 hex characters; anything else cannot exist.
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) { Ok(id) } else { Err(fail(AuthError::NotFound)) }
}

#[OpenApi(tag = "ApiTags::Users")]
impl UsersApi {
    /// Every user.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users", method = "get")]
    async fn list(&self, auth: Auth) -> poem::Result<Json<Vec<AdminUserDto>>> {
        auth.require(Role::Admin)?;
        let users = self.state.auth.list_users().map_err(fail)?;
        Ok(Json(users.iter().map(AdminUserDto::from).collect()))
    }

    /// Create a user.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users", method = "post")]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: Json<CreateUserRequest>,
    ) -> poem::Result<Created<AdminUserDto>> {
        Ok(Created::Created(Json(create_user(&self.state, req, &auth, body.0).await?)))
    }

    /// One user.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users/:id", method = "get")]
    async fn get(&self, auth: Auth, id: Path<String>) -> poem::Result<Json<AdminUserDto>> {
        auth.require(Role::Admin)?;
        let user = self.state.auth.get_user(user_id(&id.0)?).map_err(fail)?;
        Ok(Json(AdminUserDto::from(&user)))
    }

    /// Change display name, role or disabled; effective on the user's next request.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users/:id", method = "patch")]
    async fn update(
        &self,
        req: &Request,
        auth: Auth,
        id: Path<String>,
        body: Json<UpdateUserRequest>,
    ) -> poem::Result<Json<AdminUserDto>> {
        let actor = auth.require(Role::Admin)?;
        let b = body.0;
        let patch = UserPatch { display_name: b.display_name, role: b.role.map(Role::from), disabled: b.disabled };
        let user = self.state.auth.update_user(actor, user_id(&id.0)?, patch, &client_info(req)).await.map_err(fail)?;
        Ok(Json(AdminUserDto::from(&user)))
    }

    /// Delete a user and their sessions.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users/:id", method = "delete")]
    async fn delete(&self, req: &Request, auth: Auth, id: Path<String>) -> poem::Result<Json<MessageDto>> {
        let actor = auth.require(Role::Admin)?;
        self.state.auth.delete_user(actor, user_id(&id.0)?, &client_info(req)).await.map_err(fail)?;
        Ok(Json(MessageDto { message: "User deleted".into() }))
    }

    /// Set a new password for a user; all their sessions are revoked.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users/:id/reset-password", method = "post")]
    async fn reset_password(
        &self,
        req: &Request,
        auth: Auth,
        id: Path<String>,
        body: Json<ResetPasswordRequest>,
    ) -> poem::Result<Json<RevokedDto>> {
        let actor = auth.require(Role::Admin)?;
        let n = self
            .state
            .auth
            .reset_password(actor, user_id(&id.0)?, Zeroizing::new(body.0.new_password), &client_info(req))
            .await
            .map_err(fail)?;
        Ok(Json(RevokedDto {
            message: format!("Password reset; {n} session(s) were signed out."),
            revoked_sessions: n as u32,
        }))
    }

    /// Lift a sign-in lockout on a user's account.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users/:id/unlock", method = "post")]
    async fn unlock(&self, req: &Request, auth: Auth, id: Path<String>) -> poem::Result<Json<MessageDto>> {
        let actor = auth.require(Role::Admin)?;
        let was = self.state.auth.unlock_user(actor, user_id(&id.0)?, &client_info(req)).await.map_err(fail)?;
        Ok(Json(MessageDto { message: if was { "Account unlocked".into() } else { "Account was not locked".into() } }))
    }

    /// A user's live sessions.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users/:id/sessions", method = "get")]
    async fn sessions(&self, auth: Auth, id: Path<String>) -> poem::Result<Json<Vec<SessionInfoDto>>> {
        let actor = auth.require(Role::Admin)?;
        let uid = user_id(&id.0)?;
        self.state.auth.get_user(uid).map_err(fail)?;
        let list = self.state.auth.list_sessions(uid).map_err(fail)?;
        Ok(Json(list.iter().map(|s| SessionInfoDto::from_record(s, Some(&actor.session_id))).collect()))
    }

    /// Revoke every session of a user.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/users/:id/sessions", method = "delete")]
    async fn revoke_sessions(&self, req: &Request, auth: Auth, id: Path<String>) -> poem::Result<Json<RevokedDto>> {
        let actor = auth.require(Role::Admin)?;
        let uid = user_id(&id.0)?;
        self.state.auth.get_user(uid).map_err(fail)?;
        let n =
            self.state.auth.revoke_user_sessions(uid, None, &actor.user_id, &client_info(req)).await.map_err(fail)?;
        Ok(Json(RevokedDto { message: format!("{n} session(s) were signed out."), revoked_sessions: n as u32 }))
    }
}
