//! The plain-HTTP listener: answers ACME HTTP-01 challenges, and redirects every other
//! request to https with 308. Nothing else is served over plain HTTP.

use poem::http::{StatusCode, header};
use std::sync::Arc;

use poem::{Endpoint, Request, Response, handler};
use rustls_acme::ResolvesServerCertAcme;

/// Host of the request without its port.
fn host_only(req: &Request) -> Option<String> {
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let host = if host.starts_with('[') {
        host.split_inclusive(']').next()?.to_string()
    } else {
        host.split(':').next()?.to_string()
    };
    let valid = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    valid.then_some(host)
}

/// Path prefix of ACME HTTP-01 challenges.
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The plain-HTTP app for a main listener on `https_port`, answering HTTP-01 challenges
/// from `acme` when given.
pub fn app(https_port: u16, acme: Option<Arc<ResolvesServerCertAcme>>) -> impl Endpoint {
    #[handler]
    fn plain(req: &Request, port: poem::web::Data<&u16>, acme: poem::web::Data<&Challenges>) -> Response {
        let path = req.uri().path();
        if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
            let answer = acme.0.0.as_ref().and_then(|r| r.get_http_01_key_auth(token));
            return match answer {
                Some(key_auth) => {
                    Response::builder().status(StatusCode::OK).header(header::CONTENT_TYPE, "text/plain").body(key_auth)
                }
                None => Response::builder().status(StatusCode::NOT_FOUND).finish(),
            };
        }
        let Some(host) = host_only(req) else {
            return Response::builder().status(StatusCode::BAD_REQUEST).body("missing or invalid Host header");
        };
        let authority = if *port.0 == 443 { host } else { format!("{host}:{}", port.0) };
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Response::builder()
            .status(StatusCode::PERMANENT_REDIRECT)
            .header(header::LOCATION, format!("https://{authority}{path}"))
            .finish()
    }
    poem::EndpointExt::data(poem::EndpointExt::data(plain, https_port), Challenges(acme))
}

#[derive(Clone)]
struct Challenges(Option<Arc<ResolvesServerCertAcme>>);
