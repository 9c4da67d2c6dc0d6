//! The error a client sees, kept apart from the cause that is logged.
//!
//! [`ApiError`] carries only what is safe to show: a stable problem `type` slug, a short
//! title and one sentence. The request-context middleware renders it (and every other
//! error) as RFC 9457 `application/problem+json` with the request id.

use poem::http::StatusCode;
use poem::http::header::{HeaderName, HeaderValue};

/// Base of every problem `type` URI.
pub const PROBLEM_TYPE_BASE: &str = "urn:miauflix-gate:problem/";

/// Words no error text may contain, in any case, even inside another word: the Miauflix client
/// (and its tests) treats an error that names a credential field as a leak.
pub const CREDENTIAL_WORDS: [&str; 5] = ["password", "token", "secret", "hash", "key"];

/// Whether `text` names a credential field (see [`CREDENTIAL_WORDS`]).
pub fn names_credential(text: &str) -> bool {
    let lower = text.to_lowercase();
    CREDENTIAL_WORDS.iter().any(|w| lower.contains(w))
}

/// A problem to show the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable slug, appended to [`PROBLEM_TYPE_BASE`].
    pub kind: &'static str,
    /// Short summary; also the `error` member for the Miauflix client.
    pub title: &'static str,
    /// One human sentence; also the `message` member.
    pub detail: String,
    /// Extra response headers (e.g. `Retry-After`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, kind, title, detail: detail.into(), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request", detail)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", "There is nothing at this address.")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable", detail)
    }

    /// An internal failure: the cause is logged by the caller, the client learns nothing of it.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "Something went wrong on our side; the request id identifies it in the logs.",
        )
    }

    /// The problem for an error raised by poem or poem-openapi, chosen by status.
    pub fn from_status(status: StatusCode, cause: &str) -> Self {
        match status.as_u16() {
            400 => Self::bad_request(client_detail(cause, "The request is malformed.")),
            401 => Self::new(status, "unauthorized", "Authentication required", "Sign in to access this resource."),
            403 => Self::new(status, "forbidden", "Forbidden", "You are not allowed to do this."),
            404 => Self::not_found(),
            405 => Self::new(
                status,
                "method-not-allowed",
                "Method not allowed",
                "This address does not accept that method.",
            ),
            406 => Self::new(status, "not-acceptable", "Not acceptable", "No acceptable representation is available."),
            411 => Self::new(status, "length-required", "Length required", "The request needs a Content-Length."),
            413 => Self::new(status, "payload-too-large", "Payload too large", "The request body is too large."),
            415 => Self::new(
                status,
                "unsupported-media-type",
                "Unsupported media type",
                client_detail(cause, "The request body's content type is not supported here."),
            ),
            429 => Self::new(status, "rate-limited", "Too many requests", "Too many requests; try again later."),
            s if (400..500).contains(&s) => {
                Self::new(status, "client-error", "Bad request", client_detail(cause, "The request cannot be served."))
            }
            503 => Self::unavailable("The service is not ready; try again shortly."),
            _ => {
                let mut e = Self::internal();
                e.status = if status.is_server_error() { status } else { StatusCode::INTERNAL_SERVER_ERROR };
                e
            }
        }
    }

    /// The problem document. A detail that names a credential field (a parser's cause quoting
    /// a field name, a domain message) is replaced by the status's general sentence here, the
    /// one place every problem is rendered, so no path can send one.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let detail = if names_credential(&self.detail) {
            // Not the detail itself: a parser's message may quote the client's input.
            tracing::debug!(kind = self.kind, "an error detail naming a credential field was replaced");
            Self::from_status(self.status, "").detail
        } else {
            self.detail.clone()
        };
        serde_json::json!({
            "type": format!("{PROBLEM_TYPE_BASE}{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": detail,
            "requestId": request_id,
            "error": self.title,
            "message": detail,
        })
    }
}

