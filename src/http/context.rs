//! What the gate knows of the request in hand, before any decision: its id, the client's
//! address as the edge resolved it, and the `ClientInfo` every security event carries. The
//! middleware puts the first two in the request's extensions; everything else reads them here.

use std::net::IpAddr;

use poem::Request;
use poem::http::HeaderMap;

use crate::audit::ClientInfo;

/// The id of one request, in responses as `X-Request-Id` and in every problem body.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    pub(crate) fn new() -> Self {
        RequestId(hex::encode(crate::crypto::id_bytes::<12>()))
    }
}

/// The client's address: the socket peer, or the right-most untrusted `X-Forwarded-For` hop
/// when the peer is a trusted proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub IpAddr);

/// Who is asking: socket address, user agent, request id.
pub fn client_info(req: &Request) -> ClientInfo {
    let ip = match req.extensions().get::<ClientAddr>() {
        Some(addr) => Some(addr.0),
        None => req.remote_addr().as_socket_addr().map(|a| a.ip()),
    };
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.as_str()).unwrap_or_default();
    client_info_of(ip, req.headers(), request_id)
}

/// Who is asking, from the client address, the headers and the request id.
pub fn client_info_of(ip: Option<std::net::IpAddr>, headers: &HeaderMap, request_id: &str) -> ClientInfo {
    let ip = ip.map(|ip| ip.to_string()).unwrap_or_else(|| "unknown".into());
    let user_agent = headers
        .get(poem::http::header::USER_AGENT)
        // Kept even when not ASCII: the audit log escapes what it must, and a UA that hides
        // in obs-text should not vanish from the record.
        .map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(256).collect())
        .unwrap_or_default();
    ClientInfo { ip, user_agent, request_id: request_id.to_string() }
}
