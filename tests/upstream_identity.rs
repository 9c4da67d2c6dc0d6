//! What an upstream behind the gate can verify: the signed identity assertion
//! (`X-Miauflix-Assertion`, checked here the way a backend would — the gate's JWKS fetched
//! over real HTTP, `aud`, `htm`, `htu`, `exp`) and the configured upstream headers (the
//! shared secret Miauflix's backend checks before it believes `X-Forwarded-For`).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use poem::listener::TcpAcceptor;
use poem::{Request, Response, Route, handler};
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct horse battery staple";
const SHARED: &str = "shared-Value-7f3a-not-in-toml";

/// What the upstream saw: (path, headers as lowercase name → values).
type Seen = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

async fn upstream(seen: Seen) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    #[handler]
    fn record(req: &Request, seen: poem::web::Data<&Seen>) -> Response {
        let headers =
            req.headers().iter().map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string())).collect();
        seen.lock().unwrap().push((req.uri().path().to_string(), headers));
        // An upstream that echoes what it got: the shared values must not go back to the client.
        let mut resp = Response::builder();
        for name in ["x-reverse-proxy-secret", "x_under_secret", "x-under-secret"] {
            if let Some(v) = req.headers().get(name) {
                resp = resp.header(name, v.clone());
            }
        }
        resp.body("ok")
    }
    let app = poem::EndpointExt::data(Route::new().at("/*path", record), seen);
    let acceptor = TcpAcceptor::from_tokio(listener).unwrap();
    tokio::spawn(async move { poem::Server::new_with_acceptor(acceptor).run(app).await });
    addr
}

/// The backend's check, as a Node/Hono backend with `jose` would do it: signature by the
/// gate's published key (`kid`), issuer, audience, expiry at `now`, method and path.
fn verify(token: &str, jwks: &JwkSet, audience: &str, method: &str, path: &str, now: i64) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    if header.alg != Algorithm::EdDSA {
        return Err("algorithm".into());
    }
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or("unknown kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_audience(&[audience]);
    v.set_issuer(&["miauflix-gate"]);
    v.validate_exp = false; // checked below against `now`, so a test can move the clock
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| e.to_string())?.claims;
    if claims["exp"].as_i64().ok_or("no exp")? <= now {
        return Err("expired".into());
    }
    if claims["htm"] != method || claims["htu"] != path {
        return Err(format!("bound to {} {}", claims["htm"], claims["htu"]));
    }
    Ok(claims)
}

