//! `/api/auth/*`: setup, browser sessions (cookies), API tokens.

use std::sync::Arc;

use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::{Json, Response};
use poem_openapi::{ApiResponse, Object, OpenApi};
use zeroize::Zeroizing;

use super::ApiTags;
use super::dto::{AdminUserDto, MessageDto, UserDto};
use crate::auth::is_session_id;
use crate::auth::{AuthError, IssuedSession, Role, SessionKind};
use crate::http::AppState;
use crate::http::context::client_info;
use crate::http::credentials::{
    ACCESS_COOKIE, Auth, REFRESH_COOKIE, REFRESH_COOKIE_PATH, cookie, cookies, fail, set_cookie,
};

pub struct AuthApi {
    pub state: Arc<AppState>,
}

/// Whether setup is needed.
#[derive(Object)]
pub struct SetupStatus {
    /// True while no admin exists.
    pub required: bool,
}

/// Create the first admin.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct SetupRequest {
    #[oai(validator(min_length = 3, max_length = 254, pattern = r"^[^@]+@[^@]+$"))]
    pub email: String,
    #[oai(validator(min_length = 1, max_length = 256))]
    pub password: String,
    /// The token from `<data>/setup-token`.
    #[oai(validator(min_length = 1, max_length = 128))]
    pub setup_token: String,
}

/// Email and password.
#[derive(Object)]
pub struct LoginRequest {
    #[oai(validator(min_length = 1, max_length = 254))]
    pub email: String,
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub password: String,
}

/// A browser session was opened; its tokens are in cookies.
#[derive(Object)]
pub struct LoginResponse {
    /// Session id: send it as `X-Session-Id`; the cookies are named after it.
    pub session: String,
    pub user: UserDto,
}

/// The user of a refreshed session.
#[derive(Object)]
pub struct RefreshResponse {
    pub user: UserDto,
}

/// The current session.
#[derive(Object)]
pub struct SessionResponse {
    pub id: String,
    pub user: UserDto,
}

/// A session this browser holds a valid refresh cookie for (an entry of the bare array the
/// Miauflix client reads from `GET /api/auth/sessions`).
#[derive(Object)]
pub struct HeldSession {
    /// Session id, as in the cookie names.
    pub session: String,
    pub user: UserDto,
}

/// Tokens for an API client.
#[derive(Object)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Access-token lifetime in seconds.
    pub expires_in: i64,
}

/// A refresh token.
#[derive(Object)]
pub struct RefreshTokenRequest {
    #[oai(validator(min_length = 1, max_length = 256))]
    pub refresh_token: String,
}

/// A new user.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct CreateUserRequest {
    #[oai(validator(min_length = 3, max_length = 254, pattern = r"^[^@]+@[^@]+$"))]
    pub email: String,
    #[oai(validator(min_length = 1, max_length = 256))]
    pub password: String,
    #[oai(validator(min_length = 1, max_length = 100))]
    pub display_name: Option<String>,
    /// Defaults to `user`.
    pub role: Option<super::dto::RoleDto>,
}

#[derive(ApiResponse)]
pub enum Created<T: poem_openapi::types::ToJSON + Send + Sync> {
    /// Created.
    #[oai(status = 201)]
    Created(Json<T>),
}

impl AuthApi {
    fn secure(&self) -> bool {
        self.state.config.tls_enabled()
    }

    fn with_session_cookies<T>(&self, resp: Response<T>, issued: &IssuedSession) -> Response<T> {
        let sid = &issued.session_id;
        resp.header(
            "Set-Cookie",
            set_cookie(&format!("{ACCESS_COOKIE}{sid}"), &issued.access_token, "/", issued.expires_in, self.secure()),
        )
        .header(
            "Set-Cookie",
            set_cookie(
                &format!("{REFRESH_COOKIE}{sid}"),
                &issued.refresh_token,
                REFRESH_COOKIE_PATH,
                issued.refresh_expires_in,
                self.secure(),
            ),
        )
        .header("Cache-Control", "no-store")
    }
}

