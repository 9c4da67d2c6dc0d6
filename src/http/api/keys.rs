//! `/.well-known/jwks.json`: the public keys that verify access tokens.

use std::sync::Arc;

use poem_openapi::OpenApi;
use poem_openapi::payload::Json;
use poem_openapi::types::Any;

use super::ApiTags;
use crate::http::AppState;

pub struct KeysApi {
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Auth")]
impl KeysApi {
    /// The JWK set (OKP / Ed25519, with `kid`), so upstream services can verify access tokens.
    ///
    /// Minimum role: public.
    #[oai(path = "/.well-known/jwks.json", method = "get")]
    async fn jwks(&self) -> Json<Any<serde_json::Value>> {
        Json(Any(self.state.auth.keys().jwks()))
    }
}
