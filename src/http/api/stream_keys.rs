//! Signed stream URLs, for players that cannot send headers: a key bound to the session
//! and a path prefix under a route with `stream_keys = true`.

use std::sync::Arc;

use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use super::ApiTags;
use crate::auth::Role;
use crate::http::AppState;
use crate::http::credentials::{Auth, fail};
use crate::http::problem::ApiError;
use crate::http::proxy::{STREAM_KEY_PARAM, min_role};

pub struct StreamKeysApi {
    pub state: Arc<AppState>,
}

/// Ask for a signed stream URL.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct StreamKeyRequest {
    /// A path under a route with `stream_keys = true`; the key covers it and everything below.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub path: String,
    #[oai(validator(minimum(value = "1"), maximum(value = "86400")))]
    pub ttl_seconds: i64,
}

/// A signed stream URL.
#[derive(Object)]
#[oai(rename_all = "camelCase")]
pub struct StreamKeyResponse {
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[OpenApi(tag = "ApiTags::Auth")]
impl StreamKeysApi {
    /// A signed URL for a media path, for players that cannot send headers.
    ///
    /// Minimum role: guest.
    #[oai(path = "/api/stream-keys", method = "post")]
    async fn stream_key(&self, auth: Auth, body: Json<StreamKeyRequest>) -> poem::Result<Json<StreamKeyResponse>> {
        let p = auth.require(Role::Guest)?;
        let path = body.0.path;
        let canonical = (!path.contains(['?', '#'])).then(|| crate::paths::canonical_path(&path)).flatten();
        let Some(path) = canonical.map(|p| p.into_owned()) else {
            return Err(ApiError::bad_request(
                "The path must be an absolute path without query, dot segments, empty segments or parameters.",
            )
            .into());
        };
        let (route, _) = self.state.proxy.route_for(&path).filter(|(r, _)| r.cfg.stream_keys).ok_or_else(|| {
            poem::Error::from(ApiError::bad_request("No route with signed stream URLs covers this path."))
        })?;
        if let Some(min) = min_role(&route) {
            p.require(min).map_err(fail)?;
        }
        let (key, expires_at) = self.state.auth.sign_stream_key(p, &path, body.0.ttl_seconds);
        Ok(Json(StreamKeyResponse { url: format!("{path}?{STREAM_KEY_PARAM}={key}"), expires_at }))
    }
}
