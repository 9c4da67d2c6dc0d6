//! HTTP side of authentication: the security schemes (bearer token, or session id plus that
//! session's access cookie), cookies, client info, and the mapping of auth errors to problems.

use std::sync::Arc;

use poem::Request;
use poem::http::{HeaderMap, StatusCode, Uri};
use poem_openapi::SecurityScheme;
use poem_openapi::auth::{ApiKey, Bearer};

use super::AppState;
use crate::auth::is_session_id;
use crate::auth::{AuthError, Principal};
use crate::http::problem::ApiError;

/// Prefix of the access-token cookie; the session id follows.
pub const ACCESS_COOKIE: &str = "__miauflix_at_";
/// Prefix of the refresh-token cookie; the session id follows.
pub const REFRESH_COOKIE: &str = "__miauflix_rt_";
/// Path of the refresh cookie: only auth endpoints ever see it.
pub const REFRESH_COOKIE_PATH: &str = "/api/auth/";
/// Most cookies read from one request.
const MAX_COOKIES: usize = 64;

/// `Authorization: Bearer <access token>`.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(Principal);

/// `X-Session-Id: <session>` plus the cookie `__miauflix_at_<session>`.
#[derive(SecurityScheme)]
#[oai(ty = "api_key", key_name = "X-Session-Id", key_in = "header", checker = "check_session")]
pub struct SessionAuth(Principal);

/// Either way of authenticating.
#[derive(SecurityScheme)]
pub enum Auth {
    Bearer(BearerAuth),
    Session(SessionAuth),
}

impl Auth {
    pub fn principal(&self) -> &Principal {
        match self {
            Auth::Bearer(BearerAuth(p)) | Auth::Session(SessionAuth(p)) => p,
        }
    }

    /// The principal, when it has at least `min`; else 403.
    pub fn require(&self, min: crate::auth::Role) -> poem::Result<&Principal> {
        self.principal().require(min).map_err(|e| auth_error(e).into())
    }
}

fn state(req: &Request) -> poem::Result<&Arc<AppState>> {
    req.data::<Arc<AppState>>().ok_or_else(|| ApiError::internal().into())
}

/// How a request's credentials were presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Session,
    StreamKey,
}

/// The edge middleware's successful authentication of this request, kept in its extensions
/// so endpoints do not verify the same credentials again.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal, pub Via);

fn already(req: &Request, via: Via) -> Option<Principal> {
    req.extensions().get::<Authenticated>().filter(|a| a.1 == via).map(|a| a.0.clone())
}

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Principal> {
    if let Some(p) = already(req, Via::Bearer) {
        return Ok(p);
    }
    let state = state(req)?;
    state.auth.authenticate(&bearer.token, None).map_err(|e| auth_error(e).into())
}

async fn check_session(req: &Request, key: ApiKey) -> poem::Result<Principal> {
    if let Some(p) = already(req, Via::Session) {
        return Ok(p);
    }
    let state = state(req)?;
    authenticate_session(state, req.headers(), key.key.trim()).map_err(|e| auth_error(e).into())
}

/// `X-Session-Id` plus that session's access cookie.
fn authenticate_session(state: &AppState, headers: &HeaderMap, sid: &str) -> Result<Principal, AuthError> {
    if !is_session_id(sid) {
        return Err(AuthError::Unauthorized);
    }
    let token = cookie(headers, &format!("{ACCESS_COOKIE}{sid}")).ok_or(AuthError::Unauthorized)?;
    state.auth.authenticate(&token, Some(sid))
}

/// The request's credentials, if any: a bearer token, else `X-Session-Id` plus its access
/// cookie, else (when `stream_path` is given) a signed stream key in the query string.
/// `Ok(None)` means no credentials were presented at all.
pub fn authenticate_request(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    stream_path: Option<&str>,
) -> Result<Option<Authenticated>, AuthError> {
    if let Some(value) = headers.get(poem::http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| AuthError::Unauthorized)?;
        let token =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(AuthError::Unauthorized)?;
        return state.auth.authenticate(token.trim(), None).map(|p| Some(Authenticated(p, Via::Bearer)));
    }
    if let Some(sid) = headers.get("x-session-id") {
        let sid = sid.to_str().map_err(|_| AuthError::Unauthorized)?.trim();
        return authenticate_session(state, headers, sid).map(|p| Some(Authenticated(p, Via::Session)));
    }
    if let Some(path) = stream_path
        && let Some(key) = uri.query().and_then(super::proxy::stream_key_of)
    {
        return state.auth.authenticate_stream_key(key, path).map(|p| Some(Authenticated(p, Via::StreamKey)));
    }
    Ok(None)
}

/// Every cookie of the request as (name, value), bounded in count and size.
pub fn cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for header in headers.get_all(poem::http::header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        if text.len() > 16 * 1024 {
            continue;
        }
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && value.len() <= 4096
            {
                // Quotes and blanks around the value go together (`"a "` is `a`), so that printing
                // the pairs again and parsing them gives the same pairs.
                let value = value.trim_matches(|c: char| c == '"' || c.is_ascii_whitespace());
                out.push((name.trim().to_string(), value.to_string()));
            }
            if out.len() >= MAX_COOKIES {
                return out;
            }
        }
    }
    out
}

/// One cookie's value by name.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    cookies(headers).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure when TLS is on.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: i64, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict");
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The client's view of an auth failure.
pub fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::InvalidCredentials => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid-credentials",
            "Invalid credentials",
            "Invalid credentials.",
        ),
        AuthError::Unauthorized => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            "Sign in to access this resource.",
        ),
        AuthError::Forbidden => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", "Your role does not allow this.")
        }
        AuthError::NotFound => ApiError::not_found(),
        AuthError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", msg),
        AuthError::Invalid(msg) => ApiError::new(StatusCode::BAD_REQUEST, "invalid-input", "Invalid input", msg),
        AuthError::Locked(secs) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "account-locked",
            "Too many requests",
            "Too many requests: too many failed sign-in attempts for this account; try again later.",
        )
        .with_header(poem::http::header::RETRY_AFTER, poem::http::HeaderValue::from(secs.max(1))),
        AuthError::Internal(cause) => {
            tracing::error!(error = %cause, "auth operation failed");
            ApiError::internal()
        }
    }
}

/// `AuthError` → `poem::Error`, for `?` in handlers.
pub fn fail(e: AuthError) -> poem::Error {
    auth_error(e).into()
}
