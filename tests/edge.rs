//! The edge stack in process: security headers, CORS, CSRF, rate limits, lockout.

mod common;

use std::sync::Arc;

use miauflix_gate::http::AppState;
use miauflix_gate::ratelimit::{RateClass, RateLimitConfig, RateLimits};
use poem::test::{TestClient, TestResponse};
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct-horse-battery";

type Client = TestClient<poem::endpoint::BoxEndpoint<'static, poem::Response>>;

async fn open(vars: &[(&str, &str)]) -> (Client, Arc<AppState>, tempfile::TempDir) {
    let common::app::App { state, dir } = common::app::App::open(None, vars).await;
    (common::app::client(&state), state, dir)
}

async fn setup(cli: &Client, state: &AppState) {
    let token = std::fs::read_to_string(state.config.setup_token_path()).unwrap();
    let r = cli
        .post("/api/auth/setup")
        .header("origin", "http://gate.test")
        .body_json(&json!({"email": ADMIN, "password": PW, "setupToken": token.trim()}))
        .send()
        .await;
    assert_eq!(r.0.status(), 201);
}

fn header(r: &TestResponse, name: &str) -> Option<String> {
    r.0.headers().get(name).map(|v| v.to_str().unwrap().to_string())
}

async fn json_body(r: TestResponse) -> Value {
    serde_json::from_str(&r.0.into_body().into_string().await.unwrap()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let (cli, state, _d) = open(&[]).await;
    for path in ["/healthz", "/api/openapi.json", "/nope", "/api/auth/setup"] {
        let r = cli.get(path).send().await;
        assert_eq!(
            header(&r, "content-security-policy").as_deref(),
            Some(
                "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
            ),
            "{path}"
        );
        assert_eq!(header(&r, "x-frame-options").as_deref(), Some("DENY"));
        assert_eq!(header(&r, "x-content-type-options").as_deref(), Some("nosniff"));
        assert_eq!(header(&r, "referrer-policy").as_deref(), Some("strict-origin-when-cross-origin"));
        assert_eq!(header(&r, "permissions-policy").as_deref(), Some("geolocation=(), microphone=(), camera=()"));
        assert_eq!(header(&r, "cross-origin-opener-policy").as_deref(), Some("same-origin"));
        assert!(header(&r, "server").is_none());
        assert!(header(&r, "strict-transport-security").is_none(), "no HSTS without TLS");
    }
    // The Swagger page needs its inline bundle; everything else stays strict.
    let docs = cli.get("/api/docs").send().await;
    assert!(header(&docs, "content-security-policy").unwrap().contains("frame-ancestors 'none'"));
    state.store.close().await;
}

#[tokio::test]
async fn cors_only_for_listed_origins() {
    let (cli, state, _d) = open(&[("MIAUFLIX_HTTP__CORS_ORIGINS", "[\"https://app.example\"]")]).await;
    let ok = cli.get("/api/auth/setup").header("origin", "https://app.example").send().await;
    assert_eq!(header(&ok, "access-control-allow-origin").as_deref(), Some("https://app.example"));
    assert_eq!(header(&ok, "access-control-allow-credentials").as_deref(), Some("true"));
    let bad = cli.get("/api/auth/setup").header("origin", "https://evil.example").send().await;
    assert!(header(&bad, "access-control-allow-origin").is_none());
    assert!(header(&bad, "access-control-allow-credentials").is_none());

    let pre = cli
        .options("/api/auth/login")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await;
    assert_eq!(pre.0.status(), 204);
    assert!(header(&pre, "access-control-allow-methods").unwrap().contains("POST"));
    assert_eq!(header(&pre, "access-control-allow-origin").as_deref(), Some("https://app.example"));
    let pre = cli
        .options("/api/auth/login")
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await;
    assert_eq!(pre.0.status(), 204);
    assert!(header(&pre, "access-control-allow-origin").is_none());
    assert!(header(&pre, "access-control-allow-methods").is_none());
    state.store.close().await;
}

#[tokio::test]
async fn cookie_requests_from_foreign_origins_are_rejected() {
    let (cli, state, _d) = open(&[("MIAUFLIX_HTTP__PUBLIC_ORIGINS", "[\"https://media.home.arpa\"]")]).await;
    setup(&cli, &state).await;
    let login = cli
        .post("/api/auth/login")
        .header("origin", "http://gate.test")
        .body_json(&json!({"email": ADMIN, "password": PW}))
        .send()
        .await;
    assert_eq!(login.0.status(), 200);
    let jar: Vec<String> = login
        .0
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let jar = jar.join("; ");
    let sid = json_body(login).await["session"].as_str().unwrap().to_string();

    let attempt = |origin: Option<&'static str>, referer: Option<&'static str>| {
        let mut r = cli.post(format!("/api/auth/refresh/{sid}")).header("cookie", &jar);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(x) = referer {
            r = r.header("referer", x);
        }
        r.send()
    };
    for (origin, referer) in [
        (Some("https://evil.example"), None),
        (None, None),
        (None, Some("https://evil.example/page")),
        (Some("null"), None),
    ] {
        let r = attempt(origin, referer).await;
        assert_eq!(r.0.status(), 403, "{origin:?} {referer:?}");
        assert_eq!(json_body(r).await["type"], "urn:miauflix-gate:problem/csrf-rejected");
    }
    // Own origin (scheme + Host), its Referer, and a configured public origin pass.
    let r = attempt(Some("http://gate.test"), None).await;
    assert_eq!(r.0.status(), 200);
    let jar2: Vec<String> =
        r.0.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
    let r = cli
        .post(format!("/api/auth/refresh/{sid}"))
        .header("cookie", jar2.join("; "))
        .header("referer", "http://gate.test/admin/")
        .send()
        .await;
    assert_eq!(r.0.status(), 200);
    let r = cli
        .post(format!("/api/auth/logout/{sid}"))
        .header("cookie", "__miauflix_at_x=1")
        .header("origin", "https://media.home.arpa")
        .send()
        .await;
    assert_eq!(r.0.status(), 200);
    // Bearer clients carry no cookies and need no Origin.
    let t = cli.post("/api/auth/token").body_json(&json!({"email": ADMIN, "password": PW})).send().await;
    assert_eq!(t.0.status(), 200);
    state.store.close().await;
}

#[tokio::test]
async fn the_auth_class_answers_429_with_retry_after_past_its_burst() {
    let (cli, state, _d) = open(&[("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 10, burst = 5}")]).await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..7 {
        let r = cli
            .post("/api/auth/token")
            .body_json(&json!({"email": "nobody@example.com", "password": "whatever-long"}))
            .send()
            .await;
        statuses.push(r.0.status().as_u16());
        if r.0.status() == 429 {
            last = Some(r);
        } else {
            assert!(header(&r, "ratelimit-policy").is_some());
        }
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert_eq!(statuses[5], 429, "{statuses:?}");
    let r = last.unwrap();
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(header(&r, "ratelimit-policy").as_deref(), Some("10;w=60"));
    assert!(header(&r, "ratelimit").unwrap().contains("remaining=0"));
    let b = json_body(r).await;
    assert_eq!(b["type"], "urn:miauflix-gate:problem/rate-limited");
    assert_eq!(b["message"].as_str().unwrap().split(';').next().unwrap(), "Too many requests");
    // Other classes are not affected.
    assert_eq!(cli.get("/api/auth/setup").send().await.0.status(), 200);
    state.store.close().await;
}

#[tokio::test]
async fn five_failures_lock_the_account_even_against_the_right_password() {
    let (cli, state, _d) = open(&[("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}")]).await;
    setup(&cli, &state).await;
    let login = |pw: &'static str, email: &'static str| {
        cli.post("/api/auth/token").body_json(&json!({"email": email, "password": pw})).send()
    };
    for _ in 0..5 {
        assert_eq!(login("wrong-password-x", ADMIN).await.0.status(), 401);
    }
    let r = login(PW, ADMIN).await;
    assert_eq!(r.0.status(), 429, "locked: the right password does not get through");
    assert!(header(&r, "retry-after").unwrap().parse::<u64>().unwrap() <= 60);
    let locked = json_body(r).await;
    assert_eq!(locked["type"], "urn:miauflix-gate:problem/account-locked");
    assert_eq!(locked["error"], "Too many requests");
    // An unknown email locks the same way, so a lock reveals nothing.
    for _ in 0..5 {
        assert_eq!(login("wrong-password-x", "ghost@example.com").await.0.status(), 401);
    }
    let ghost = json_body(login("wrong-password-x", "ghost@example.com").await).await;
    assert_eq!(ghost["type"], locked["type"]);
    assert_eq!(ghost["detail"], locked["detail"]);
    // Case and spaces do not dodge the count.
    assert_eq!(login(PW, " ADMIN@example.com ").await.0.status(), 429);

    // An admin (already signed in elsewhere) unlocks.
    let admin_id = state.auth.list_users().unwrap()[0].id.clone();
    let principal = miauflix_gate::auth::Principal {
        user_id: admin_id.clone(),
        session_id: String::new(),
        role: miauflix_gate::auth::Role::Admin,
        email: ADMIN.into(),
        display_name: "admin".into(),
    };
    assert!(state.auth.unlock_user(&principal, &admin_id, &Default::default()).await.unwrap());
    assert_eq!(login(PW, ADMIN).await.0.status(), 200);
    state.store.close().await;
}

#[test]
fn ipv6_clients_are_limited_per_64() {
    let cfg = RateLimitConfig {
        auth: miauflix_gate::ratelimit::QuotaConfig { per_minute: 60, burst: 3 },
        ..Default::default()
    };
    let limits = RateLimits::new(&cfg);
    // Four addresses of one /64: one budget of three.
    let same: Vec<bool> = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9", "2001:db8:1:2::abcd"]
        .iter()
        .map(|ip| limits.check(RateClass::Auth, ip).is_ok())
        .collect();
    assert_eq!(same, [true, true, true, false]);
    let denied = limits.check(RateClass::Auth, "2001:db8:1:2::77").unwrap_err();
    assert!(denied.retry_after > std::time::Duration::ZERO);
    // The next /64 has its own budget.
    assert!(limits.check(RateClass::Auth, "2001:db8:1:3::1").is_ok());
    // IPv4-mapped IPv6 is the IPv4 address.
    for _ in 0..3 {
        assert!(limits.check(RateClass::Auth, "192.0.2.7").is_ok());
    }
    assert!(limits.check(RateClass::Auth, "::ffff:192.0.2.7").is_err());
}

#[test]
fn a_million_idle_keys_are_evicted() {
    let limits = RateLimits::new(&RateLimitConfig::default());
    for i in 0..1_000_000u32 {
        let key = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        assert!(limits.check(RateClass::Global, &key).is_ok());
    }
    assert_eq!(limits.len(), 1_000_000);
    // One use refills within one emission interval (60 s / 3000 = 20 ms); then every key is idle.
    std::thread::sleep(std::time::Duration::from_millis(100));
    limits.evict_idle();
    assert_eq!(limits.len(), 0, "idle keys are dropped");
}

#[tokio::test]
async fn a_known_user_is_limited_as_that_user() {
    let (cli, state, _d) = open(&[
        ("MIAUFLIX_RATE_LIMITS__API", "{per_minute = 60, burst = 3}"),
        ("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}"),
    ])
    .await;
    setup(&cli, &state).await;
    let t =
        json_body(cli.post("/api/auth/token").body_json(&json!({"email": ADMIN, "password": PW})).send().await).await;
    let access = t["access_token"].as_str().unwrap().to_string();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            cli.get("/api/me").header("authorization", format!("Bearer {access}")).send().await.0.status().as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    // Anonymous requests from the same address have their own (IP) budget.
    assert_eq!(cli.get("/api/auth/setup").send().await.0.status(), 200);
    state.store.close().await;
}

/// Checks one 429 as the Miauflix client reads it: `message` starting "Too many requests"
/// (the client matches it case-insensitively; the gate sends this exact case), `error` the
/// same, `Retry-After` a number of seconds, and the problem type.
async fn assert_too_many(label: &str, r: TestResponse, kind: &str) {
    assert_eq!(r.0.status(), 429, "{label}");
    let retry: u64 = header(&r, "retry-after").unwrap_or_else(|| panic!("{label}: Retry-After")).parse().unwrap();
    assert!((1..=3600).contains(&retry), "{label}: {retry}");
    let b = json_body(r).await;
    assert!(b["message"].as_str().unwrap().starts_with("Too many requests"), "{label}: {b}");
    assert_eq!(b["message"], b["detail"], "{label}: {b}");
    assert_eq!(b["error"], "Too many requests", "{label}: {b}");
    assert_eq!(b["type"], format!("urn:miauflix-gate:problem/{kind}"), "{label}: {b}");
}

/// Sends `send` until a 429 (at most `n` times) and returns it.
async fn until_429<F: std::future::Future<Output = TestResponse>>(
    n: usize,
    mut send: impl FnMut() -> F,
) -> TestResponse {
    for _ in 0..n {
        let r = send().await;
        if r.0.status() == 429 {
            return r;
        }
    }
    panic!("no 429 in {n} requests");
}

#[tokio::test]
async fn every_429_the_gate_sends_says_too_many_requests() {
    // The lockout, on each of the three doors that check a password.
    let toml = r#"
[rate_limits.auth]
per_minute = 100000
burst = 10000
[rate_limits.api]
per_minute = 100000
burst = 10000
"#;
    let app = common::app::App::open(Some(toml), &[]).await;
    let cli = common::app::client(&app.state).default_header("origin", "http://gate.test");
    setup(&cli, &app.state).await;
    let r = cli.post("/api/auth/token").body_json(&json!({"email": ADMIN, "password": PW})).send().await;
    let access = json_body(r).await["access_token"].as_str().unwrap().to_string();
    for door in ["/api/auth/login", "/api/auth/token"] {
        let r = until_429(10, || {
            cli.post(door).body_json(&json!({"email": "locked@example.com", "password": "wrong-horse-battery"})).send()
        })
        .await;
        assert_too_many(door, r, "account-locked").await;
    }
    let r = until_429(10, || {
        cli.post("/api/me/password")
            .header("authorization", format!("Bearer {access}"))
            .body_json(&json!({"currentPassword": "wrong-horse-battery", "newPassword": "another-long-phrase"}))
            .send()
    })
    .await;
    assert_too_many("password change", r, "account-locked").await;
    // The right password while locked: the same answer.
    let r = cli.post("/api/auth/login").body_json(&json!({"email": ADMIN, "password": PW})).send().await;
    assert_too_many("right password while locked", r, "account-locked").await;
    app.state.store.close().await;

    // Every rate-limit class, on the gate's own API and on a proxied route.
    let toml = r#"
[rate_limits.auth]
per_minute = 60
burst = 3
[rate_limits.api]
per_minute = 60
burst = 3
[rate_limits.stream]
per_minute = 60
burst = 3
[[routes]]
prefix = "/stream"
upstream = "http://127.0.0.1:1"
min_role = "public"
rate_class = "stream"
[[routes]]
prefix = "/app"
upstream = "http://127.0.0.1:1"
min_role = "public"
"#;
    let app = common::app::App::open(Some(toml), &[]).await;
    let cli = common::app::client(&app.state);
    let r = until_429(10, || cli.post("/api/auth/token").body_json(&json!({"email": "a@b.c", "password": "x"})).send())
        .await;
    assert_too_many("auth class", r, "rate-limited").await;
    let r = until_429(10, || cli.get("/api/auth/session").send()).await;
    assert_too_many("api class", r, "rate-limited").await;
    let r = until_429(10, || cli.get("/stream/a.mkv").send()).await;
    assert_too_many("stream class (proxied)", r, "rate-limited").await;
    app.state.store.close().await;

    let app =
        common::app::App::open(Some(toml.replace("[rate_limits.auth]", "[rate_limits.global]").as_str()), &[]).await;
    let cli = common::app::client(&app.state);
    let r = until_429(10, || cli.get("/healthz").send()).await;
    assert_too_many("global limit", r, "rate-limited").await;
    let r = until_429(10, || cli.get("/app/x").send()).await;
    assert_too_many("global limit (proxied)", r, "rate-limited").await;
    app.state.store.close().await;
}
