//! The request-context middleware: request id, body limit under `/api`, and the
//! conversion of every error into `application/problem+json`.

use bytes::BytesMut;
use futures_util::StreamExt;
use poem::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use poem::{Body, Endpoint, IntoResponse, Middleware, Request, Response};

use crate::error::ApiError;

/// The id of one request, in responses as `X-Request-Id` and in every problem body.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn new() -> Self {
        RequestId(hex::encode(crate::crypto::random_bytes::<12>()))
    }
}

/// Outermost middleware of the stack.
pub struct RequestContext {
    max_body: usize,
}

impl RequestContext {
    pub fn new(max_body: usize) -> Self {
        RequestContext { max_body }
    }
}

impl<E: Endpoint> Middleware<E> for RequestContext {
    type Output = RequestContextEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RequestContextEndpoint { inner: ep, max_body: self.max_body }
    }
}

pub struct RequestContextEndpoint<E> {
    inner: E,
    max_body: usize,
}

impl<E: Endpoint> Endpoint for RequestContextEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let id = RequestId::new();
        req.extensions_mut().insert(id.clone());
        let limited =
            if req.uri().path().starts_with("/api/") { limit_body(&mut req, self.max_body).await } else { Ok(()) };
        let result = match limited {
            Ok(()) => self.inner.call(req).await.map(IntoResponse::into_response),
            Err(e) => Err(e.into()),
        };
        let mut resp = match result {
            Ok(resp) => resp,
            Err(err) => problem_response(err, &id),
        };
        if let Ok(v) = HeaderValue::from_str(&id.0) {
            resp.headers_mut().insert("x-request-id", v);
        }
        Ok(resp)
    }
}

/// Refuses bodies over `max`: at once by `Content-Length`, or while reading a chunked body.
async fn limit_body(req: &mut Request, max: usize) -> Result<(), ApiError> {
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("The Content-Length header is not a number."))?;
        return if len > max as u64 { Err(ApiError::payload_too_large(max)) } else { Ok(()) };
    }
    // No length given (chunked HTTP/1.1, or HTTP/2): count while reading.
    let mut stream = req.take_body().into_bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request("The request body could not be read."))?;
        if buf.len() + chunk.len() > max {
            return Err(ApiError::payload_too_large(max));
        }
        buf.extend_from_slice(&chunk);
    }
    req.set_body(Body::from(buf.freeze()));
    Ok(())
}

/// Renders any error as a problem document; 5xx causes are logged, never shown.
pub fn problem_response(err: poem::Error, id: &RequestId) -> Response {
    let problem = match err.downcast_ref::<ApiError>() {
        Some(api) => api.clone(),
        None => {
            let status = err.status();
            if status.is_server_error() {
                tracing::error!(request_id = %id.0, error = %err, "request failed");
            }
            ApiError::from_status(status, &err.to_string())
        }
    };
    let mut resp = Response::builder()
        .status(problem.status)
        .header(CONTENT_TYPE, "application/problem+json")
        .body(problem.body(&id.0).to_string());
    for (name, value) in problem.headers {
        resp.headers_mut().insert(name, value);
    }
    resp
}