/// A 4xx cause from poem's parsers describes the client's own input; keep it short, on one
/// line, and without the input itself: a parser quotes what it found (`found ["hunter2"]`,
/// `invalid type: string "…"`), which may be a password sent with the wrong type. Quoted
/// text becomes `…` and whatever follows "found" is dropped.
fn client_detail(cause: &str, fallback: &str) -> String {
    let cut = cause.find(" found").map_or(cause, |i| &cause[..i]);
    let mut line = String::new();
    let mut quote: Option<char> = None;
    for c in cut.chars().filter(|c| !c.is_control()) {
        match quote {
            Some(q) if c == q => {
                line.push('…');
                line.push(c);
                quote = None;
            }
            Some(_) => {}
            None => {
                line.push(c);
                if matches!(c, '"' | '`') {
                    quote = Some(c);
                }
            }
        }
        if line.chars().count() >= 200 {
            break;
        }
    }
    if quote.is_some() {
        line.push('…');
    }
    let line = line.trim().trim_end_matches([',', ':']).to_string();
    if line.is_empty() { fallback.to_string() } else { line }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.title, self.detail)
    }
}

impl std::error::Error for ApiError {}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        self.status
    }

    fn as_response(&self) -> poem::Response {
        let mut resp = poem::Response::builder()
            .status(self.status)
            .content_type("application/problem+json")
            .body(self.body("").to_string());
        for (name, value) in &self.headers {
            resp.headers_mut().insert(name.clone(), value.clone());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parser_details_never_echo_the_clients_input() {
        use super::client_detail;
        let cases = [
            (
                r#"parse request payload error: failed to parse "LoginRequest": expected type "string", found ["hunter2pw"]. (occurred while parsing "LoginRequest")"#,
                "hunter2pw",
            ),
            (r#"invalid type: string "s3cret-value", expected u32 at line 1 column 20"#, "s3cret-value"),
            ("unknown variant `emperor-pass`, expected one of `guest`, `user`", "emperor-pass"),
            (r#"unterminated "quote with hunter3"#, "hunter3"),
        ];
        for (cause, secret) in cases {
            let d = client_detail(cause, "fallback");
            assert!(!d.contains(secret), "{d}");
            assert!(!d.is_empty());
        }
        assert_eq!(client_detail("missing field at line 1", "x"), "missing field at line 1");
        assert_eq!(client_detail("", "fallback"), "fallback");
        assert_eq!(client_detail("the body can't be read", "x"), "the body can't be read");
    }

    use super::{ApiError, CREDENTIAL_WORDS, names_credential};
    use poem::http::StatusCode;

    #[test]
    fn a_detail_naming_a_credential_field_is_never_rendered() {
        // What poem's parser says of a body missing a field, in any case.
        for cause in [
            "parse request payload error: failed to parse \"LoginRequest\": missing field `password`",
            "field `setupToken`: expected string",
            "refresh_TOKEN is required",
            "the WireGuard privateKey is bad",
            "a SECRET",
            "hash mismatch",
        ] {
            for status in [400u16, 401, 403, 404, 409, 413, 415, 422, 429, 500, 502, 503] {
                let status = StatusCode::from_u16(status).unwrap();
                let mut e = ApiError::from_status(status, cause);
                e.detail = cause.to_string();
                let body = e.body("00").to_string();
                assert!(!names_credential(&body), "{status}: {body}");
                assert_eq!(e.body("00")["message"], e.body("00")["detail"]);
            }
        }
    }

    #[test]
    fn no_status_maps_to_a_title_type_or_detail_naming_a_credential_field() {
        for status in 400..600u16 {
            let Ok(status) = StatusCode::from_u16(status) else { continue };
            let body = ApiError::from_status(status, "").body("00").to_string();
            assert!(!names_credential(&body), "{status}: {body}");
        }
    }

    #[test]
    fn the_words_are_matched_in_any_case_and_inside_words() {
        for w in CREDENTIAL_WORDS {
            assert!(names_credential(&format!("x{}y", w.to_uppercase())));
        }
        assert!(!names_credential("Invalid credentials."));
    }
}
