//! In-process HTTP behaviour: problem+json, request ids, body limits, the OpenAPI document.

mod common;

use std::sync::Arc;

use miauflix_gate::http::{AppState, build_app, openapi_json};
use poem::test::TestClient;

async fn state(dir: &std::path::Path) -> Arc<AppState> {
    common::app::open_in(dir, None, &[]).await
}

fn assert_problem(resp: &poem::test::TestResponse, status: u16, kind: &str) {
    assert_eq!(resp.0.status().as_u16(), status);
    assert_eq!(resp.0.headers().get("content-type").unwrap(), "application/problem+json");
    assert!(resp.0.headers().contains_key("x-request-id"));
    let _ = kind;
}

async fn problem_body(resp: poem::test::TestResponse) -> serde_json::Value {
    let id = resp.0.headers().get("x-request-id").unwrap().to_str().unwrap().to_string();
    let body: serde_json::Value = serde_json::from_str(&resp.0.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(body["requestId"], id, "the body names the same request id as the header");
    for member in ["type", "title", "status", "detail", "error", "message"] {
        assert!(body.get(member).is_some(), "missing {member} in {body}");
    }
    body
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let cli = TestClient::new(build_app(state.clone()));
    for path in ["/nope", "/api/nope", "/api/auth/../../etc/passwd", "/admin%00"] {
        let resp = cli.get(path).send().await;
        assert_problem(&resp, 404, "not-found");
        let body = problem_body(resp).await;
        assert_eq!(body["type"], "urn:miauflix-gate:problem/not-found");
        assert_eq!(body["status"], 404);
    }
    let resp = cli.delete("/healthz").send().await;
    assert_problem(&resp, 405, "method-not-allowed");
    state.store.close().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_problems() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let cli = TestClient::new(build_app(state.clone()));
    let big = vec![b'a'; 64 * 1024 + 1];
    let resp = cli.post("/api/anything").header("content-type", "application/json").body(big.clone()).send().await;
    assert_problem(&resp, 413, "payload-too-large");
    let body = problem_body(resp).await;
    assert_eq!(body["type"], "urn:miauflix-gate:problem/payload-too-large");
    // Without a Content-Length (chunked), the limit holds while reading.
    let stream = futures_util::stream::iter(
        big.chunks(4096).map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
    );
    let resp = cli
        .post("/api/anything")
        .header("transfer-encoding", "chunked")
        .body(poem::Body::from_bytes_stream(stream))
        .send()
        .await;
    assert_problem(&resp, 413, "payload-too-large");
    // Exactly at the limit passes the limit (and then meets the 404 of the unknown path).
    let resp = cli.post("/api/anything").body(vec![b'a'; 64 * 1024]).send().await;
    assert_problem(&resp, 404, "not-found");
    state.store.close().await;
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let cli = TestClient::new(build_app(state.clone()));
    let a = cli.get("/healthz").send().await;
    a.assert_status_is_ok();
    let b = cli.get("/readyz").send().await;
    b.assert_status_is_ok();
    let ida = a.0.headers().get("x-request-id").unwrap().clone();
    let idb = b.0.headers().get("x-request-id").unwrap().clone();
    assert_ne!(ida, idb);
    let ready: serde_json::Value = serde_json::from_str(&b.0.into_body().into_string().await.unwrap()).unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["tls"], "off");
    state.store.close().await;
}

#[tokio::test]
async fn openapi_document_matches_the_committed_file() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let spec = openapi_json(state.clone());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{spec}\n")).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed.trim_end() == spec.trim_end(),
        "assets/openapi.json differs from the code's spec; review the API change and run `UPDATE_OPENAPI=1 cargo test --test http`"
    );
    // The served document is the same one.
    let cli = TestClient::new(build_app(state.clone()));
    let resp = cli.get("/api/openapi.json").send().await;
    resp.assert_status_is_ok();
    let served: serde_json::Value = serde_json::from_str(&resp.0.into_body().into_string().await.unwrap()).unwrap();
    let code: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert_eq!(served, code);
    let docs = cli.get("/api/docs").send().await;
    docs.assert_status_is_ok();
    let html = docs.0.into_body().into_string().await.unwrap();
    assert!(html.contains("urn:miauflix-gate:problem/"), "the docs page embeds the documented spec");
    state.store.close().await;
}

