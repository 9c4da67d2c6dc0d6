//! The published OpenAPI document: what poem-openapi derives from the handlers, plus the
//! error answers the gate's layers give, which the derive cannot see.
//!
//! Handlers return `poem::Result`, and most refusals come from layers around them: the
//! request-context middleware (rate limits, CSRF, body limits), the credential extractor
//! (401/403) and poem-openapi's own parsers (400/415). So the problems are documented in
//! one place, by rule, next to the table of what individual handlers add. Every error is
//! RFC 9457 `application/problem+json` (the [`Problem`](crate::http::problem::ApiError::body)
//! document), and every answer carries `X-Request-Id`. [`LINKS`] says how one answer's ids feed
//! the next operation (OpenAPI links). `tests/api_fuzz` checks the result
//! against the running binary with schemathesis; `tests/http.rs` checks that each table row
//! names an operation that exists.

use serde_json::{Map, Value, json};

/// Statuses a handler answers beyond the rules in [`document_problems`]:
/// `(method, path, statuses)`, paths as in the document.
pub const HANDLER_PROBLEMS: &[(&str, &str, &[u16])] = &[
    ("get", "/metrics", &[401, 403]),
    ("post", "/api/auth/setup", &[401, 404]),
    ("post", "/api/auth/login", &[401]),
    ("post", "/api/auth/token", &[401]),
    ("post", "/api/auth/token/refresh", &[401]),
    ("post", "/api/auth/refresh/{session}", &[401]),
    ("post", "/api/auth/users", &[409]),
    ("post", "/api/users", &[409]),
    ("patch", "/api/users/{id}", &[409]),
    ("delete", "/api/users/{id}", &[409]),
    ("get", "/api/auth/verify", &[401, 403, 503]),
    ("put", "/api/vpn/key", &[409]),
    ("put", "/api/vpn/servers", &[409]),
    ("post", "/api/vpn/reconnect", &[409]),
    ("post", "/api/vpn/rotate", &[409]),
];

/// How one answer's values feed the next operation (OpenAPI links, followed by the API
/// fuzzer's stateful phase): `(method, path, status, target method, target path, parameter,
/// runtime expression)`.
pub const LINKS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    ("post", "/api/users", "201", "get", "/api/users/{id}", "id", "$response.body#/id"),
    ("post", "/api/users", "201", "patch", "/api/users/{id}", "id", "$response.body#/id"),
    ("post", "/api/users", "201", "delete", "/api/users/{id}", "id", "$response.body#/id"),
    ("post", "/api/users", "201", "post", "/api/users/{id}/reset-password", "id", "$response.body#/id"),
    ("post", "/api/users", "201", "post", "/api/users/{id}/unlock", "id", "$response.body#/id"),
    ("post", "/api/users", "201", "get", "/api/users/{id}/sessions", "id", "$response.body#/id"),
    ("post", "/api/users", "201", "delete", "/api/users/{id}/sessions", "id", "$response.body#/id"),
    ("get", "/api/users", "200", "get", "/api/users/{id}", "id", "$response.body#/0/id"),
    ("get", "/api/users", "200", "patch", "/api/users/{id}", "id", "$response.body#/0/id"),
    ("get", "/api/users", "200", "get", "/api/users/{id}/sessions", "id", "$response.body#/0/id"),
    ("get", "/api/me", "200", "get", "/api/users/{id}", "id", "$response.body#/id"),
    ("get", "/api/me/sessions", "200", "delete", "/api/me/sessions/{id}", "id", "$response.body#/0/id"),
    ("post", "/api/auth/login", "200", "post", "/api/auth/refresh/{session}", "session", "$response.body#/session"),
    ("post", "/api/auth/login", "200", "post", "/api/auth/logout/{session}", "session", "$response.body#/session"),
];

/// What each problem status means, in the words of the layer that answers it.
fn meaning(status: u16) -> &'static str {
    match status {
        400 => "The request is malformed: a parameter, header or body the operation cannot accept.",
        401 => "No valid credentials, or the wrong ones.",
        403 => "The caller's role does not allow this, or an unsafe request came from a foreign origin.",
        404 => "There is nothing at this address.",
        408 => "The request body did not arrive within the body deadline.",
        409 => "The request conflicts with the current state.",
        413 => "The request body is larger than the limit.",
        415 => "The request body's content type is not `application/json`.",
        429 => "Too many requests, or too many failed sign-ins for the account; see `Retry-After`.",
        503 => "The service behind this operation is not available right now.",
        _ => "An error.",
    }
}

