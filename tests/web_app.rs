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
/// `?csp=1`: with a Content-Security-Policy of its own.
#[handler]
fn echo(req: &Request) -> poem::Response {
    let names: Vec<&str> = req.headers().iter().map(|(k, _)| k.as_str()).collect();
    let headers: serde_json::Map<String, Value> =
        req.headers().iter().map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or("")))).collect();
    let body = Json(json!({"upstream": true, "path": req.uri().path(), "headers": headers, "names": names}));
    let mut resp = poem::IntoResponse::into_response(body);
    if req.uri().query() == Some("csp=1") {
        resp.headers_mut().insert("content-security-policy", UPSTREAM_CSP.parse().unwrap());
    }
    resp
}

const UPSTREAM_CSP: &str = "default-src 'none'; img-src https://cdn.example";
const ROUTE_CSP: &str = "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Asserts that `csp` is the routes' default: the four directives, and nothing that would
/// keep a cross-origin `<img>` or `<video>` (a TMDB poster, a trailer) from loading.
fn assert_default_route_csp(csp: &str) {
    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    for d in ["script-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"] {
        assert!(directives.contains(&d), "{d} missing from {csp}");
    }
    for name in ["default-src", "img-src", "media-src"] {
        assert!(!directives.iter().any(|d| d.starts_with(name)), "{name} in {csp}");
    }
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

/// A built single-page app as Vite writes it, a directory outside it with a secret, and
/// symlinks from the one into the other.
fn built_app(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let web = dir.join("web");
    let outside = dir.join("outside");
    std::fs::create_dir_all(web.join("assets")).unwrap();
    std::fs::create_dir_all(web.join("media")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(web.join("index.html"), "<!doctype html><title>Miauflix</title><div id=app></div>").unwrap();
    std::fs::write(web.join("assets/index-3f2a9c1b.js"), "console.log('app')").unwrap();
    std::fs::write(web.join("assets/index-3f2a9c1b.js.br"), "BROTLI-BYTES").unwrap();
    std::fs::write(web.join("assets/index-3f2a9c1b.js.gz"), "GZIP-BYTES").unwrap();
    std::fs::write(web.join("robots.txt"), "User-agent: *").unwrap();
    std::fs::write(web.join(".env"), "TOP-SECRET").unwrap();
    std::fs::write(web.join("swap.txt"), "before").unwrap();
    let video: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(web.join("media/trailer.mp4"), &video).unwrap();
    std::fs::write(outside.join("secret.txt"), "TOP-SECRET").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), web.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, web.join("leakdir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), web.join("assets/index-3f2a9c1b.css.br")).unwrap();
    std::fs::write(web.join("assets/index-3f2a9c1b.css"), "body{}").unwrap();
    // An extensionless name for a file outside, and an alias of a hashed asset.
    std::os::unix::fs::symlink(outside.join("secret.txt"), web.join("secretlink")).unwrap();
    std::os::unix::fs::symlink(web.join("assets/index-3f2a9c1b.js"), web.join("current.js")).unwrap();
    (web, video)
}

const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_web_app_is_served_from_its_directory() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let (web, video) = built_app(dir.path());
    let gate = start(
        dir.path(),
        &format!(
            "[[routes]]\nprefix = \"/\"\nstatic_dir = \"{}\"\nspa_fallback = true\nmin_role = \"public\"\nrate_class = \"stream\"\n\
             [[routes]]\nprefix = \"/api\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\n\
             [[routes]]\nprefix = \"/vault\"\nstatic_dir = \"{}\"\nmin_role = \"user\"\n",
            web.display(),
            web.display()
        ),
    );
    let index = std::fs::read(web.join("index.html")).unwrap();

    // The app shell: `/` and every deep link a browser navigates to, never cached stale.
    for target in ["/", "/index.html", "/movies/42", "/tv/7/season/2", "/settings"] {
        let r = get(&gate, target, &[HTML]).await;
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert_eq!(r.body, index, "{target}");
        assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8", "{target}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{target}");
    }
    // Not HTML, or with an extension: a missing file is a 404, not the shell.
    for (target, accept) in [
        ("/movies/42", "application/json"),
        ("/movies/42", "*/*"),
        ("/assets/index-00000000.js", HTML.1),
        ("/assets/missing.css", HTML.1),
        ("/favicon.ico", HTML.1),
    ] {
        let r = get(&gate, target, &[("accept", accept)]).await;
        assert_eq!(r.status, 404, "{target} ({accept}): {r:?}");
        assert_eq!(header(&r, "content-type"), "application/problem+json");
    }

    // A hashed asset: cached for a year, validated by its ETag.
    let r = get(&gate, "/assets/index-3f2a9c1b.js", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"console.log('app')");
    assert!(header(&r, "content-type").contains("javascript"), "{r:?}");
    assert_eq!(header(&r, "cache-control"), "public, max-age=31536000, immutable");
    assert_eq!(header(&r, "vary"), "Accept-Encoding");
    assert!(r.headers.get("content-encoding").is_none());
    let etag = header(&r, "etag").to_string();
    assert!(etag.starts_with('"'), "{etag}");
    let r = get(&gate, "/assets/index-3f2a9c1b.js", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(get(&gate, "/assets/index-3f2a9c1b.js", &[("if-none-match", "\"other\"")]).await.status, 200);
    assert_eq!(get(&gate, "/robots.txt", &[]).await.headers["cache-control"], "no-cache");

    // Precompressed siblings, only when accepted; each its own representation (ETag).
    let r = get(&gate, "/assets/index-3f2a9c1b.js", &[("accept-encoding", "gzip, deflate, br")]).await;
    assert_eq!((r.body.as_slice(), header(&r, "content-encoding")), (&b"BROTLI-BYTES"[..], "br"));
    assert!(header(&r, "content-type").contains("javascript"));
    assert_ne!(header(&r, "etag"), etag);
    let r = get(&gate, "/assets/index-3f2a9c1b.js", &[("accept-encoding", "gzip")]).await;
    assert_eq!((r.body.as_slice(), header(&r, "content-encoding")), (&b"GZIP-BYTES"[..], "gzip"));
    let r = get(&gate, "/assets/index-3f2a9c1b.js", &[("accept-encoding", "br;q=0, gzip;q=0")]).await;
    assert_eq!(r.body, b"console.log('app')");
    assert!(r.headers.get("content-encoding").is_none());
    // A sibling that is a symlink out of the directory is not served; the file itself is.
    let r = get(&gate, "/assets/index-3f2a9c1b.css", &[("accept-encoding", "br")]).await;
    assert_eq!(r.body, b"body{}");
    assert!(r.headers.get("content-encoding").is_none());

    // Ranges on a video: the right bytes, and a 416 for a range outside the file.
    for (range, from, to) in [("bytes=100-199", 100, 199), ("bytes=9990-", 9990, 9999), ("bytes=-10", 9990, 9999)] {
        let r = get(&gate, "/media/trailer.mp4", &[("range", range)]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(header(&r, "content-range"), format!("bytes {from}-{to}/10000"));
        assert_eq!(header(&r, "content-type"), "video/mp4");
        assert_eq!(r.body, video[from..=to], "{range}");
    }
    let r = get(&gate, "/media/trailer.mp4", &[("range", "bytes=10000-20000")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(header(&r, "content-range"), "bytes */10000");
    let r = get(&gate, "/media/trailer.mp4", &[]).await;
    assert_eq!((r.status, r.body.len(), header(&r, "accept-ranges")), (200, 10_000, "bytes"));
    let r = http_request(gate.addr, "HEAD", "/media/trailer.mp4", None, &[]).await.unwrap();
    assert_eq!((r.status, header(&r, "content-length"), r.body.len()), (200, "10000", 0));

    // Nothing outside the directory, however spelt, and no dot files or listings.
    for target in [
        "/../outside/secret.txt",
        "/assets/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/assets/%2e%2e/%2e%2e/outside/secret.txt",
        "/assets/..%2f..%2foutside%2fsecret.txt",
        "/assets%2f..%2f..%2foutside%2fsecret.txt",
        "/..%5c..%5coutside%5csecret.txt",
        "/leak.txt",
        "/leakdir/secret.txt",
        "/leakdir/",
        "/.env",
        "/%2eenv",
        "/assets/",
        "/media",
    ] {
        let r = get(&gate, target, &[("accept", "*/*")]).await;
        assert!(matches!(r.status, 400 | 404), "{target}: {r:?}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("TOP-SECRET") && !text.contains("trailer"), "{target}: {text}");
    }
    // A file swapped for a symlink out of the directory after startup.
    assert_eq!(get(&gate, "/swap.txt", &[]).await.body, b"before");
    std::fs::remove_file(web.join("swap.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside/secret.txt"), web.join("swap.txt")).unwrap();
    let r = get(&gate, "/swap.txt", &[]).await;
    assert_eq!(r.status, 404);
    assert!(!String::from_utf8_lossy(&r.body).contains("TOP-SECRET"));

    // The routes' default CSP on the app (posters from image.tmdb.org load); the gate's own
    // pages and problems keep the strict one.
    for target in ["/", "/movies/42", "/assets/index-3f2a9c1b.js"] {
        assert_default_route_csp(header(&get(&gate, target, &[HTML]).await, "content-security-policy"));
    }
    // The edge's other steps hold for files as for proxied answers: request id, the route's
    // rate class, the security headers.
    let r = get(&gate, "/assets/index-3f2a9c1b.js", &[]).await;
    for name in [
        "x-request-id",
        "ratelimit",
        "ratelimit-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
    ] {
        assert!(r.headers.contains_key(name), "{name} missing on a static answer: {r:?}");
    }
    assert!(header(&r, "ratelimit-policy").starts_with("1200;"), "the route's stream class: {r:?}");
    let strict = header(&get(&gate, "/admin/", &[]).await, "content-security-policy").to_string();
    assert!(strict.starts_with("default-src 'self'"), "{strict}");
    let missing = get(&gate, "/favicon.ico", &[]).await;
    assert!(header(&missing, "content-security-policy").starts_with("default-src 'self'"));

    // Only GET and HEAD; the role of a route holds for files too; other routes still proxy.
    let r = http_request(gate.addr, "POST", "/movies", Some(b"{}"), &[]).await.unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(header(&r, "allow"), "GET, HEAD");
    assert_eq!(get(&gate, "/vault/index.html", &[]).await.status, 401);
    // A symlink out of the directory answers as a missing name does, so the fallback is no
    // oracle for what exists outside; an alias is cached by its own name, not its target's.
    let outside = get(&gate, "/secretlink", &[HTML]).await;
    let missing = get(&gate, "/leakdir/no-such-name", &[HTML]).await;
    assert_eq!((outside.status, &outside.body), (missing.status, &missing.body));
    assert_eq!(outside.body, index);
    let alias = get(&gate, "/current.js", &[]).await;
    assert_eq!(alias.status, 200);
    assert_eq!(header(&alias, "cache-control"), "no-cache", "an alias is not immutable for a year");
    let etag = header(&alias, "etag");
    assert!(etag.len() == 26 && etag.trim_matches('"').bytes().all(|b| b.is_ascii_hexdigit()), "{etag}");
    // A route above public answers for one user: `private` even where it revalidates.
    let setup = std::fs::read_to_string(dir.path().join("data/setup-token")).unwrap();
    let body =
        json!({"email": "admin@example.com", "password": "correct horse battery staple", "setupToken": setup.trim()});
    let r = http_request(gate.addr, "POST", "/api/auth/setup", Some(body.to_string().as_bytes()), &[]).await.unwrap();
    assert!(r.status < 300, "{r:?}");
    let body = json!({"email": "admin@example.com", "password": "correct horse battery staple"});
    let r = http_request(gate.addr, "POST", "/api/auth/token", Some(body.to_string().as_bytes()), &[]).await.unwrap();
    let bearer =
        format!("Bearer {}", serde_json::from_slice::<Value>(&r.body).unwrap()["access_token"].as_str().unwrap());
    for (target, want) in [
        ("/vault/robots.txt", "private, no-cache"),
        ("/vault/index.html", "private, no-cache"),
        ("/vault/assets/index-3f2a9c1b.js", "private, max-age=31536000, immutable"),
    ] {
        let r = get(&gate, target, &[("authorization", &bearer)]).await;
        assert_eq!((r.status, header(&r, "cache-control")), (200, want), "{target}");
    }
    assert!(reached_upstream(&get(&gate, "/api/lists", &[]).await));
    assert_eq!(get(&gate, "/api/auth/session", &[]).await.status, 401);
    assert!(gate.terminate().success());
}

#[test]
fn static_routes_are_checked_at_load() {
    use miauflix_gate::config::{Config, Overrides};
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().display().to_string();
    let load = |route: &str| {
        let f = dir.path().join("g.toml");
        std::fs::write(&f, format!("[[routes]]\nprefix = \"/\"\n{route}\n")).unwrap();
        Config::load(Some(&f), Vec::new(), &Overrides::default()).map_err(|e| e.to_string())
    };
    assert!(load(&format!("static_dir = \"{web}\"\nspa_fallback = true\nmin_role = \"public\"")).is_ok());
    for (route, says) in [
        (format!("static_dir = \"{web}\"\nupstream = \"http://127.0.0.1:9\""), "not both"),
        ("static_dir = \"relative/web\"".to_string(), "existing directory"),
        (format!("static_dir = \"{web}/missing\""), "existing directory"),
        (format!("static_dir = \"{web}/g.toml\""), "existing directory"),
        ("upstream = \"http://127.0.0.1:9\"\nspa_fallback = true".to_string(), "spa_fallback needs static_dir"),
        (format!("static_dir = \"{web}\"\nstrip_prefix = true"), "do not apply"),
        ("min_role = \"public\"".to_string(), "upstream"),
    ] {
        let e = load(&route).unwrap_err();
        assert!(e.contains("routes[0]") && e.contains(says), "{route}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_get_the_default_csp_unless_the_upstream_or_the_route_sets_one() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = start(
        dir.path(),
        &format!(
            "[[routes]]\nprefix = \"/api\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\n\
             [[routes]]\nprefix = \"/own\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\ncsp = \"default-src 'self'; img-src *\"\n\
             [[routes]]\nprefix = \"/private\"\nupstream = \"http://{up}\"\nmin_role = \"user\"\n"
        ),
    );
    assert_default_route_csp(header(&get(&gate, "/api/lists", &[]).await, "content-security-policy"));
    // The upstream's own policy is kept; the route's replaces either.
    assert_eq!(header(&get(&gate, "/api/lists?csp=1", &[]).await, "content-security-policy"), UPSTREAM_CSP);
    assert_eq!(header(&get(&gate, "/own/x", &[]).await, "content-security-policy"), "default-src 'self'; img-src *");
    assert_eq!(
        header(&get(&gate, "/own/x?csp=1", &[]).await, "content-security-policy"),
        "default-src 'self'; img-src *"
    );
    // The gate's own answers on a route (a 401 problem) and its pages keep the strict policy.
    let r = get(&gate, "/private/x", &[]).await;
    assert_eq!(r.status, 401);
    assert!(header(&r, "content-security-policy").starts_with("default-src 'self'"));
    assert!(header(&get(&gate, "/admin/", &[]).await, "content-security-policy").starts_with("default-src 'self'"));
    assert!(gate.terminate().success());
}

#[test]
fn a_routes_csp_is_one_printable_line() {
    use miauflix_gate::config::{Config, Overrides};
    let dir = tempfile::tempdir().unwrap();
    let load = |csp: &str| {
        let f = dir.path().join("g.toml");
        let route =
            format!("[[routes]]\nprefix = \"/x\"\nupstream = \"http://127.0.0.1:9\"\ncsp = {}\n", toml_str(csp));
        std::fs::write(&f, route).unwrap();
        Config::load(Some(&f), Vec::new(), &Overrides::default()).map_err(|e| e.to_string())
    };
    assert!(load(ROUTE_CSP).is_ok());
    for bad in
        ["", "  ", "script-src 'self'\r\nSet-Cookie: x=1", "a\nb", "a\tb", "a\u{7f}", "img-src caf\u{e9}.example"]
    {
        let e = load(bad).unwrap_err();
        assert!(e.contains("routes[0]") && e.contains("csp"), "{bad:?}: {e}");
    }
    assert!(load(&"a".repeat(5000)).is_err());
}

/// A TOML basic string for any text.
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap().replace('\u{7f}', "\\u007F")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_gates_x_real_ip_and_never_the_clients() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = start(
        dir.path(),
        &format!("[[routes]]\nprefix = \"/api\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\n"),
    );
    for spoof in [
        &[("x-real-ip", "6.6.6.6")][..],
        &[("x-real-ip", "6.6.6.6"), ("X-Real-IP", "7.7.7.7")],
        &[("X-REAL-IP", "6.6.6.6"), ("x_real_ip", "7.7.7.7"), ("x-real_ip", "8.8.8.8")],
        &[],
    ] {
        let r = get(&gate, "/api/x", spoof).await;
        let seen = r.json();
        let names = seen["names"].as_array().unwrap();
        let real: Vec<&Value> = names.iter().filter(|n| n.as_str().unwrap().replace('_', "-") == "x-real-ip").collect();
        assert_eq!(real.len(), 1, "exactly the gate's one X-Real-IP ({spoof:?}): {names:?}");
        assert_eq!(seen["headers"]["x-real-ip"], "127.0.0.1", "{spoof:?}");
        assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    }
    assert!(gate.terminate().success());
}

/// The README's "Replacing Miauflix's nginx" configuration, as written, loads (with the web
/// directory and data dir put in a temporary directory).
#[test]
fn the_readmes_nginx_replacement_config_loads() {
    use miauflix_gate::config::{Config, Overrides};
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("### Replacing Miauflix's nginx").nth(1).expect("the README has the section");
    let toml = section.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("web")).unwrap();
    let toml = toml
        .replace("/srv/miauflix/web", &dir.path().join("web").display().to_string())
        .replace("/var/lib/miauflix-gate", &dir.path().join("data").display().to_string());
    let f = dir.path().join("gate.toml");
    std::fs::write(&f, toml).unwrap();
    let c = Config::load(Some(&f), Vec::new(), &Overrides::default()).unwrap();
    let web = c.routes.iter().find(|r| r.prefix == "/").unwrap();
    assert!(web.static_dir.is_some() && web.spa_fallback);
    assert!(c.routes.iter().any(|r| r.prefix == "/api" && r.upstream.starts_with("http://")));
    assert_eq!(c.warnings(), Vec::<String>::new(), "`config check` has nothing to say about it");
}

/// Every path the gate's API documents is reserved, so a catch-all route can never take one
/// (an endpoint added outside the reserved prefixes fails here, not in production).
#[test]
fn every_documented_path_is_the_gates_own() {
    let doc: Value =
        serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/openapi.json"))).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() > 30);
    for path in paths.keys() {
        let concrete = path.replace(['{', '}'], "");
        assert!(miauflix_gate::paths::is_reserved_path(&concrete), "{path} is not under a reserved prefix");
        assert!(miauflix_gate::paths::is_reserved_path(&concrete.to_ascii_uppercase()), "{path} in upper case");
    }
    for page in ["/admin", "/admin/users", "/api/docs", "/api/openapi.json"] {
        assert!(miauflix_gate::paths::is_reserved_path(page), "{page}");
    }
}
