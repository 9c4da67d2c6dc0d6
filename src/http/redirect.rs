//! The plain-HTTP listener: every request is redirected to https with 308.

use poem::http::{StatusCode, header};
use poem::{Endpoint, Request, Response, handler};

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

/// The redirect app for a main listener on `https_port`.
pub fn app(https_port: u16) -> impl Endpoint {
    #[handler]
    fn redirect(req: &Request, port: poem::web::Data<&u16>) -> Response {
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
    poem::EndpointExt::data(redirect, https_port)
}
