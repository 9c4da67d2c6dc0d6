//! The reverse proxy against a real upstream HTTP server on loopback, forward auth, and
//! signed stream URLs.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use miauflix_gate::config::{Config, Overrides};
use miauflix_gate::http::{AppState, build_app};
use poem::listener::TcpAcceptor;
use poem::test::{TestClient, TestResponse};
use poem::web::Json as PJson;
use poem::{Request, Response, Route, get, handler};
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct-horse-battery";
type Client = TestClient<poem::endpoint::BoxEndpoint<'static, poem::Response>>;

#[handler]
fn echo(req: &Request) -> Response {
    let headers: serde_json::Map<String, Value> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or("")))).collect();
    let mut resp = poem::IntoResponse::into_response(PJson(
        json!({"path": req.uri().path(), "query": req.uri().query(), "headers": headers}),
    ));
    // `?cors=1`: an upstream that opens itself to every site.
    if req.uri().query() == Some("cors=1") {
        let h = resp.headers_mut();
        h.insert("access-control-allow-origin", "*".parse().unwrap());
        h.insert("access-control-allow-credentials", "true".parse().unwrap());
        h.insert("access-control-allow-methods", "DELETE".parse().unwrap());
    }
    resp
}

const BIG: u64 = 100 * 1024 * 1024;

#[handler]
fn big() -> Response {
    // 100 MiB generated on the fly, in 64 KiB chunks.
    let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let stream =
        futures_util::stream::iter((0..BIG / (64 * 1024)).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    Response::builder().header("content-type", "application/octet-stream").body(poem::Body::from_bytes_stream(stream))
}

#[handler]
fn ranged(req: &Request) -> Response {
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    match req.headers().get("range").and_then(|v| v.to_str().ok()).and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) => {
            let (a, b) = spec.split_once('-').unwrap();
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            Response::builder()
                .status(poem::http::StatusCode::PARTIAL_CONTENT)
                .header("content-range", format!("bytes {a}-{b}/1000"))
                .header("accept-ranges", "bytes")
                .body(data[a..=b].to_vec())
        }
        None => Response::builder().header("accept-ranges", "bytes").body(data),
    }
}

#[handler]
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

#[handler]
fn ws_echo(ws: poem::web::websocket::WebSocket, req: &Request) -> impl poem::IntoResponse {
    let who = req.headers().get("x-miauflix-email").and_then(|v| v.to_str().ok()).unwrap_or("nobody").to_string();
    ws.on_upgrade(move |mut socket| async move {
        use futures_util::{SinkExt, StreamExt};
        while let Some(Ok(msg)) = socket.next().await {
            if let poem::web::websocket::Message::Text(t) = msg {
                let _ = socket.send(poem::web::websocket::Message::Text(format!("{who}:{t}"))).await;
            }
        }
    })
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Route::new()
        .at("/api/lists/ws", get(ws_echo))
        .at("/big", get(big))
        .at("/file", get(ranged))
        .at("/slow", get(slow))
        .at("/*path", echo);
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(async move { poem::Server::new_with_acceptor(acceptor).run(app).await });
    addr
}

fn routes_toml(up: SocketAddr) -> String {
    format!(
        r#"
[rate_limits.auth]
per_minute = 100000
burst = 10000
[rate_limits.api]
per_minute = 100000
burst = 10000
[rate_limits.global]
per_minute = 100000
burst = 10000
[[routes]]
prefix = "/api/lists"
upstream = "http://{up}"
min_role = "user"
[[routes]]
prefix = "/public"
upstream = "http://{up}/base"
min_role = "public"
strip_prefix = true
[[routes]]
prefix = "/stream"
upstream = "http://{up}"
min_role = "guest"
rate_class = "stream"
stream_keys = true
[[routes]]
prefix = "/torrent"
upstream = "http://{up}"
min_role = "user"
requires_vpn = true
[[routes]]
prefix = "/slow"
upstream = "http://{up}"
min_role = "public"
timeout_secs = 1
[[routes]]
prefix = "/dead"
upstream = "http://127.0.0.1:1"
min_role = "public"
[[routes]]
prefix = "/files"
upstream = "http://{up}"
min_role = "user"
strip_prefix = true
[[routes]]
prefix = "/media"
upstream = "http://{up}"
min_role = "public"
[[routes]]
prefix = "/media/private"
upstream = "http://{up}"
min_role = "admin"
[[routes]]
prefix = "/adminonly"
upstream = "http://{up}"
min_role = "admin"
csp = "default-src 'none'"
"#
    )
}

