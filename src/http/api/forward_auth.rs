//! Forward auth for an existing reverse proxy (nginx `auth_request`, Traefik `forwardAuth`,
//! Caddy `forward_auth`): the route policy of the original URI.

use std::sync::Arc;

use poem::Request;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::ApiTags;
use super::dto::MessageDto;
use crate::auth::AuthError;
use crate::http::AppState;
use crate::http::credentials::{authenticate_request, fail};
use crate::http::problem::ApiError;
use crate::http::proxy::min_role;

pub struct ForwardAuthApi {
    pub state: Arc<AppState>,
}

#[derive(ApiResponse)]
pub enum VerifyResponse {
    /// Allowed; the identity is in the `Remote-*` headers (absent for anonymous access to a public route).
    #[oai(status = 200)]
    Allowed(
        Json<MessageDto>,
        #[oai(header = "Remote-User")] Option<String>,
        #[oai(header = "Remote-Email")] Option<String>,
        #[oai(header = "Remote-Groups")] Option<String>,
        #[oai(header = "Remote-Name")] Option<String>,
    ),
}

#[OpenApi(tag = "ApiTags::Auth")]
impl ForwardAuthApi {
    /// Forward auth for nginx `auth_request`, Traefik `forwardAuth` and Caddy `forward_auth`:
    /// applies the policy of the route for the original URI, read from the one header
    /// `[forward_auth] uri_header` names (`X-Original-URI` by default).
    ///
    /// Minimum role: public.
    #[oai(path = "/api/auth/verify", method = "get")]
    async fn verify(&self, req: &Request) -> poem::Result<VerifyResponse> {
        let fa = &self.state.config.forward_auth;
        let uri = original_header(req, fa.uri_header.name(), fa.uri_header.other())?.ok_or_else(|| {
            poem::Error::from(ApiError::bad_request(format!("The {} header is required.", fa.uri_header.name())))
        })?;
        if let Some(method) = original_header(req, fa.method_header.name(), fa.method_header.other())?
            && poem::http::Method::from_bytes(method.as_bytes()).is_err()
        {
            return Err(
                ApiError::bad_request(format!("The {} header is not a method.", fa.method_header.name())).into()
            );
        }
        // Only `?` ends the path: a raw `#` in a request target is refused by `canonical_path`.
        let path = uri.split('?').next().unwrap_or("/");
        // A refused path (see `canonical_path`) or one no route covers: 403 below.
        let route = self.state.proxy.route_for(path);
        let stream_path = route.as_ref().filter(|(r, _)| r.cfg.stream_keys).map(|(_, p)| p.as_ref());
        // Stream keys arrive in the original URI's query string.
        let principal = match stream_path {
            Some(p) => match uri.split_once('?').and_then(|(_, q)| crate::http::proxy::stream_key_of(q)) {
                Some(key) => Some(self.state.auth.authenticate_stream_key(key, p).map_err(fail)?),
                None => authenticate_request(&self.state, req.headers(), req.uri(), None).map_err(fail)?.map(|a| a.0),
            },
            None => authenticate_request(&self.state, req.headers(), req.uri(), None).map_err(fail)?.map(|a| a.0),
        };
        let route = route.map(|(r, _)| r);
        if route.is_none() && crate::paths::canonical_path(path).is_none() {
            return Err(fail(AuthError::Forbidden));
        }
        // Default deny: a path no route covers is refused.
        let Some(route) = route else {
            return Err(fail(if principal.is_some() { AuthError::Forbidden } else { AuthError::Unauthorized }));
        };
        if let Some(min) = min_role(&route) {
            let p = principal.as_ref().ok_or_else(|| fail(AuthError::Unauthorized))?;
            p.require(min).map_err(fail)?;
        }
        if route.cfg.requires_vpn && !self.state.vpn.tunnel_up() {
            return Err(ApiError::new(
                poem::http::StatusCode::SERVICE_UNAVAILABLE,
                "vpn-down",
                "Service unavailable",
                "The VPN tunnel is not up, so this service is paused.",
            )
            .into());
        }
        let msg = Json(MessageDto { message: "Allowed".into() });
        Ok(match principal {
            Some(p) => VerifyResponse::Allowed(
                msg,
                Some(p.user_id),
                Some(p.email),
                Some(p.role.as_str().into()),
                Some(p.display_name),
            ),
            None => VerifyResponse::Allowed(msg, None, None, None, None),
        })
    }
}

/// The value of the original-request header `name` (the one `[forward_auth]` chooses), if
/// present; 400 when it is sent twice, is not text, or when `other` (the header the other
/// proxies use) is present with a different value: a proxy that passes client headers on
/// would otherwise let the client name the path that is checked.
fn original_header<'a>(req: &'a Request, name: &str, other: &str) -> poem::Result<Option<&'a str>> {
    let one = |h: &str| -> poem::Result<Option<&'a str>> {
        let mut all = req.headers().get_all(h).iter();
        let (first, second) = (all.next(), all.next());
        if second.is_some() {
            return Err(ApiError::bad_request(format!("The {h} header must be sent once.")).into());
        }
        match first {
            None => Ok(None),
            Some(v) => {
                v.to_str().map(Some).map_err(|_| ApiError::bad_request(format!("The {h} header is not text.")).into())
            }
        }
    };
    let value = one(name)?;
    if let Some(o) = one(other)?
        && value != Some(o)
    {
        return Err(ApiError::bad_request(format!("{name} and {other} disagree; the gate reads {name}.")).into());
    }
    Ok(value)
}