/// Every error answer in the document is a problem, every answer names `X-Request-Id`, and
/// every row of the handler table names an operation that exists and adds something.
#[tokio::test]
async fn openapi_document_describes_the_problems() {
    use miauflix_gate::http::spec::HANDLER_PROBLEMS;
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let spec: serde_json::Value = serde_json::from_str(&openapi_json(state.clone())).unwrap();
    let mut ops = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ops += 1;
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "429"] {
                assert!(responses.contains_key(status), "{method} {path} does not document {status}");
            }
            if op.get("security").and_then(|s| s.as_array()).is_some_and(|s| !s.is_empty()) {
                assert!(responses.contains_key("401") && responses.contains_key("403"), "{method} {path}");
            }
            for (status, r) in responses {
                assert_eq!(r["headers"]["X-Request-Id"]["required"], true, "{method} {path} {status}");
                if status.starts_with('4') || status.starts_with('5') && path != "/readyz" {
                    assert_eq!(
                        r["content"]["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem",
                        "{method} {path} {status} is not a problem"
                    );
                }
            }
            assert_eq!(
                responses["429"]["headers"]["Retry-After"]["required"], true,
                "{method} {path}: a 429 always says when to retry"
            );
        }
    }
    assert!(ops >= 40);
    for (method, path, extra) in HANDLER_PROBLEMS {
        let op = &spec["paths"][path][method];
        assert!(op.is_object(), "HANDLER_PROBLEMS names {method} {path}, which is not an operation");
        assert!(!extra.is_empty(), "HANDLER_PROBLEMS row {method} {path} adds nothing");
    }
    let mut links = 0;
    for (method, path, status, to_method, to_path, _, _) in miauflix_gate::http::spec::LINKS {
        assert!(spec["paths"][path][method]["responses"][status].is_object(), "link from {method} {path} {status}");
        assert!(spec["paths"][to_path][to_method].is_object(), "link to {to_method} {to_path}");
        links += 1;
    }
    let written: usize = spec["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().values())
        .flat_map(|op| op["responses"].as_object().unwrap().values())
        .filter_map(|r| r["links"].as_object())
        .map(|l| l.len())
        .sum();
    assert_eq!(written, links, "every row of LINKS is in the document");
    let problem = &spec["components"]["schemas"]["Problem"];
    assert_eq!(problem["required"].as_array().unwrap().len(), 7);
    state.store.close().await;
}

#[tokio::test]
async fn malformed_json_is_a_400_problem() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path()).await;
    let cli = TestClient::new(build_app(state.clone()));
    for (ct, body) in [
        ("application/json", "{bad json"),
        ("application/json", "[]"),
        ("application/json", "{\"email\": \"a@example.com\"}"),
        ("application/json", "{\"email\": \"a@example.com\", \"password\": []}"),
        ("application/json", ""),
    ] {
        let resp = cli.post("/api/auth/login").header("content-type", ct).body(body).send().await;
        assert_eq!(resp.0.status().as_u16(), 400, "{body:?}");
        assert_problem(&resp, 400, "bad-request");
        let b = problem_body(resp).await;
        assert_eq!(b["status"], 400);
        assert!(!b["detail"].as_str().unwrap().contains('\n'));
    }
    // A missing or wrong content type is a problem too.
    let resp = cli.post("/api/auth/login").header("content-type", "text/plain").body("{}").send().await;
    assert!(resp.0.status().is_client_error());
    assert_eq!(resp.0.headers().get("content-type").unwrap(), "application/problem+json");
    state.store.close().await;
}

#[test]
fn the_embedded_ui_stays_within_its_size_budget() {
    let total = miauflix_gate::http::ui::total_bytes();
    assert!(total > 10_000, "the UI is embedded ({total} bytes)");
    assert!(total <= 400 * 1024, "UI assets are {total} bytes; the budget is 400 KB");
}