impl AuthApi {
    /// Whether the request proves it holds session `sid`: a bearer token of that session, the
    /// session's access cookie, or its refresh cookie. Knowing the id is not enough.
    fn holds_session(&self, req: &Request, sid: &str) -> bool {
        let auth = &self.state.auth;
        let headers = req.headers();
        let bearer = headers
            .get(poem::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
        bearer.is_some_and(|t| auth.authenticate(t.trim(), Some(sid)).is_ok())
            || cookie(headers, &format!("{ACCESS_COOKIE}{sid}"))
                .is_some_and(|t| auth.authenticate(&t, Some(sid)).is_ok())
            || cookie(headers, &format!("{REFRESH_COOKIE}{sid}"))
                .and_then(|t| auth.refresh_token_session(&t))
                .is_some_and(|(found, _)| found == sid)
    }
}

/// Creates a user as an admin (shared by `/api/auth/users` and `/api/users`).
pub async fn create_user(
    state: &AppState,
    req: &Request,
    auth: &Auth,
    body: CreateUserRequest,
) -> poem::Result<AdminUserDto> {
    let actor = auth.require(Role::Admin)?.clone();
    let user = state
        .auth
        .create_user(
            &actor,
            &body.email,
            Zeroizing::new(body.password),
            body.display_name,
            body.role.map(Role::from).unwrap_or(Role::User),
            &client_info(req),
        )
        .await
        .map_err(fail)?;
    Ok(AdminUserDto::from(&user))
}

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Whether the first admin still has to be created.
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/setup", method = "get")]
    async fn setup_status(&self) -> Json<SetupStatus> {
        Json(SetupStatus { required: self.state.auth.setup_required() })
    }

    /// Create the first admin with the one-time setup token. 404 once an admin exists.
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/setup", method = "post")]
    async fn setup(&self, req: &Request, body: Json<SetupRequest>) -> poem::Result<Created<UserDto>> {
        let b = body.0;
        let user = self
            .state
            .auth
            .complete_setup(&b.email, Zeroizing::new(b.password), &b.setup_token, &client_info(req))
            .await
            .map_err(fail)?;
        Ok(Created::Created(Json(UserDto::from(&user))))
    }

    /// Log in and open a browser session (cookies).
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/login", method = "post")]
    async fn login(&self, req: &Request, body: Json<LoginRequest>) -> poem::Result<Response<Json<LoginResponse>>> {
        let b = body.0;
        let issued = self
            .state
            .auth
            .login(&b.email, Zeroizing::new(b.password), SessionKind::Browser, &client_info(req))
            .await
            .map_err(fail)?;
        let body = LoginResponse { session: issued.session_id.clone(), user: UserDto::from(&issued.user) };
        Ok(self.with_session_cookies(Response::new(Json(body)), &issued))
    }

    /// Rotate the session's cookies with its refresh cookie.
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/refresh/:session", method = "post")]
    async fn refresh(&self, req: &Request, session: Path<String>) -> poem::Result<Response<Json<RefreshResponse>>> {
        let sid = session.0;
        if !is_session_id(&sid) {
            return Err(fail(AuthError::Unauthorized));
        }
        let token =
            cookie(req.headers(), &format!("{REFRESH_COOKIE}{sid}")).ok_or_else(|| fail(AuthError::Unauthorized))?;
        let issued = self.state.auth.refresh(&token, Some(&sid), &client_info(req)).await.map_err(refresh_failed)?;
        let body = RefreshResponse { user: UserDto::from(&issued.user) };
        Ok(self.with_session_cookies(Response::new(Json(body)), &issued))
    }

    /// End a session and clear its cookies. Always 200, even for an unknown session; the
    /// session ends only when the request holds it (its refresh or access cookie, or a bearer
    /// token of that session).
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/logout/:session", method = "post")]
    async fn logout(&self, req: &Request, session: Path<String>) -> poem::Result<Response<Json<MessageDto>>> {
        let sid = session.0;
        if is_session_id(&sid) && self.holds_session(req, &sid) {
            self.state.auth.logout(&sid, &client_info(req)).await.map_err(fail)?;
        }
        let mut resp =
            Response::new(Json(MessageDto { message: "Logged out".into() })).header("Cache-Control", "no-store");
        if is_session_id(&sid) {
            resp = resp
                .header("Set-Cookie", set_cookie(&format!("{ACCESS_COOKIE}{sid}"), "", "/", 0, self.secure()))
                .header(
                    "Set-Cookie",
                    set_cookie(&format!("{REFRESH_COOKIE}{sid}"), "", REFRESH_COOKIE_PATH, 0, self.secure()),
                );
        }
        Ok(resp)
    }

