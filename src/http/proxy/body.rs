//! Client request bodies on the proxy path: their read errors tagged, so that a failed upstream
//! send can tell a malformed client body (400) from an unreachable upstream (502).

use std::io;

use http_body_util::BodyExt;

use super::ProxyBody;

/// A client's request body that failed to read (bad chunked framing, an HTTP/2 length
/// mismatch), tagged so that the upstream's send error can tell it from an upstream failure.
#[derive(Debug)]
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client request body: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The client's body as the proxy streams it upstream, its errors tagged [`ClientBodyError`].
pub fn client_body(body: hyper::body::Incoming) -> ProxyBody {
    body.map_err(|e| io::Error::other(ClientBodyError(e))).boxed()
}

/// Whether an upstream send failed because the client's body did (hyper reports the body's
/// error in the send error's source chain).
pub(super) fn is_client_body_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        // `io::Error::source` skips the error it wraps, so look inside it too.
        let inner = err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()).map(|i| i as &dyn std::error::Error);
        if err.is::<ClientBodyError>() || inner.is_some_and(|i| i.is::<ClientBodyError>()) {
            return true;
        }
        cur = err.source();
    }
    false
}