async fn jwks(gate: SocketAddr) -> JwkSet {
    let r = common::http_request(gate, "GET", "/.well-known/jwks.json", None, &[]).await.unwrap();
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

fn header<'a>(seen: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    seen.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_verify_who_the_gate_forwards_for_and_get_the_shared_value() {
    let seen: Seen = Default::default();
    let up = upstream(seen.clone()).await;
    let value_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(value_file.path(), "file-value-91c\n").unwrap();
    let toml = format!(
        r#"
[[routes]]
prefix = "/api/lists"
upstream = "http://{up}"
identity_assertion = true
upstream_headers = {{ "X-Reverse-Proxy-Secret" = {{ secret = "miauflix_proxy_secret" }}, "X-From-File" = {{ value_file = "{file}" }}, "X_Under_Secret" = {{ value_file = "{file}" }} }}

[[routes]]
prefix = "/plain"
upstream = "http://{up}"
"#,
        file = value_file.path().display()
    );
    let app = common::app::App::open(Some(&toml), &[]).await;
    let state = app.state.clone();
    let setup = std::fs::read_to_string(state.config.setup_token_path()).unwrap();
    state.auth.complete_setup(ADMIN, PW.to_string().into(), setup.trim(), &Default::default()).await.unwrap();
    let gate = app.serve().await;
    let r = common::http_request(
        gate,
        "POST",
        "/api/auth/token",
        Some(json!({"email": ADMIN, "password": PW}).to_string().as_bytes()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    let call = |path: &'static str, extra: Vec<(&'static str, String)>| {
        let bearer = bearer.clone();
        async move {
            let mut headers = vec![("authorization", bearer)];
            headers.extend(extra);
            common::http_request(gate, "GET", path, None, &headers).await.unwrap()
        }
    };

    // The secret is not set yet: the route refuses rather than forward without it.
    let r = call("/api/lists/a", vec![]).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the upstream");
    state.secrets.set("miauflix_proxy_secret", SHARED.as_bytes(), "test", &Default::default()).await.unwrap();

    // A client's own spellings of the configured header and of the assertion never arrive.
    let spoof = vec![
        ("x-reverse-proxy-secret", "guess".to_string()),
        ("x_reverse_proxy_secret", "guess".to_string()),
        ("x-miauflix-assertion", "forged".to_string()),
        ("x-from-file", "guess".to_string()),
        ("x-under-secret", "guess".to_string()),
        ("x_under-secret", "guess".to_string()),
    ];
    let r = call("/api/lists/a", spoof).await;
    assert_eq!(r.status, 200);
    for name in ["x-reverse-proxy-secret", "x_under_secret", "x-under-secret"] {
        assert!(!r.headers.contains_key(name), "an upstream's echo of {name} does not reach the client");
    }
    let (path, h) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(path, "/api/lists/a");
    assert_eq!(header(&h, "x-reverse-proxy-secret"), vec![SHARED]);
    assert!(header(&h, "x_reverse_proxy_secret").is_empty(), "{h:?}");
    assert_eq!(header(&h, "x-from-file"), vec!["file-value-91c"]);
    assert_eq!(header(&h, "x_under_secret"), vec!["file-value-91c"]);
    assert!(header(&h, "x-under-secret").is_empty() && header(&h, "x_under-secret").is_empty(), "{h:?}");
    let assertions = header(&h, "x-miauflix-assertion");
    assert_eq!(assertions.len(), 1, "{h:?}");
    let token = assertions[0].to_string();

    // The backend's verification, with the JWKS fetched over HTTP.
    let keys = jwks(gate).await;
    let audience = format!("http://{up}");
    let claims = verify(&token, &keys, &audience, "GET", "/api/lists/a", now()).unwrap();
    assert_eq!(claims["email"], ADMIN);
    assert_eq!(claims["role"], "admin");
    assert!(claims["sid"].is_string() && claims["jti"].is_string());
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 60);

    // Replays: to another path, with another method, to another upstream, and late.
    assert!(verify(&token, &keys, &audience, "GET", "/api/lists/b", now()).is_err());
    assert!(verify(&token, &keys, &audience, "DELETE", "/api/lists/a", now()).is_err());
    assert!(verify(&token, &keys, "http://other.internal:3000", "GET", "/api/lists/a", now()).is_err());
    assert!(verify(&token, &keys, &audience, "GET", "/api/lists/a", now() + 61).unwrap_err().contains("expired"));

    // Signed by another key: under the gate's kid, and under a kid of its own.
    let foreign = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let foreign = EncodingKey::from_ed_der(&foreign.serialize_der());
    let mut forged: Value = claims.clone();
    forged["role"] = json!("admin");
    for kid in [jsonwebtoken::decode_header(&token).unwrap().kid.unwrap(), "attacker".to_string()] {
        let mut hdr = Header::new(Algorithm::EdDSA);
        hdr.kid = Some(kid);
        let t = jsonwebtoken::encode(&hdr, &forged, &foreign).unwrap();
        assert!(verify(&t, &keys, &audience, "GET", "/api/lists/a", now()).is_err());
    }
    // alg=none and HS256 with the public key as secret are refused by the check itself.
    let parts: Vec<&str> = token.split('.').collect();
    let none = format!("{}.{}.", base64url(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert!(verify(&none, &keys, &audience, "GET", "/api/lists/a", now()).is_err());

    // Cached: the same request gets the same assertion; another path another one.
    call("/api/lists/a", vec![]).await;
    call("/api/lists/b", vec![]).await;
    let got: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(2)
        .map(|(_, h)| header(h, "x-miauflix-assertion")[0].to_string())
        .collect();
    assert_ne!(got[0], got[1]);
    assert_eq!(got[1], token, "the assertion for GET /api/lists/a is reused, not signed again");
    assert!(verify(&got[0], &keys, &audience, "GET", "/api/lists/b", now()).is_ok());

    // TRACE would have the upstream echo the request — shared values and assertion included —
    // back to the client: refused in any case, and nothing reaches the upstream.
    let before = seen.lock().unwrap().len();
    for method in ["TRACE", "trace", "TRACK"] {
        let r = common::http_request(gate, method, "/api/lists/a", None, &[("authorization", bearer.clone())])
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{method}");
        let r =
            common::http_request(gate, method, "/plain/a", None, &[("authorization", bearer.clone())]).await.unwrap();
        assert_eq!(r.status, 405, "{method} on a route without shared values too");
    }
    assert_eq!(seen.lock().unwrap().len(), before, "no TRACE reached the upstream");

    // A route without the options adds neither.
    call("/plain/x", vec![("x-reverse-proxy-secret", "guess".into())]).await;
    let (_, h) = seen.lock().unwrap().last().cloned().unwrap();
    assert!(header(&h, "x-miauflix-assertion").is_empty());
    assert!(header(&h, "x-reverse-proxy-secret").is_empty(), "a client's guess is not passed on either: {h:?}");

    // Key rotation: the next assertion is signed by the new key, and the JWKS fetched again
    // verifies both it and the one from before.
    let master = miauflix_gate::crypto::MasterKey::load(&state.config.master_key_path()).unwrap();
    miauflix_gate::maintenance::rotate_with(
        &state.store,
        &state.keyring,
        &master,
        900,
        &state.audit,
        &Default::default(),
    )
    .await
    .unwrap();
    state.auth.keys().reload(&state.store, &state.keyring).unwrap();
    call("/api/lists/a", vec![]).await;
    let (_, h) = seen.lock().unwrap().last().cloned().unwrap();
    let rotated = header(&h, "x-miauflix-assertion")[0].to_string();
    assert_ne!(jsonwebtoken::decode_header(&rotated).unwrap().kid, jsonwebtoken::decode_header(&token).unwrap().kid);
    let keys = jwks(gate).await;
    assert!(verify(&rotated, &keys, &audience, "GET", "/api/lists/a", now()).is_ok());
    assert!(verify(&token, &keys, &audience, "GET", "/api/lists/a", now()).is_ok());

    // The shared value is nowhere in clear: not in the data file, not in the TOML.
    state.store.close().await;
    let data = std::fs::read(state.config.store_path()).unwrap();
    assert!(!data.windows(SHARED.len()).any(|w| w == SHARED.as_bytes()));
    assert!(!toml.contains(SHARED));
}

fn base64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn upstream_header_configuration_is_checked() {
    let cases = [
        (r#"upstream_headers = { "Host" = { secret = "a" } }"#, "sets or removes itself"),
        (r#"upstream_headers = { "X-Forwarded-For" = { secret = "a" } }"#, "sets or removes itself"),
        (r#"upstream_headers = { "x_miauflix_user" = { secret = "a" } }"#, "sets or removes itself"),
        (r#"upstream_headers = { "Bad Name" = { secret = "a" } }"#, "valid header name"),
        (r#"upstream_headers = { "X-A" = { secret = "../etc" } }"#, "must name a secret"),
        (r#"upstream_headers = { "X-A" = { value_file = "relative" } }"#, "absolute path"),
        (r#"upstream_headers = { "X-A" = { secret = "a", value_file = "/x" } }"#, "exactly one"),
        (r#"upstream_headers = { "X-A" = { } }"#, "exactly one"),
        (r#"upstream_headers = { "X-A" = { value = "inline" } }"#, "unknown field"),
        (r#"upstream_headers = { "X-A" = { secret = "a" }, "x_a" = { secret = "b" } }"#, "twice"),
        (r#"assertion_audience = "has space""#, "assertion_audience"),
    ];
    // On a static route there is no upstream to tell anything.
    let web = tempfile::tempdir().unwrap();
    for line in [r#"identity_assertion = true"#, r#"upstream_headers = { "X-A" = { secret = "a" } }"#] {
        let toml = format!("[[routes]]\nprefix = \"/\"\nstatic_dir = \"{}\"\n{line}\n", web.path().display());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gate.toml");
        std::fs::write(&file, &toml).unwrap();
        let flags = miauflix_gate::config::Overrides {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".into()),
            tls: Some("off".into()),
        };
        let err = miauflix_gate::config::Config::load(Some(&file), Vec::new(), &flags).unwrap_err().to_string();
        assert!(err.contains("do not apply to a static route"), "{line}: {err}");
    }
    for (line, want) in cases {
        let toml = format!("[[routes]]\nprefix = \"/app\"\nupstream = \"http://127.0.0.1:9\"\n{line}\n");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gate.toml");
        std::fs::write(&file, &toml).unwrap();
        let flags = miauflix_gate::config::Overrides {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".into()),
            tls: Some("off".into()),
        };
        let err = miauflix_gate::config::Config::load(Some(&file), Vec::new(), &flags).unwrap_err().to_string();
        assert!(err.contains(want), "{line}: {err}");
    }
}

/// The real binary, logging at `trace`: the shared value set over the API reaches the
/// upstream and appears neither in the log nor in the data file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_value_reaches_the_upstream_and_no_log() {
    let seen: Seen = Default::default();
    let up = upstream(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\nmode = \"off\"\n[[routes]]\nprefix = \"/api/lists\"\nupstream = \"http://{up}\"\nidentity_assertion = true\n\
             upstream_headers = {{ \"X-Reverse-Proxy-Secret\" = {{ secret = \"miauflix_proxy_secret\" }} }}\n"
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let gate = common::Gate::start(&data, &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_LOG", "trace")]);
    let setup = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let body = json!({"email": ADMIN, "password": PW, "setupToken": setup.trim()}).to_string();
    let r = common::http_request(gate.addr, "POST", "/api/auth/setup", Some(body.as_bytes()), &[]).await.unwrap();
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    let body = json!({"email": ADMIN, "password": PW}).to_string();
    let r = common::http_request(gate.addr, "POST", "/api/auth/token", Some(body.as_bytes()), &[]).await.unwrap();
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());
    let body = json!({"value": SHARED}).to_string();
    let r = common::http_request(
        gate.addr,
        "PUT",
        "/api/secrets/miauflix_proxy_secret",
        Some(body.as_bytes()),
        &[("authorization", bearer.clone())],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = common::http_request(gate.addr, "GET", "/api/lists/x", None, &[("authorization", bearer.clone())])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let (_, h) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(header(&h, "x-reverse-proxy-secret"), vec![SHARED]);
    assert!(gate.wait_for_line(&["miauflix_proxy_secret"]).is_some(), "the change is logged by name");
    let log = gate.log_text();
    assert!(!log.contains(SHARED), "the shared value is not logged");
    let assertion = header(&h, "x-miauflix-assertion")[0].to_string();
    assert!(!log.contains(&assertion), "the assertion is not logged");

    // The CLI through the running gate's socket: the new value is used from the next request.
    let env = [("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];
    let (code, out, err) =
        common::run_cli_stdin(&["secrets", "set", "miauflix_proxy_secret"], &env, "rotated-Value-2\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("rotated-Value-2") && !err.contains("rotated-Value-2"), "{out}{err}");
    let (code, out, _) = common::run_cli(&["secrets", "set", "bad name"], &env);
    assert_ne!(code, 0, "{out}");
    let (code, out, err) = common::run_cli_stdin(&["secrets", "set", "x"], &env, "a\u{7}b\n");
    assert_ne!(code, 0, "a control character is refused: {out}{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let r = common::http_request(gate.addr, "GET", "/api/lists/y", None, &[("authorization", bearer.clone())])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let (_, h) = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(header(&h, "x-reverse-proxy-secret"), vec!["rotated-Value-2"]);
    let (code, out, _) = common::run_cli(&["--json", "secrets", "list"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("miauflix_proxy_secret") && !out.contains("rotated-Value-2"), "{out}");
    assert!(!gate.log_text().contains("rotated-Value-2"));
    gate.terminate();

    // Offline (no gate running): the CLI works on the data file; delete, then the list is empty.
    let (code, out, err) = common::run_cli(&["secrets", "delete", "miauflix_proxy_secret"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = common::run_cli(&["secrets", "delete", "miauflix_proxy_secret"], &env);
    assert_ne!(code, 0, "deleting twice: {out}{err}");
    let (_, out, _) = common::run_cli(&["--json", "secrets", "list"], &env);
    assert!(!out.contains("miauflix_proxy_secret"), "{out}");
    let file = std::fs::read(data.join("gate.redb")).unwrap();
    assert!(!file.windows(SHARED.len()).any(|w| w == SHARED.as_bytes()), "the data file holds it sealed only");
}