/// Adds the `Problem` schema, the problem answers of every operation and the
/// `X-Request-Id` header of every answer to the document poem-openapi produced.
pub fn document_problems(doc: &mut Value) {
    let Some(obj) = doc.as_object_mut() else { return };
    let components = obj.entry("components").or_insert_with(|| json!({}));
    if let Some(c) = components.as_object_mut() {
        let schemas = c.entry("schemas").or_insert_with(|| json!({}));
        if let Some(s) = schemas.as_object_mut() {
            s.insert("Problem".into(), problem_schema());
        }
    }
    let Some(paths) = obj.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else { continue };
            let statuses = statuses_of(method, path, op);
            let responses = op.entry("responses").or_insert_with(|| json!({}));
            let Some(responses) = responses.as_object_mut() else { continue };
            for status in statuses {
                responses.entry(status.to_string()).or_insert_with(|| problem_response(status));
            }
            for response in responses.values_mut() {
                add_request_id(response);
            }
            for (m, p, status, to_method, to_path, param, expr) in LINKS {
                if *m != method || *p != path {
                    continue;
                }
                let Some(links) = responses
                    .get_mut(*status)
                    .and_then(Value::as_object_mut)
                    .map(|r| r.entry("links").or_insert_with(|| json!({})))
                    .and_then(Value::as_object_mut)
                else {
                    continue;
                };
                let pointer = to_path.replace('~', "~0").replace('/', "~1");
                // Link names are `[A-Za-z0-9._-]+`.
                let name: String = format!("{to_method}{to_path}")
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                links.insert(
                    name,
                    json!({"operationRef": format!("#/paths/{pointer}/{to_method}"), "parameters": {*param: expr}}),
                );
            }
        }
    }
}

/// The problem statuses of one operation: the rules, then the handler's own.
fn statuses_of(method: &str, path: &str, op: &Map<String, Value>) -> Vec<u16> {
    // Every request passes the edge checks (malformed input, rate limits).
    let mut s = vec![400, 429];
    let secured = op.get("security").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
    if secured {
        s.extend([401, 403]);
    }
    if matches!(method, "post" | "put" | "patch" | "delete") {
        // A cookie-carrying unsafe request from a foreign origin (CSRF).
        s.push(403);
    }
    if op.contains_key("requestBody") {
        // Over `http.max_body_bytes`, not JSON, or slower than `http.body_timeout_secs`.
        s.extend([408, 413, 415]);
    }
    if path.contains('{') {
        s.push(404);
    }
    for (m, p, extra) in HANDLER_PROBLEMS {
        if *m == method && *p == path {
            s.extend_from_slice(extra);
        }
    }
    s.sort_unstable();
    s.dedup();
    s
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "title": "Problem",
        "description": "RFC 9457 problem details; `error` and `message` repeat `title` and `detail` for the Miauflix client.",
        "required": ["type", "title", "status", "detail", "requestId", "error", "message"],
        "properties": {
            "type": {"type": "string", "description": "`urn:miauflix-gate:problem/<slug>`; stable."},
            "title": {"type": "string"},
            "status": {"type": "integer", "format": "uint16"},
            "detail": {"type": "string", "description": "One sentence for a person; never internals."},
            "requestId": {"type": "string", "description": "Also in `X-Request-Id`; names the request in the logs."},
            "error": {"type": "string"},
            "message": {"type": "string"}
        }
    })
}

fn problem_response(status: u16) -> Value {
    let mut r = json!({
        "description": meaning(status),
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    if status == 429 {
        r["headers"] = json!({
            "Retry-After": {
                "description": "Seconds until a retry can succeed.",
                "required": true,
                "schema": {"type": "integer", "format": "uint64", "minimum": 1}
            }
        });
    }
    r
}

fn add_request_id(response: &mut Value) {
    let Some(r) = response.as_object_mut() else { return };
    let headers = r.entry("headers").or_insert_with(|| json!({}));
    if let Some(h) = headers.as_object_mut() {
        h.entry("X-Request-Id").or_insert_with(|| {
            json!({
                "description": "The request's id, as in the logs and the audit record.",
                "required": true,
                "schema": {"type": "string"}
            })
        });
    }
}