async fn open(up: SocketAddr) -> (Client, Arc<AppState>, tempfile::TempDir) {
    let common::app::App { state, dir } = common::app::App::open(Some(&routes_toml(up)), &[]).await;
    let cli = common::app::client(&state).default_header("origin", "http://gate.test");
    let token = std::fs::read_to_string(state.config.setup_token_path()).unwrap();
    state.auth.complete_setup(ADMIN, PW.to_string().into(), token.trim(), &Default::default()).await.unwrap();
    (cli, state, dir)
}

async fn token(cli: &Client, email: &str) -> String {
    let r = cli.post("/api/auth/token").body_json(&json!({"email": email, "password": PW})).send().await;
    assert_eq!(r.0.status(), 200);
    body(r).await["access_token"].as_str().unwrap().to_string()
}

async fn body(r: TestResponse) -> Value {
    serde_json::from_str(&r.0.into_body().into_string().await.unwrap()).unwrap_or(Value::Null)
}

async fn user(cli: &Client, admin: &str, email: &str, role: &str) -> String {
    let r = cli
        .post("/api/users")
        .header("authorization", format!("Bearer {admin}"))
        .body_json(&json!({"email": email, "password": PW, "role": role}))
        .send()
        .await;
    assert_eq!(r.0.status(), 201);
    token(cli, email).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_reach_the_upstream_and_spoofed_ones_do_not() {
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    let alice = user(&cli, &admin, "alice@example.com", "user").await;
    let r = cli
        .get("/api/lists/42?sort=new")
        .header("authorization", format!("Bearer {alice}"))
        .header("x-miauflix-role", "admin")
        .header("x-miauflix-user", "someone-else")
        .header("remote-user", "root")
        .header("cookie", "__miauflix_at_x=secret; theme=dark")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        // CGI/WSGI-style upstreams map `_` and `-` to the same variable.
        .header("x-miauflix_role", "admin")
        .header("remote_user", "root")
        .header("x_forwarded_for", "6.6.6.6")
        .header("x-other_header", "kept")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .send()
        .await;
    assert_eq!(r.0.status(), 200);
    assert!(r.0.headers().get("content-security-policy").is_some(), "security headers on proxied responses");
    let b = body(r).await;
    let h = &b["headers"];
    assert_eq!(b["path"], "/api/lists/42");
    assert_eq!(b["query"], "sort=new");
    assert_eq!(h["x-miauflix-role"], "user", "{h}");
    assert_eq!(h["x-miauflix-email"], "alice@example.com");
    assert_ne!(h["x-miauflix-user"], "someone-else");
    assert!(h.get("remote-user").is_none());
    for spelt in ["x-miauflix_role", "remote_user", "x_forwarded_for", "forwarded"] {
        assert!(h.get(spelt).is_none(), "{spelt}: only the gate states who and where the client is: {h}");
    }
    assert_eq!(h["x-other_header"], "kept", "other names with `_` pass");
    assert!(h.get("authorization").is_none(), "the gate's credentials stay at the gate");
    assert_eq!(h["cookie"], "theme=dark");
    assert!(h.get("x-drop-me").is_none(), "headers named in Connection are hop-by-hop");
    assert_ne!(h["x-forwarded-for"], "6.6.6.6", "an untrusted peer's X-Forwarded-For is not believed");
    assert_ne!(h["x-real-ip"], "6.6.6.6", "the client's X-Real-IP is not passed on");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "gate.test");

    // Public route with prefix stripping onto an upstream base path, no credentials needed.
    let b = body(cli.get("/public/a/b").send().await).await;
    assert_eq!(b["path"], "/base/a/b");
    assert!(b["headers"].get("x-miauflix-user").is_none());
    state.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_policies_fail_closed() {
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    let guest = user(&cli, &admin, "kid@example.com", "guest").await;
    let userx = user(&cli, &admin, "u@example.com", "user").await;
    assert_eq!(cli.get("/api/lists").send().await.0.status(), 401);
    assert_eq!(cli.get("/api/lists").header("authorization", format!("Bearer {guest}")).send().await.0.status(), 403);
    assert_eq!(cli.get("/adminonly/x").header("authorization", format!("Bearer {userx}")).send().await.0.status(), 403);
    let r = cli.get("/adminonly/x").header("authorization", format!("Bearer {admin}")).send().await;
    assert_eq!(r.0.headers().get("content-security-policy").unwrap(), "default-src 'none'", "per-route CSP");
    // The VPN is not configured, so VPN routes are down: 503, never a leak.
    let r = cli.get("/torrent/add").header("authorization", format!("Bearer {userx}")).send().await;
    assert_eq!(r.0.status(), 503);
    assert_eq!(body(r).await["type"], "urn:miauflix-gate:problem/vpn-down");
    // Upstream timeout and upstream down.
    let r = cli.get("/slow").send().await;
    assert_eq!(r.0.status(), 504);
    let b = body(r).await;
    assert_eq!(b["type"], "urn:miauflix-gate:problem/upstream-timeout");
    let r = cli.get("/dead/x").send().await;
    assert_eq!(r.0.status(), 502);
    let b = body(r).await;
    assert!(!b.to_string().contains("127.0.0.1:1"), "no upstream internals: {b}");
    // Unknown paths are still 404; the gate's own paths are never proxied.
    assert_eq!(cli.get("/elsewhere").send().await.0.status(), 404);
    // A dot segment could climb out of a public route into a user-only path on an upstream
    // that normalises: never proxied, in any encoding (the echo upstream would answer 200).
    for p in ["/public/../api/lists/1", "/public/%2e%2e/api/lists/1", "/public/..%2Fapi/lists/1", "/public/./x"] {
        let r = cli.get(p).send().await;
        assert_eq!(r.0.status(), 404, "{p}");
        assert_eq!(body(r).await["type"], "urn:miauflix-gate:problem/not-found", "{p}");
    }
    // The gate answers CORS, not the upstream: an unlisted origin gets no CORS header at all.
    let r = cli.get("/public/x?cors=1").header("origin", "https://evil.example").send().await;
    assert_eq!(r.0.status(), 200);
    let cors: Vec<_> = r.0.headers().keys().filter(|n| n.as_str().starts_with("access-control-")).collect();
    assert!(cors.is_empty(), "the upstream's own CORS headers must not pass: {cors:?}");
    let b = body(cli.get("/public/movie.2024.mkv").send().await).await;
    assert_eq!(b["path"], "/base/movie.2024.mkv", "dots inside a segment are fine");
    state.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_and_ranges_stream_through() {
    use futures_util::StreamExt;
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    let r = cli
        .get("/files/file")
        .header("authorization", format!("Bearer {admin}"))
        .header("range", "bytes=100-199")
        .send()
        .await;
    assert_eq!(r.0.status(), 206);
    assert_eq!(r.0.headers().get("content-range").unwrap(), "bytes 100-199/1000");
    let bytes = r.0.into_body().into_bytes().await.unwrap();
    assert_eq!(bytes.len(), 100);
    assert_eq!(bytes[0], 100, "byte 100 of the file");
    // 100 MiB arrives whole, chunk by chunk.
    let r = cli.get("/files/big").header("authorization", format!("Bearer {admin}")).send().await;
    assert_eq!(r.0.status(), 200);
    let mut stream = r.0.into_body().into_bytes_stream();
    let mut total = 0u64;
    let mut chunks = 0u64;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len() as u64;
        chunks += 1;
    }
    assert_eq!(total, BIG);
    assert!(chunks > 100, "streamed, not buffered into one piece ({chunks} chunks)");
    state.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_applies_route_policy() {
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    let guest = user(&cli, &admin, "kid@example.com", "guest").await;
    let verify = |uri: &'static str, tok: Option<String>| {
        let mut r = cli.get("/api/auth/verify").header("x-original-uri", uri).header("x-original-method", "GET");
        if let Some(t) = tok {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    let r = verify("/api/lists/1", Some(admin.clone())).await;
    assert_eq!(r.0.status(), 200);
    assert_eq!(r.0.headers().get("remote-email").unwrap(), ADMIN);
    assert_eq!(r.0.headers().get("remote-groups").unwrap(), "admin");
    assert!(r.0.headers().get("remote-user").is_some() && r.0.headers().get("remote-name").is_some());
    assert_eq!(verify("/api/lists/1", None).await.0.status(), 401);
    assert_eq!(verify("/api/lists/1", Some(guest.clone())).await.0.status(), 403);
    assert_eq!(verify("/public/x", None).await.0.status(), 200);
    assert_eq!(verify("/not/a/route", Some(admin.clone())).await.0.status(), 403, "default deny");
    assert_eq!(verify("/api/lists/../../admin", Some(admin.clone())).await.0.status(), 403);
    assert_eq!(verify("/api/lists/%2e%2e/%2E%2E/admin", Some(admin.clone())).await.0.status(), 403);
    let r = cli.get("/api/auth/verify").send().await;
    assert_eq!(r.0.status(), 400);
    state.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_stream_urls() {
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    let guest = user(&cli, &admin, "kid@example.com", "guest").await;
    let r = cli
        .post("/api/stream-keys")
        .header("authorization", format!("Bearer {guest}"))
        .body_json(&json!({"path": "/stream/movie-1", "ttlSeconds": 600}))
        .send()
        .await;
    assert_eq!(r.0.status(), 200);
    let b = body(r).await;
    let url = b["url"].as_str().unwrap().to_string();
    assert!(url.starts_with("/stream/movie-1?mf_sk="));
    assert!(b["expiresAt"].as_i64().unwrap() > miauflix_gate::clock::now());

    // Accepted without any header, for the path and below; the key never reaches the upstream.
    let r = cli.get(&url).send().await;
    assert_eq!(r.0.status(), 200);
    let echoed = body(r).await;
    assert_eq!(echoed["headers"]["x-miauflix-email"], "kid@example.com");
    assert!(echoed["query"].is_null() || !echoed["query"].as_str().unwrap().contains("mf_sk"), "{echoed}");
    let below = url.replace("/stream/movie-1?", "/stream/movie-1/seg-3.ts?");
    assert_eq!(cli.get(&below).send().await.0.status(), 200);
    // Another path, a tampered key, an expired key: refused.
    let other = url.replace("/stream/movie-1?", "/stream/movie-2?");
    assert_eq!(cli.get(&other).send().await.0.status(), 401);
    let sibling = url.replace("/stream/movie-1?", "/stream/movie-10?");
    assert_eq!(cli.get(&sibling).send().await.0.status(), 401, "prefix match is segment-aligned");
    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(cli.get(&tampered).send().await.0.status(), 401);
    let p = state.auth.authenticate(&guest, None).unwrap();
    let (expired, _) = state.auth.sign_stream_key(&p, "/stream/movie-1", -5);
    assert_eq!(cli.get(format!("/stream/movie-1?mf_sk={expired}")).send().await.0.status(), 401);
    // A key dies with its session.
    let sid = p.session_id.clone();
    state.auth.logout(&sid, &Default::default()).await.unwrap();
    assert_eq!(cli.get(&url).send().await.0.status(), 401);
    // Keys only for routes that allow them.
    let r = cli
        .post("/api/stream-keys")
        .header("authorization", format!("Bearer {admin}"))
        .body_json(&json!({"path": "/api/lists/1", "ttlSeconds": 60}))
        .send()
        .await;
    assert_eq!(r.0.status(), 400);
    state.store.close().await;
}

#[test]
fn routes_cannot_shadow_the_gates_own_paths() {
    for prefix in
        ["/api/auth", "/api/auth/x", "/admin", "/ADMIN", "/Api/Auth", "/healthz", "/.well-known/x", "relative"]
    {
        let toml = format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:9\"\n");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("g.toml");
        std::fs::write(&f, toml).unwrap();
        let e = Config::load(Some(&f), Vec::new(), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("routes[0]"), "{prefix}: {e}");
    }
    // The catch-all is allowed: the gate's own paths still win over it.
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "[[routes]]\nprefix = \"/\"\nupstream = \"http://127.0.0.1:9\"\n").unwrap();
    assert_eq!(Config::load(Some(f.path()), Vec::new(), &Overrides::default()).unwrap().routes[0].prefix, "/");
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), "[[routes]]\nprefix = \"/x\"\nupstream = \"ftp://h\"\n").unwrap();
    assert!(
        Config::load(Some(f.path()), Vec::new(), &Overrides::default()).unwrap_err().to_string().contains("upstream")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_pass_through_with_identity() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    // The gate on a real socket (TLS off, loopback).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gate = listener.local_addr().unwrap();
    let app = build_app(state.clone());
    tokio::spawn(
        async move { poem::Server::new_with_acceptor(TcpAcceptor::from_tokio(listener).unwrap()).run(app).await },
    );

    let mut req = format!("ws://{gate}/api/lists/ws").into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {admin}").parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(gate).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into())).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("{ADMIN}:hello {i}"));
    }
    ws.close(None).await.unwrap();

    // Without credentials the upgrade is refused before it reaches the upstream.
    let req = format!("ws://{gate}/api/lists/ws").into_client_request().unwrap();
    let tcp = tokio::net::TcpStream::connect(gate).await.unwrap();
    let err = tokio_tungstenite::client_async(req, tcp).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    state.store.close().await;
}