    /// The session named by `X-Session-Id` (or the bearer token's session).
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/auth/session", method = "get")]
    async fn session(&self, auth: Auth) -> poem::Result<Json<SessionResponse>> {
        let p = auth.principal();
        let user = self.state.auth.get_user(&p.user_id).map_err(fail)?;
        Ok(Json(SessionResponse { id: p.session_id.clone(), user: UserDto::from(&user) }))
    }

    /// The sessions this browser holds, as a bare array `[{session, user}]`.
    ///
    /// One entry per valid `__miauflix_rt_<session>` cookie of the request (validated, each
    /// session once, at most 10); no cookie is `[]`.
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/sessions", method = "get")]
    async fn sessions(&self, req: &Request) -> Json<Vec<HeldSession>> {
        let mut out: Vec<HeldSession> = Vec::new();
        for (name, value) in cookies(req.headers()) {
            let Some(sid) = name.strip_prefix(REFRESH_COOKIE) else { continue };
            // A cookie sent twice (or twice with different values) still names one session.
            if !is_session_id(sid) || out.iter().any(|h| h.session == sid) {
                continue;
            }
            if let Some((found, user)) = self.state.auth.refresh_token_session(&value)
                && found == sid
            {
                out.push(HeldSession { session: found, user: UserDto::from(&user) });
            }
            if out.len() >= 10 {
                break;
            }
        }
        Json(out)
    }

    /// Log in as an API client: a bearer access token and a refresh token.
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/token", method = "post")]
    async fn token(&self, req: &Request, body: Json<LoginRequest>) -> poem::Result<Response<Json<TokenResponse>>> {
        let b = body.0;
        let issued = self
            .state
            .auth
            .login(&b.email, Zeroizing::new(b.password), SessionKind::Api, &client_info(req))
            .await
            .map_err(fail)?;
        Ok(token_response(issued))
    }

    /// Exchange a refresh token for a new pair; the old refresh token stops working.
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/token/refresh", method = "post")]
    async fn token_refresh(
        &self,
        req: &Request,
        body: Json<RefreshTokenRequest>,
    ) -> poem::Result<Response<Json<TokenResponse>>> {
        let issued =
            self.state.auth.refresh(&body.0.refresh_token, None, &client_info(req)).await.map_err(refresh_failed)?;
        Ok(token_response(issued))
    }

    /// Revoke the session of a refresh token. Always 200 (RFC 7009).
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/token/revoke", method = "post")]
    async fn token_revoke(&self, req: &Request, body: Json<RefreshTokenRequest>) -> poem::Result<Json<MessageDto>> {
        if let Some((sid, _)) = self.state.auth.refresh_token_session(&body.0.refresh_token) {
            self.state.auth.logout(&sid, &client_info(req)).await.map_err(fail)?;
        }
        Ok(Json(MessageDto { message: "Token revoked".into() }))
    }

    /// Create a user (admin). Same as `POST /api/users`.
    ///
    /// Minimum role: admin.
    #[oai(path = "/api/auth/users", method = "post")]
    async fn create_user(
        &self,
        req: &Request,
        auth: Auth,
        body: Json<CreateUserRequest>,
    ) -> poem::Result<Created<AdminUserDto>> {
        Ok(Created::Created(Json(create_user(&self.state, req, &auth, body.0).await?)))
    }
}

fn token_response(issued: IssuedSession) -> Response<Json<TokenResponse>> {
    Response::new(Json(TokenResponse {
        access_token: issued.access_token,
        refresh_token: issued.refresh_token.to_string(),
        token_type: "Bearer".into(),
        expires_in: issued.expires_in,
    }))
    .header("Cache-Control", "no-store")
}

/// A refused refresh, counted for `auth_refresh_total{result="failure"}`.
fn refresh_failed(e: crate::auth::AuthError) -> poem::Error {
    if matches!(e, crate::auth::AuthError::Unauthorized) {
        metrics::counter!("auth_refresh_total", "result" => "failure").increment(1);
    }
    fail(e)
}
