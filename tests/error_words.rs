//! Every error the API can answer, triggered over HTTP against the in-process gate, checked
//! against the Miauflix client's contract: an RFC 9457 problem with `error` and `message`, and
//! no word of a credential field ("password", "token", "secret", "hash", "key" — in any case,
//! inside other words too, as the client matches them) anywhere in the body: not in `message`,
//! `detail`, `title`, nor the `type` URI. A failed sign-in says exactly "Invalid credentials".

mod common;

use std::collections::BTreeSet;

use poem::test::TestResponse;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "admin@example.com";
const GUEST: &str = "guest@example.com";
const PW: &str = "correct-horse-battery";
/// The client's list, kept here on its own (not imported from the gate).
const WORDS: [&str; 5] = ["password", "token", "secret", "hash", "key"];

fn names_credential(text: &str) -> Option<&'static str> {
    let lower = text.to_lowercase();
    WORDS.into_iter().find(|w| lower.contains(w))
}

/// What the walk has seen: every problem type, and every failure.
#[derive(Default)]
struct Walk {
    types: BTreeSet<String>,
    statuses: BTreeSet<u16>,
    failures: Vec<String>,
    checked: usize,
}

impl Walk {
    /// Checks one error answer; returns its body.
    async fn check(&mut self, label: &str, want: u16, resp: TestResponse) -> Value {
        let status = resp.0.status().as_u16();
        let ctype = resp.0.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let text = resp.0.into_body().into_string().await.unwrap();
        self.checked += 1;
        self.statuses.insert(status);
        if status != want {
            self.failures.push(format!("{label}: status {status}, wanted {want}: {text}"));
        }
        if ctype != "application/problem+json" {
            self.failures.push(format!("{label}: content type {ctype:?}"));
        }
        if let Some(w) = names_credential(&text) {
            self.failures.push(format!("{label}: the body names {w:?}: {text}"));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        for member in ["type", "title", "error", "message", "detail"] {
            if !body[member].is_string() {
                self.failures.push(format!("{label}: no string `{member}`: {text}"));
            }
        }
        if body["error"] != body["title"] || body["message"] != body["detail"] {
            self.failures.push(format!("{label}: error/message disagree with title/detail: {text}"));
        }
        if let Some(t) = body["type"].as_str() {
            self.types.insert(t.trim_start_matches("urn:miauflix-gate:problem/").to_string());
        }
        body
    }
}

fn bearer(access: &str) -> String {
    format!("Bearer {access}")
}

/// A JWT-shaped string whose parts are well-formed base64url JSON, signed by nobody.
fn forged_jwt(alg: &str) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let header = b64(&json!({"alg": alg, "typ": "JWT", "kid": "0"}));
    let claims = b64(&json!({"sub": "x", "sid": "AAAAAAAAAAAAAAAAAAAAAA", "role": "admin", "exp": 4_000_000_000u64}));
    format!("{header}.{claims}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 64]))
}

#[tokio::test]
async fn no_error_the_api_can_answer_names_a_credential_field() {
    let toml = r#"
[rate_limits.auth]
per_minute = 100000
burst = 10000
[rate_limits.api]
per_minute = 100000
burst = 10000
[[routes]]
prefix = "/dead"
upstream = "http://127.0.0.1:1"
min_role = "public"
[[routes]]
prefix = "/members"
upstream = "http://127.0.0.1:1"
min_role = "user"
[[routes]]
prefix = "/stream"
upstream = "http://127.0.0.1:1"
min_role = "guest"
stream_keys = true
[[routes]]
prefix = "/torrent"
upstream = "http://127.0.0.1:1"
min_role = "public"
requires_vpn = true
"#;
    let app = common::app::App::open(Some(toml), &[]).await;
    let cli = app.client().default_header("origin", "http://gate.test");
    let mut w = Walk::default();

    // Setup: malformed, a wrong one-time value, a missing field, then the real one.
    let setup = |b: Value| cli.post("/api/auth/setup").body_json(&b).send();
    w.check(
        "setup: wrong one-time value",
        401,
        setup(json!({"email": ADMIN, "password": PW, "setupToken": "nope"})).await,
    )
    .await;
    w.check("setup: field missing", 400, setup(json!({"email": ADMIN, "password": PW})).await).await;
    w.check(
        "setup: field of the wrong type",
        400,
        setup(json!({"email": ADMIN, "password": PW, "setupToken": ["x"]})).await,
    )
    .await;
    let one_time = std::fs::read_to_string(app.state.config.setup_token_path()).unwrap();
    w.check(
        "setup: a common passphrase",
        400,
        setup(json!({"email": ADMIN, "password": "password123", "setupToken": one_time.trim()})).await,
    )
    .await;
    w.check(
        "setup: a short passphrase",
        400,
        setup(json!({"email": ADMIN, "password": "short", "setupToken": one_time.trim()})).await,
    )
    .await;
    w.check(
        "setup: the passphrase is the email",
        400,
        setup(json!({"email": ADMIN, "password": ADMIN, "setupToken": one_time.trim()})).await,
    )
    .await;
    let r = setup(json!({"email": ADMIN, "password": PW, "setupToken": one_time.trim()})).await;
    assert_eq!(r.0.status(), 201);
    w.check(
        "setup: once an admin exists",
        404,
        setup(json!({"email": ADMIN, "password": PW, "setupToken": "x"})).await,
    )
    .await;

    // Sign-in failures: exactly "Invalid credentials", nothing more, the same for every cause.
    let login = |path: &'static str, b: Value| cli.post(path).body_json(&b).send();
    let mut failed = Vec::new();
    for path in ["/api/auth/login", "/api/auth/token"] {
        for (label, email, pw) in [
            ("wrong passphrase", ADMIN, "wrong-horse-battery"),
            ("unknown user", "ghost@example.com", PW),
            ("unparsable email", "not an email", PW),
            ("over-long passphrase", ADMIN, &"x".repeat(300)[..]),
        ] {
            let b = w
                .check(&format!("{path}: {label}"), 401, login(path, json!({"email": email, "password": pw})).await)
                .await;
            assert_eq!(b["error"], "Invalid credentials", "{path} {label}: {b}");
            assert_eq!(b["message"], "Invalid credentials.", "{path} {label}: {b}");
            assert_eq!(b["detail"], b["message"], "no detail adds more: {b}");
            assert_eq!(b["type"], "urn:miauflix-gate:problem/invalid-credentials");
            failed.push(b);
        }
    }
    let without_id = |b: &Value| {
        let mut b = b.clone();
        b.as_object_mut().unwrap().remove("requestId");
        b
    };
    assert!(failed.iter().all(|b| without_id(b) == without_id(&failed[0])), "one body for every cause: {failed:?}");
    w.check(
        "login: not JSON",
        400,
        cli.post("/api/auth/login").content_type("application/json").body("{\"email\":").send().await,
    )
    .await;
    w.check("login: field missing", 400, login("/api/auth/login", json!({"email": ADMIN})).await).await;
    w.check("login: empty field", 400, login("/api/auth/login", json!({"email": ADMIN, "password": ""})).await).await;
    w.check("login: wrong types", 400, login("/api/auth/login", json!({"email": 1, "password": [2]})).await).await;
    w.check("login: not an object", 400, login("/api/auth/login", json!(["a", "b"])).await).await;
    w.check(
        "login: text/plain",
        415,
        cli.post("/api/auth/login").content_type("text/plain").body("email=a&password=b").send().await,
    )
    .await;
    w.check(
        "login: body over the limit",
        413,
        cli.post("/api/auth/login").content_type("application/json").body(vec![b' '; 200 * 1024]).send().await,
    )
    .await;
    w.check(
        "token/refresh: field missing",
        400,
        cli.post("/api/auth/token/refresh").body_json(&json!({})).send().await,
    )
    .await;
    w.check(
        "token/refresh: unknown value",
        401,
        cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": "AAAA"})).send().await,
    )
    .await;
    w.check(
        "token/refresh: hostile characters",
        401,
        cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": "../%00<script>"})).send().await,
    )
    .await;
    w.check("token/revoke: field missing", 400, cli.post("/api/auth/token/revoke").body_json(&json!({})).send().await)
        .await;

    // Signed in: an admin with a bearer, a guest with a browser session.
    let r = login("/api/auth/token", json!({"email": ADMIN, "password": PW})).await;
    let admin: Value = serde_json::from_str(&r.0.into_body().into_string().await.unwrap()).unwrap();
    let admin_at = admin["access_token"].as_str().unwrap().to_string();
    let admin_rt = admin["refresh_token"].as_str().unwrap().to_string();
    let create = |b: Value| cli.post("/api/users").header("authorization", bearer(&admin_at)).body_json(&b).send();
    assert_eq!(create(json!({"email": GUEST, "password": PW, "role": "guest"})).await.0.status(), 201);
    w.check("create user: taken email", 409, create(json!({"email": GUEST, "password": PW})).await).await;
    w.check(
        "create user: common passphrase",
        400,
        create(json!({"email": "c@example.com", "password": "1qaz2wsx3edc"})).await,
    )
    .await;
    w.check(
        "create user: bad role",
        400,
        create(json!({"email": "c@example.com", "password": PW, "role": "root"})).await,
    )
    .await;
    w.check(
        "create user (auth path): field missing",
        400,
        cli.post("/api/auth/users")
            .header("authorization", bearer(&admin_at))
            .body_json(&json!({"email": "c@x"}))
            .send()
            .await,
    )
    .await;
    let r = cli.post("/api/auth/login").body_json(&json!({"email": GUEST, "password": PW})).send().await;
    let jar: Vec<String> =
        r.0.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let guest: Value = serde_json::from_str(&r.0.into_body().into_string().await.unwrap()).unwrap();
    let gsid = guest["session"].as_str().unwrap().to_string();
    let gjar = jar.iter().map(|c| c.split(';').next().unwrap()).collect::<Vec<_>>().join("; ");

    // Missing, malformed, forged credentials.
    w.check("me: no credentials", 401, cli.get("/api/me").send().await).await;
    for (label, value) in [
        ("garbage bearer", "Bearer zzz".to_string()),
        ("empty bearer", "Bearer ".to_string()),
        ("basic scheme", "Basic YWRtaW46YWRtaW4=".to_string()),
        ("alg none", bearer(&forged_jwt("none"))),
        ("HS256 forged", bearer(&forged_jwt("HS256"))),
        ("EdDSA forged", bearer(&forged_jwt("EdDSA"))),
        ("refresh value as bearer", bearer(&admin_rt)),
    ] {
        w.check(&format!("me: {label}"), 401, cli.get("/api/me").header("authorization", value).send().await).await;
    }
    w.check("session: id without cookie", 401, cli.get("/api/auth/session").header("x-session-id", &gsid).send().await)
        .await;
    w.check(
        "session: malformed id",
        401,
        cli.get("/api/auth/session").header("x-session-id", "../../etc").header("cookie", &gjar).send().await,
    )
    .await;
    w.check(
        "session: another session's cookie",
        401,
        cli.get("/api/auth/session")
            .header("x-session-id", "AAAAAAAAAAAAAAAAAAAAAA")
            .header("cookie", gjar.replace(&gsid, "AAAAAAAAAAAAAAAAAAAAAA"))
            .send()
            .await,
    )
    .await;
    w.check("refresh: no cookie", 401, cli.post(format!("/api/auth/refresh/{gsid}")).send().await).await;
    w.check(
        "refresh: corrupted cookie",
        401,
        cli.post(format!("/api/auth/refresh/{gsid}"))
            .header("cookie", format!("__miauflix_rt_{gsid}=AAAA"))
            .send()
            .await,
    )
    .await;
    w.check(
        "refresh: oversized cookie",
        401,
        cli.post(format!("/api/auth/refresh/{gsid}"))
            .header("cookie", format!("__miauflix_rt_{gsid}={}", "A".repeat(3000)))
            .send()
            .await,
    )
    .await;
    w.check("refresh: malformed session", 401, cli.post("/api/auth/refresh/..%2F").send().await).await;
    w.check(
        "verify: no credentials",
        401,
        cli.get("/api/auth/verify").header("x-original-uri", "/members/x").send().await,
    )
    .await;
    w.check(
        "verify: no URI header",
        400,
        cli.get("/api/auth/verify").header("authorization", bearer(&admin_at)).send().await,
    )
    .await;

    // Below the role, and CSRF.
    macro_rules! as_guest {
        ($req:expr) => {
            $req.header("x-session-id", &gsid).header("cookie", &gjar)
        };
    }
    w.check("users as guest", 403, as_guest!(cli.get("/api/users")).send().await).await;
    w.check("audit as guest", 403, as_guest!(cli.get("/api/audit")).send().await).await;
    w.check("members route as guest", 403, as_guest!(cli.get("/members/x")).send().await).await;
    w.check(
        "verify as guest",
        403,
        as_guest!(cli.get("/api/auth/verify")).header("x-original-uri", "/members/x").send().await,
    )
    .await;
    w.check(
        "csrf: foreign origin",
        403,
        as_guest!(cli.post("/api/me/logout-all")).header("origin", "https://evil.example").send().await,
    )
    .await;
    w.check(
        "csrf: no origin",
        403,
        app.client().post("/api/me/logout-all").header("x-session-id", &gsid).header("cookie", &gjar).send().await,
    )
    .await;
    w.check(
        "change: wrong current passphrase",
        401,
        as_guest!(cli.post("/api/me/password"))
            .body_json(&json!({"currentPassword": "wrong-horse-battery", "newPassword": "another-long-phrase"}))
            .send()
            .await,
    )
    .await;
    w.check(
        "change: weak new passphrase",
        400,
        as_guest!(cli.post("/api/me/password"))
            .body_json(&json!({"currentPassword": PW, "newPassword": "password"}))
            .send()
            .await,
    )
    .await;
    w.check("change: field missing", 400, as_guest!(cli.post("/api/me/password")).body_json(&json!({})).send().await)
        .await;

    // Admin-side refusals.
    macro_rules! admin_req {
        ($req:expr) => {
            $req.header("authorization", bearer(&admin_at))
        };
    }
    w.check("user: unknown id", 404, admin_req!(cli.get("/api/users/0123456789abcdef0123456789abcdef")).send().await)
        .await;
    let me: Value =
        serde_json::from_str(&admin_req!(cli.get("/api/me")).send().await.0.into_body().into_string().await.unwrap())
            .unwrap();
    let admin_id = me["id"].as_str().unwrap();
    w.check(
        "user: demote the last admin",
        409,
        admin_req!(cli.patch(format!("/api/users/{admin_id}"))).body_json(&json!({"role": "user"})).send().await,
    )
    .await;
    w.check("user: delete the last admin", 409, admin_req!(cli.delete(format!("/api/users/{admin_id}"))).send().await)
        .await;
    w.check(
        "user: display name too long",
        400,
        admin_req!(cli.patch(format!("/api/users/{admin_id}")))
            .body_json(&json!({"displayName": "x".repeat(101)}))
            .send()
            .await,
    )
    .await;
    w.check(
        "reset: weak passphrase",
        400,
        admin_req!(cli.post(format!("/api/users/{admin_id}/reset-password")))
            .body_json(&json!({"newPassword": "password"}))
            .send()
            .await,
    )
    .await;
    w.check("audit: bad time", 400, admin_req!(cli.get("/api/audit?since=yesterday")).send().await).await;
    w.check("audit: bad limit", 400, admin_req!(cli.get("/api/audit?limit=-3")).send().await).await;
    w.check(
        "vpn: a private half that is not base64",
        400,
        admin_req!(cli.put("/api/vpn/key")).body_json(&json!({"privateKey": "!".repeat(44)})).send().await,
    )
    .await;
    use base64::Engine;
    // (A well-formed one is stored even while the VPN is disabled: a success, not an error.)
    let good = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    w.check(
        "vpn: a server with a bad public half",
        400,
        admin_req!(cli.put("/api/vpn/servers"))
            .body_json(&json!({"servers": [{"name": "a", "endpoint": "1.2.3.4:51820", "publicKey": "nope-nope-nope"}]}))
            .send()
            .await,
    )
    .await;
    w.check(
        "vpn: a server with a bad endpoint",
        400,
        admin_req!(cli.put("/api/vpn/servers"))
            .body_json(&json!({"servers": [{"name": "a", "endpoint": "nowhere", "publicKey": good}]}))
            .send()
            .await,
    )
    .await;
    w.check("vpn: rotate while disabled", 409, admin_req!(cli.post("/api/vpn/rotate")).send().await).await;
    w.check(
        "stream URL: no route signs it",
        400,
        admin_req!(cli.post("/api/stream-keys")).body_json(&json!({"path": "/nowhere/a.mkv"})).send().await,
    )
    .await;
    w.check(
        "stream URL: a dot segment",
        400,
        admin_req!(cli.post("/api/stream-keys")).body_json(&json!({"path": "/stream/../api"})).send().await,
    )
    .await;
    w.check("stream URL: forged", 401, cli.get("/stream/a.mkv?mf_sk=AAAA.BBBB").send().await).await;

    // The edge: 404, 405, refused paths, routes.
    w.check("unknown path", 404, cli.get("/nope").send().await).await;
    w.check("unknown API path", 404, cli.get("/api/nope").send().await).await;
    w.check("wrong method", 405, cli.put("/api/auth/login").body_json(&json!({})).send().await).await;
    w.check("wrong method (GET)", 405, cli.get("/api/auth/token").send().await).await;
    w.check("upstream down", 502, cli.get("/dead/x").send().await).await;
    w.check("tunnel down", 503, cli.get("/torrent/x").send().await).await;
    w.check("members route, anonymous", 401, cli.get("/members/x").send().await).await;

    // A logged-out session and a disabled user.
    let r = admin_req!(cli.post("/api/me/logout-all")).send().await;
    assert_eq!(r.0.status(), 200);
    w.check("me: a logged-out session", 401, admin_req!(cli.get("/api/me")).send().await).await;

    assert!(
        w.failures.is_empty(),
        "{} of {} answers break the contract:\n{}",
        w.failures.len(),
        w.checked,
        w.failures.join("\n")
    );
    for kind in [
        "bad-request",
        "invalid-input",
        "invalid-credentials",
        "unauthorized",
        "forbidden",
        "csrf-rejected",
        "not-found",
        "method-not-allowed",
        "payload-too-large",
        "unsupported-media-type",
        "conflict",
        "vpn-refused",
        "upstream-unavailable",
        "vpn-down",
    ] {
        assert!(w.types.contains(kind), "the walk never met {kind}: {:?}", w.types);
    }
    println!("{} error answers, {} problem types: {:?}", w.checked, w.types.len(), w.types);
    app.state.store.close().await;
}

/// The 429s (lockout and every rate-limit class), the listener's 400 for a missing `Host`,
/// and the request timeout: the answers that need their own limits or a real connection.
#[tokio::test]
async fn limits_and_listener_refusals_name_no_credential_field() {
    let toml = r#"
[rate_limits.global]
per_minute = 60
burst = 40
[rate_limits.auth]
per_minute = 60
burst = 20
[http]
body_timeout_secs = 1
"#;
    let app = common::app::App::open(Some(toml), &[]).await;
    let cli = app.client().default_header("origin", "http://gate.test");
    let mut w = Walk::default();
    let login = |pw: &str| cli.post("/api/auth/login").body_json(&json!({"email": ADMIN, "password": pw})).send();
    for _ in 0..5 {
        w.check("lockout: failures", 401, login("wrong-horse-battery").await).await;
    }
    let b = w.check("lockout: locked", 429, login(PW).await).await;
    assert_eq!(b["type"], "urn:miauflix-gate:problem/account-locked");
    let mut limited = None;
    for _ in 0..40 {
        let r = cli.post("/api/auth/token").body_json(&json!({"email": "x@example.com", "password": "p"})).send().await;
        if r.0.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    w.check("auth class limited", 429, limited.expect("the auth class limits")).await;
    let mut limited = None;
    for _ in 0..80 {
        let r = cli.get("/healthz").send().await;
        if r.0.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    w.check("global limit", 429, limited.expect("the global limit")).await;

    // Raw requests on a real connection: no Host, and a body that never arrives.
    let app2 = common::app::App::open(Some("[http]\nbody_timeout_secs = 1\n"), &[]).await;
    let addr = app2.serve().await;
    for (label, req, want) in [
        ("no Host", &b"GET /api/me HTTP/1.1\r\nConnection: close\r\n\r\n"[..], "400"),
        (
            "body never arrives",
            &b"POST /api/auth/login HTTP/1.1\r\nHost: gate.test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":"[..],
            "408",
        ),
    ] {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(req).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).to_string();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with(&format!("HTTP/1.1 {want}")), "{label}: {answer}");
        assert!(head.to_lowercase().contains("application/problem+json"), "{label}: {answer}");
        assert_eq!(names_credential(body), None, "{label}: {body}");
        assert!(body.contains("\"message\""), "{label}: {body}");
    }
    assert!(w.failures.is_empty(), "{}", w.failures.join("\n"));
    app.state.store.close().await;
    app2.state.store.close().await;
}