/// What one spelling of a path must come to, at the proxy and at forward auth.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    /// The admin route: anonymous 401, admin 200 with this path upstream.
    Private(&'static str),
    /// The public route: 200 with this path upstream.
    Public(&'static str),
    /// Refused: the gate's 404 (400 for encoded bytes that are not UTF-8), forward auth 403;
    /// never upstream.
    Refused,
    /// Falls under another route when case-folded (or no route at all): 404, forward auth
    /// 401 for anonymous; never upstream.
    NoRoute,
}

/// Spellings an attacker tries to reach `/media/private` (admin) through `/media` (public).
const NESTED_PATHS: &[(&str, Outcome)] = {
    use Outcome::*;
    &[
        ("/media/private/x", Private("/media/private/x")),
        ("/media/private", Private("/media/private")),
        ("/media/private/", Private("/media/private/")),
        ("/media/%70rivate/x", Private("/media/private/x")),
        ("/media/privat%65/x", Private("/media/private/x")),
        ("/media/privat%65", Private("/media/private")),
        ("/media/%70%72%69%76%61%74%65/x", Private("/media/private/x")),
        ("/%6dedia/private/x", Private("/media/private/x")),
        ("/%6Dedia/%70rivate/x", Private("/media/private/x")),
        ("/m%65dia/priv%61te/x", Private("/media/private/x")),
        ("/media/pr%69vate/%78", Private("/media/private/x")),
        ("/media/private/%7euser", Private("/media/private/~user")),
        ("/media/private/a%20b", Private("/media/private/a%20b")),
        ("/media/private/caf%c3%a9", Private("/media/private/caf%C3%A9")),
        ("/media/private/%2570", Private("/media/private/%2570")),
        ("/media/private/x?q=%70", Private("/media/private/x")),
        ("/media/private/a+b", Private("/media/private/a+b")),
        ("/media//private/x", Refused),
        ("/media///private", Refused),
        ("/media/private//x", Refused),
        ("/media/private;/x", Refused),
        ("/media/private;jsessionid=1/x", Refused),
        ("/media;x/private/x", Refused),
        ("/media/x;/../private", Refused),
        ("/media/%2e%2e/media/private/x", Refused),
        ("/media/../media/private/x", Refused),
        ("/media/./private/x", Refused),
        ("/media/.%2e/media/private", Refused),
        ("/media/%2E/private", Refused),
        ("/media%2Fprivate/x", Refused),
        ("/media/%2fprivate/x", Refused),
        ("/media/x%5c..%5cprivate", Refused),
        ("/media/x%5Cprivate", Refused),
        ("/media/%00private", Refused),
        ("/media/private%00", Refused),
        ("/media/%0aprivate", Refused),
        ("/media/%0D%0Aprivate", Refused),
        ("/media/%1f", Refused),
        ("/media/%7f", Refused),
        ("/media/%zz", Refused),
        ("/media/%7", Refused),
        ("/media/%", Refused),
        ("/media/%g1x", Refused),
        ("/media/%c0%af", Refused),
        ("/media/%e0%80%af", Refused),
        ("/media/%c0%aeprivate", Refused),
        ("/media/%ff", Refused),
        ("/media/%c3", Refused),
        ("/media/%80x", Refused),
        ("/media/x%2F..%2Fprivate", Refused),
        ("/media/PRIVATE/x", NoRoute),
        ("/media/Private/x", NoRoute),
        ("/media/privatE", NoRoute),
        ("/media/%50RIVATE/x", NoRoute),
        ("/media/privat%45/x", NoRoute),
        ("/Media/private/x", NoRoute),
        ("/MEDIA/x", NoRoute),
        ("/mediaX", NoRoute),
        ("/media%58", NoRoute),
        ("/media/x", Public("/media/x")),
        ("/media", Public("/media")),
        ("/media/", Public("/media/")),
        ("/media/privatex", Public("/media/privatex")),
        ("/media/private-x", Public("/media/private-x")),
        ("/media/private%2Dx", Public("/media/private-x")),
        ("/media/private.x", Public("/media/private.x")),
        ("/media/x/private", Public("/media/x/private")),
        ("/media/%2570rivate/x", Public("/media/%2570rivate/x")),
        ("/media/%252e%252e/private", Public("/media/%252e%252e/private")),
        ("/media/x%3Bprivate", Public("/media/x%3Bprivate")),
        ("/media/x%3bprivate", Public("/media/x%3Bprivate")),
        ("/media/a+b", Public("/media/a+b")),
        ("/media/a%2bb", Public("/media/a%2Bb")),
        ("/media/%7Euser", Public("/media/~user")),
        ("/media/%41", Public("/media/A")),
        ("/media/a%20b", Public("/media/a%20b")),
        ("/media/caf%C3%A9", Public("/media/caf%C3%A9")),
        ("/media/caf%c3%A9", Public("/media/caf%C3%A9")),
        ("/media/movie.2024.mkv", Public("/media/movie.2024.mkv")),
        ("/media/.hidden", Public("/media/.hidden")),
        ("/media/...", Public("/media/...")),
        ("/media/x:y@z!$&'()*,=", Public("/media/x:y@z!$&'()*,=")),
    ]
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_routes_hold_for_every_spelling_of_a_path() {
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    let guest = user(&cli, &admin, "kid@example.com", "guest").await;
    assert!(NESTED_PATHS.len() >= 60);
    let bearer = |t: &str| format!("Bearer {t}");
    for &(path, want) in NESTED_PATHS {
        let anon = cli.get(path).send().await;
        let anon_status = anon.0.status().as_u16();
        let anon_body = body(anon).await;
        let as_admin = body(cli.get(path).header("authorization", bearer(&admin)).send().await).await;
        let as_guest = cli.get(path).header("authorization", bearer(&guest)).send().await.0.status().as_u16();
        let verify = |tok: Option<&String>| {
            let mut r = cli.get("/api/auth/verify").header("x-original-uri", path);
            if let Some(t) = tok {
                r = r.header("authorization", bearer(t));
            }
            r.send()
        };
        let verify_anon = verify(None).await.0.status().as_u16();
        let verify_admin = verify(Some(&admin)).await.0.status().as_u16();
        let verify_guest = verify(Some(&guest)).await.0.status().as_u16();
        let ctx = format!("{path} ({want:?}): anon {anon_status} {anon_body}, admin {as_admin}");
        match want {
            Outcome::Private(seen) => {
                assert_eq!(anon_status, 401, "{ctx}");
                assert_eq!(as_guest, 403, "{ctx}");
                assert_eq!(as_admin["path"], seen, "the upstream gets the canonical path: {ctx}");
                assert_eq!((verify_anon, verify_guest, verify_admin), (401, 403, 200), "verify {ctx}");
                if let Some((_, q)) = path.split_once('?') {
                    assert_eq!(as_admin["query"], q, "the query goes on as it is: {ctx}");
                }
            }
            Outcome::Public(seen) => {
                assert_eq!(anon_status, 200, "{ctx}");
                assert_eq!(anon_body["path"], seen, "the upstream gets the canonical path: {ctx}");
                assert_eq!((verify_anon, verify_guest, verify_admin), (200, 200, 200), "verify {ctx}");
            }
            Outcome::Refused | Outcome::NoRoute => {
                // The gate's 404 (or its router's 400 for bytes that are not UTF-8), never upstream.
                let gate_own = |b: &Value| {
                    ["urn:miauflix-gate:problem/not-found", "urn:miauflix-gate:problem/bad-request"]
                        .contains(&b["type"].as_str().unwrap_or(""))
                };
                assert!(matches!(anon_status, 404 | 400), "{ctx}");
                assert!(gate_own(&anon_body) && gate_own(&as_admin), "never upstream: {ctx}");
                let anon_verify = if matches!(want, Outcome::Refused) { 403 } else { 401 };
                assert_eq!((verify_anon, verify_guest, verify_admin), (anon_verify, 403, 403), "verify {ctx}");
            }
        }
    }
    state.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_reads_one_uri_header() {
    let up = upstream().await;
    let (cli, state, _d) = open(up).await;
    let admin = token(&cli, ADMIN).await;
    let guest = user(&cli, &admin, "kid@example.com", "guest").await;
    let verify = |headers: &[(&'static str, &'static str)], tok: Option<&String>| {
        let mut r = cli.get("/api/auth/verify");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        if let Some(t) = tok {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.send()
    };
    // The default header is X-Original-URI (nginx sets it itself): a client's X-Forwarded-Uri
    // that a proxy passed on cannot point the check at a public route.
    for spoof in ["/public/x", "/media/x"] {
        for tok in [None, Some(&guest)] {
            let r = verify(&[("x-original-uri", "/adminonly/x"), ("x-forwarded-uri", spoof)], tok).await;
            assert_eq!(r.0.status(), 400, "two URI headers that disagree");
            assert_eq!(r.0.headers().get("content-type").unwrap(), "application/problem+json");
            let r = verify(&[("x-forwarded-uri", spoof), ("x-original-uri", "/adminonly/x")], tok).await;
            assert_eq!(r.0.status(), 400, "in either order");
            let r = verify(&[("x-forwarded-uri", spoof)], tok).await;
            assert_eq!(r.0.status(), 400, "only the other header: refused, not believed");
        }
    }
    // A raw `#` in the original URI (nginx passes it on in $request_uri and to the upstream,
    // which may keep it in the path): the gate judges the whole path, and refuses it.
    for uri in ["/public/x#/../../adminonly/x", "/public/x#/%2e%2e/%2e%2e/adminonly/x", "/public/x#frag"] {
        for tok in [None, Some(&guest)] {
            let r = verify(&[("x-original-uri", uri)], tok).await;
            assert_eq!(r.0.status(), 403, "{uri}: a raw # is refused, not cut off");
        }
    }
    // Two X-Original-URI lines: which one a proxy set cannot be told.
    let r = verify(&[("x-original-uri", "/public/x"), ("x-original-uri", "/adminonly/x")], None).await;
    assert_eq!(r.0.status(), 400);
    assert_eq!(body(r).await["type"], "urn:miauflix-gate:problem/bad-request");
    let r = verify(&[("x-original-uri", "/adminonly/x"), ("x-original-uri", "/adminonly/x")], Some(&admin)).await;
    assert_eq!(r.0.status(), 400, "duplicates are refused even when equal");
    // The same value in both is one answer.
    let r = verify(&[("x-original-uri", "/public/x"), ("x-forwarded-uri", "/public/x")], None).await;
    assert_eq!(r.0.status(), 200);
    // The method header: once, and a method.
    let r = verify(&[("x-original-uri", "/public/x"), ("x-original-method", "GET")], None).await;
    assert_eq!(r.0.status(), 200);
    let r =
        verify(&[("x-original-uri", "/public/x"), ("x-original-method", "GET"), ("x-original-method", "POST")], None)
            .await;
    assert_eq!(r.0.status(), 400);
    let r = verify(
        &[("x-original-uri", "/public/x"), ("x-original-method", "GET"), ("x-forwarded-method", "DELETE")],
        None,
    )
    .await;
    assert_eq!(r.0.status(), 400);
    let r = verify(&[("x-original-uri", "/public/x"), ("x-original-method", "G E T")], None).await;
    assert_eq!(r.0.status(), 400);
    assert_eq!(verify(&[("x-original-uri", "/adminonly/x")], Some(&guest)).await.0.status(), 403);
    assert_eq!(verify(&[("x-original-uri", "/adminonly/x")], Some(&admin)).await.0.status(), 200);
    state.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_can_read_x_forwarded_uri_instead() {
    let up = upstream().await;
    let toml = format!(
        "[forward_auth]\nuri_header = \"x-forwarded-uri\"\nmethod_header = \"x-forwarded-method\"\n{}",
        routes_toml(up)
    );
    let app = common::app::App::open(Some(&toml), &[]).await;
    let (state, cli) = (app.state.clone(), app.client());
    let get = |h: &'static str, v: &'static str| cli.get("/api/auth/verify").header(h, v).send();
    assert_eq!(get("x-forwarded-uri", "/public/x").await.0.status(), 200);
    assert_eq!(get("x-forwarded-uri", "/adminonly/x").await.0.status(), 401);
    // Caddy sets X-Forwarded-Uri and passes a client's X-Original-URI on: refused, not read.
    let r = cli
        .get("/api/auth/verify")
        .header("x-forwarded-uri", "/adminonly/x")
        .header("x-original-uri", "/public/x")
        .send()
        .await;
    assert_eq!(r.0.status(), 400);
    assert_eq!(get("x-original-uri", "/public/x").await.0.status(), 400);
    state.store.close().await;
}

/// One HTTP/1.1 request to the binary with the target sent byte for byte; (status, JSON body).
async fn raw_get(addr: SocketAddr, method: &str, target: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nConnection: close\r\n");
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_proxies_the_canonical_path_only() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, routes_toml(up)).unwrap();
    let data = dir.path().join("data");
    let gate = common::Gate::start(&data, &[("MIAUFLIX_TLS", "off"), ("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    let setup = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let body = json!({"email": ADMIN, "password": PW, "setupToken": setup.trim()}).to_string();
    let (status, _) = raw_get(gate.addr, "POST", "/api/auth/setup", None, &body).await;
    assert!(status == 200 || status == 201, "setup: {status}");
    let body = json!({"email": ADMIN, "password": PW}).to_string();
    let (status, tok) = raw_get(gate.addr, "POST", "/api/auth/token", None, &body).await;
    assert_eq!(status, 200);
    let admin = tok["access_token"].as_str().unwrap().to_string();
    for &(path, want) in NESTED_PATHS {
        let (anon, anon_body) = raw_get(gate.addr, "GET", path, None, "").await;
        let (_, admin_body) = raw_get(gate.addr, "GET", path, Some(&admin), "").await;
        let ctx = format!("{path} ({want:?}): anon {anon} {anon_body}, admin {admin_body}");
        match want {
            Outcome::Private(seen) => {
                assert_eq!(anon, 401, "{ctx}");
                assert_eq!(admin_body["path"], seen, "{ctx}");
            }
            Outcome::Public(seen) => {
                assert_eq!(anon, 200, "{ctx}");
                assert_eq!(anon_body["path"], seen, "{ctx}");
            }
            Outcome::Refused | Outcome::NoRoute => {
                assert!(matches!(anon, 400 | 404), "{ctx}");
                assert!(anon_body.get("path").is_none() && admin_body.get("path").is_none(), "never upstream: {ctx}");
            }
        }
    }
    gate.terminate();
}
