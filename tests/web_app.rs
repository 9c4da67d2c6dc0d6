//! The gate in nginx's place in front of Miauflix, against the real binary: a catch-all route
//! at `/` that never shadows the gate's own paths, the built web app served from a directory,
//! and the routes' default Content-Security-Policy.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::{Gate, Reply, http_request};
use poem::listener::TcpAcceptor;
use poem::web::Json;
use poem::{Request, Route, handler};
use serde_json::{Value, json};

/// An upstream that says what it received: `{"upstream": true, "path", "headers", "names"}`
/// (`names`: every header line's name, in order, duplicates included).
#[handler]
fn echo(req: &Request) -> Json<Value> {
    let names: Vec<&str> = req.headers().iter().map(|(k, _)| k.as_str()).collect();
    let headers: serde_json::Map<String, Value> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or("")))).collect();
    Json(json!({"upstream": true, "path": req.uri().path(), "headers": headers, "names": names}))
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(async move { poem::Server::new_with_acceptor(acceptor).run(Route::new().at("/*", echo)).await });
    addr
}

/// The binary, plain HTTP on loopback, with `routes` (TOML) and limits out of the way.
fn start(dir: &Path, routes: &str) -> Gate {
    let cfg = dir.join("gate.toml");
    let limits = "[rate_limits.global]\nper_minute = 100000\nburst = 10000\n[rate_limits.api]\nper_minute = 100000\nburst = 10000\n";
    std::fs::write(&cfg, format!("{limits}{routes}")).unwrap();
    Gate::start(&dir.join("data"), &[("MIAUFLIX_TLS", "off"), ("MIAUFLIX_CONFIG", cfg.to_str().unwrap())])
}

async fn get(gate: &Gate, target: &str, headers: &[(&str, &str)]) -> Reply {
    let headers: Vec<(&str, String)> = headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
    http_request(gate.addr, "GET", target, None, &headers).await.unwrap_or_else(|e| panic!("{target}: {e}"))
}

fn reached_upstream(r: &Reply) -> bool {
    serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["upstream"] == true)
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_all_route_never_shadows_the_gates_own_paths() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = start(
        dir.path(),
        &format!(
            "[[routes]]\nprefix = \"/\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"http://{up}/backend\"\nmin_role = \"public\"\nstrip_prefix = true\n"
        ),
    );

    // The gate's own answers, each recognisable as the gate's.
    let r = get(&gate, "/api/auth/session", &[]).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    let r = get(&gate, "/admin/", &[]).await;
    assert_eq!(r.status, 200);
    assert!(header(&r, "content-type").starts_with("text/html") && !reached_upstream(&r));
    let r = get(&gate, "/.well-known/jwks.json", &[]).await;
    assert!(r.json()["keys"].is_array(), "{r:?}");
    assert_eq!(get(&gate, "/healthz", &[]).await.status, 200);
    assert!(get(&gate, "/api/openapi.json", &[]).await.json()["openapi"].is_string());
    let r = http_request(gate.addr, "POST", "/api/auth/login", Some(b"{\"email\":\"a@b.c\",\"password\":\"x\"}"), &[])
        .await
        .unwrap();
    assert!(r.status == 401 || r.status == 400, "{r:?}");
    assert!(!reached_upstream(&r));

    // Other spellings of the gate's paths are the gate's too (a 404, a redirect or its own
    // answer), never the catch-all's upstream: a case-insensitive upstream would read them as
    // its own /admin or /api/auth.
    for target in [
        "/%61dmin/",
        "//admin",
        "//admin/",
        "/ADMIN/",
        "/Admin",
        "/admin/../x",
        "/api/auth/../x",
        "/api/auth/%2e%2e/x",
        "/api/%61uth/session",
        "/API/AUTH/login",
        "/Api/Auth/session",
        "/.WELL-KNOWN/jwks.json",
        "/.well-known/../x",
        "/Metrics",
        "/HEALTHZ",
        "/api/docs/",
        "/API/DOCS",
        "/api/openapi.json/x",
        "/admin%2F",
        "/%2e%2e/admin",
        "/api/me",
        "/api/users",
        "/api/Users",
        "/api/vpn",
        "/api/system/status",
    ] {
        let r = get(&gate, target, &[]).await;
        assert!(!reached_upstream(&r), "{target} reached the upstream: {}", String::from_utf8_lossy(&r.body));
    }

    // Everything else is the routes': the longest prefix, then the catch-all, `/` included.
    for (target, seen) in [
        ("/", "/"),
        ("/movies/42", "/movies/42"),
        ("/%6dovies", "/movies"),
        ("/administrator", "/administrator"),
        ("/assets/admin.js", "/assets/admin.js"),
        ("/api/lists/1", "/backend/lists/1"),
        ("/api", "/backend/"),
        ("/metricsx", "/metricsx"),
    ] {
        let r = get(&gate, target, &[]).await;
        assert!(reached_upstream(&r), "{target}: {r:?}");
        assert_eq!(r.json()["path"], seen, "{target}");
    }
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_catch_all_the_root_redirects_to_the_admin_ui() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = start(
        dir.path(),
        &format!("[[routes]]\nprefix = \"/media\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\n"),
    );
    let r = get(&gate, "/", &[]).await;
    assert_eq!(r.status, 303);
    assert_eq!(header(&r, "location"), "/admin/");
    assert_eq!(get(&gate, "/movies", &[]).await.status, 404);
    assert!(gate.terminate().success());
}
