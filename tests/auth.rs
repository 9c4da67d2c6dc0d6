//! The auth API in process: setup, cookie sessions, bearer tokens, refresh rotation and
//! reuse detection, roles, user administration, token validation.

mod common;

use std::sync::Arc;

use miauflix_gate::http::{AppState, openapi_json};
use poem::test::{TestClient, TestResponse};
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct-horse-battery";

type Client = TestClient<poem::endpoint::BoxEndpoint<'static, poem::Response>>;

struct Env {
    cli: Client,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

async fn env_with(vars: &[(&str, &str)]) -> Env {
    // Generous auth quota: these tests log in many times from one address.
    let mut env = vec![("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}")];
    env.extend(vars.iter().copied());
    let common::app::App { state, dir } = common::app::App::open(None, &env).await;
    // Requests come from the gate's own origin, as a browser on the gate's page would send.
    let cli = common::app::client(&state).default_header("origin", "http://gate.test");
    Env { cli, state, _dir: dir }
}

async fn env() -> Env {
    env_with(&[]).await
}

async fn body(resp: TestResponse) -> Value {
    let text = resp.0.into_body().into_string().await.unwrap();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn status(resp: &TestResponse) -> u16 {
    resp.0.status().as_u16()
}

fn set_cookies(resp: &TestResponse) -> Vec<String> {
    resp.0.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

/// name=value pairs of Set-Cookie headers, ready for a Cookie header.
fn cookie_header(set: &[String]) -> String {
    set.iter().map(|c| c.split(';').next().unwrap().to_string()).collect::<Vec<_>>().join("; ")
}

impl Env {
    async fn setup_admin(&self) {
        let token = std::fs::read_to_string(self.state.config.setup_token_path()).unwrap();
        let resp = self
            .cli
            .post("/api/auth/setup")
            .body_json(&json!({"email": ADMIN, "password": PW, "setupToken": token.trim()}))
            .send()
            .await;
        assert_eq!(status(&resp), 201);
    }

    /// Browser login: (session id, Set-Cookie values, body).
    async fn login(&self, email: &str, pw: &str) -> (String, Vec<String>, Value) {
        let resp = self.cli.post("/api/auth/login").body_json(&json!({"email": email, "password": pw})).send().await;
        assert_eq!(status(&resp), 200, "login {email}");
        let cookies = set_cookies(&resp);
        let b = body(resp).await;
        (b["session"].as_str().unwrap().to_string(), cookies, b)
    }

    /// API login: (access, refresh).
    async fn token(&self, email: &str, pw: &str) -> (String, String) {
        let resp = self.cli.post("/api/auth/token").body_json(&json!({"email": email, "password": pw})).send().await;
        assert_eq!(status(&resp), 200);
        let b = body(resp).await;
        assert_eq!(b["token_type"], "Bearer");
        assert_eq!(b["expires_in"], 900);
        (b["access_token"].as_str().unwrap().into(), b["refresh_token"].as_str().unwrap().into())
    }

    async fn get_bearer(&self, path: &str, access: &str) -> TestResponse {
        self.cli.get(path).header("authorization", format!("Bearer {access}")).send().await
    }

    async fn create_user(&self, admin_access: &str, email: &str, role: &str) -> String {
        let resp = self
            .cli
            .post("/api/users")
            .header("authorization", format!("Bearer {admin_access}"))
            .body_json(&json!({"email": email, "password": PW, "role": role}))
            .send()
            .await;
        assert_eq!(status(&resp), 201, "create {email}");
        body(resp).await["id"].as_str().unwrap().to_string()
    }
}

#[tokio::test]
async fn setup_creates_the_first_admin_once_with_the_token() {
    let e = env().await;
    let resp = e.cli.get("/api/auth/setup").send().await;
    assert_eq!(body(resp).await, json!({"required": true}));
    let token_path = e.state.config.setup_token_path();
    let token = std::fs::read_to_string(&token_path).unwrap().trim().to_string();

    let bad = e
        .cli
        .post("/api/auth/setup")
        .body_json(&json!({"email": ADMIN, "password": PW, "setupToken": "x".repeat(43)}))
        .send()
        .await;
    assert_eq!(status(&bad), 401);
    let weak = e
        .cli
        .post("/api/auth/setup")
        .body_json(&json!({"email": ADMIN, "password": "password", "setupToken": token}))
        .send()
        .await;
    assert_eq!(status(&weak), 400);
    let common = e
        .cli
        .post("/api/auth/setup")
        .body_json(&json!({"email": ADMIN, "password": "1q2w3e4r5t6y", "setupToken": token}))
        .send()
        .await;
    assert_eq!(status(&common), 400, "common password");
    assert!(body(common).await["detail"].as_str().unwrap().contains("common"));
    let missing = e.cli.post("/api/auth/setup").body_json(&json!({"email": ADMIN})).send().await;
    assert_eq!(status(&missing), 400);

    let ok = e
        .cli
        .post("/api/auth/setup")
        .body_json(&json!({"email": " Admin@Example.COM ", "password": PW, "setupToken": token}))
        .send()
        .await;
    assert_eq!(status(&ok), 201);
    let user = body(ok).await;
    assert_eq!(user["email"], ADMIN, "trimmed and lower-cased");
    assert_eq!(user["displayName"], "admin");
    assert_eq!(user["role"], "admin");
    assert!(!token_path.exists(), "the token is deleted after use");

    assert_eq!(body(e.cli.get("/api/auth/setup").send().await).await, json!({"required": false}));
    let again = e
        .cli
        .post("/api/auth/setup")
        .body_json(&json!({"email": "b@example.com", "password": PW, "setupToken": token}))
        .send()
        .await;
    assert_eq!(status(&again), 404);
    e.state.store.close().await;
}

#[tokio::test]
async fn cookie_flow_login_session_refresh_logout() {
    let e = env().await;
    e.setup_admin().await;
    let (sid, cookies, b) = e.login(ADMIN, PW).await;
    assert_eq!(b["user"]["email"], ADMIN);
    assert_eq!(b["user"]["role"], "admin");
    let text = b.to_string();
    assert!(!text.contains("eyJ"), "no token in the body: {text}");

    // Cookie attributes.
    let at = cookies.iter().find(|c| c.starts_with(&format!("__miauflix_at_{sid}="))).unwrap();
    let rt = cookies.iter().find(|c| c.starts_with(&format!("__miauflix_rt_{sid}="))).unwrap();
    for c in [at, rt] {
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"), "{c}");
        assert!(!c.contains("Secure"), "TLS is off in this test: {c}");
    }
    assert!(at.contains("Path=/;") && at.contains("Max-Age=900"), "{at}");
    assert!(rt.contains("Path=/api/auth/;") && rt.contains("Max-Age=604800"), "{rt}");

    let jar = cookie_header(&cookies);
    let session = e.cli.get("/api/auth/session").header("x-session-id", &sid).header("cookie", &jar).send().await;
    assert_eq!(status(&session), 200);
    assert!(session.0.headers().get("set-cookie").is_none(), "GET never sets cookies");
    let sb = body(session).await;
    assert_eq!(sb["id"], sid);
    assert_eq!(sb["user"]["email"], ADMIN);

    // Refresh rotates both cookies.
    let refreshed = e.cli.post(format!("/api/auth/refresh/{sid}")).header("cookie", &jar).send().await;
    assert_eq!(status(&refreshed), 200);
    let new_cookies = set_cookies(&refreshed);
    assert_eq!(new_cookies.len(), 2);
    assert_ne!(cookie_header(&new_cookies), jar);
    assert_eq!(body(refreshed).await["user"]["email"], ADMIN);
    let jar2 = cookie_header(&new_cookies);
    // The rotated refresh cookie is now refused (within grace: 401 without revoking).
    let stale = e.cli.post(format!("/api/auth/refresh/{sid}")).header("cookie", &jar).send().await;
    assert_eq!(status(&stale), 401);

    // Logout clears both cookies with the same paths.
    let out = e.cli.post(format!("/api/auth/logout/{sid}")).header("cookie", &jar2).send().await;
    assert_eq!(status(&out), 200);
    let cleared = set_cookies(&out);
    assert!(
        cleared.iter().any(|c| c.starts_with(&format!("__miauflix_at_{sid}=;"))
            && c.contains("Max-Age=0")
            && c.contains("Path=/;"))
    );
    assert!(cleared.iter().any(|c| c.starts_with(&format!("__miauflix_rt_{sid}=;"))
        && c.contains("Max-Age=0")
        && c.contains("Path=/api/auth/;")));
    assert!(body(out).await["message"].is_string());

    // The access cookie is refused at once, and refresh fails.
    let after = e.cli.get("/api/auth/session").header("x-session-id", &sid).header("cookie", &jar2).send().await;
    assert_eq!(status(&after), 401);
    let r = e.cli.post(format!("/api/auth/refresh/{sid}")).header("cookie", &jar2).send().await;
    assert_eq!(status(&r), 401);
    // Logout is idempotent, even for unknown or malformed sessions.
    for s in [sid.as_str(), "AAAAAAAAAAAAAAAAAAAAAA", "not-a-session"] {
        assert_eq!(status(&e.cli.post(format!("/api/auth/logout/{s}")).send().await), 200);
    }
    e.state.store.close().await;
}

#[tokio::test]
async fn one_browser_holds_sessions_of_several_users() {
    let e = env().await;
    e.setup_admin().await;
    let (admin_access, _) = e.token(ADMIN, PW).await;
    e.create_user(&admin_access, "kid@example.com", "guest").await;
    let (s1, c1, _) = e.login(ADMIN, PW).await;
    let (s2, c2, _) = e.login("kid@example.com", PW).await;
    let jar = format!("{}; {}; junk=1; __miauflix_rt_bad=zzz", cookie_header(&c1), cookie_header(&c2));
    let list = body(e.cli.get("/api/auth/sessions").header("cookie", &jar).send().await).await;
    // The Miauflix client's shape: a bare array of {session, user{id,email,displayName,role}}.
    let entries = list.as_array().unwrap_or_else(|| panic!("a bare array: {list}"));
    let ids: Vec<&str> = entries.iter().map(|s| s["session"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&s1.as_str()) && ids.contains(&s2.as_str()));
    for entry in entries {
        let keys: Vec<&str> = entry.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["session", "user"], "{entry}");
        let user = &entry["user"];
        for field in ["id", "email", "displayName", "role"] {
            assert!(user[field].is_string(), "user.{field} in {entry}");
        }
        let expected = if entry["session"] == s1.as_str() { (ADMIN, "admin") } else { ("kid@example.com", "guest") };
        assert_eq!((user["email"].as_str().unwrap(), user["role"].as_str().unwrap()), expected);
    }
    // The client calls `.some(…)` on it: no cookie is an empty array, never an object.
    assert_eq!(body(e.cli.get("/api/auth/sessions").send().await).await, json!([]));

    // Each session answers only with its own access cookie.
    let as_kid = e.cli.get("/api/auth/session").header("x-session-id", &s2).header("cookie", &jar).send().await;
    assert_eq!(body(as_kid).await["user"]["role"], "guest");

    // Hostile jars: the same cookie twice is one entry; a refresh token under another
    // session's name, a rotated or a logged-out one, and an access token in a refresh cookie
    // name nobody.
    let rt = |set: &[String], sid: &str| {
        set.iter()
            .find_map(|c| {
                c.split(';').next().unwrap().strip_prefix(&format!("__miauflix_rt_{sid}=")).map(str::to_string)
            })
            .unwrap()
    };
    let at = |set: &[String], sid: &str| {
        set.iter()
            .find_map(|c| {
                c.split(';').next().unwrap().strip_prefix(&format!("__miauflix_at_{sid}=")).map(str::to_string)
            })
            .unwrap()
    };
    let (rt1, rt2) = (rt(&c1, &s1), rt(&c2, &s2));
    let held = |jar: String| {
        let cli = &e.cli;
        async move {
            let v = body(cli.get("/api/auth/sessions").header("cookie", jar).send().await).await;
            v.as_array().unwrap().iter().map(|s| s["session"].as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(held(format!("__miauflix_rt_{s1}={rt1}; __miauflix_rt_{s1}={rt1}")).await, [s1.as_str()]);
    assert_eq!(held(format!("__miauflix_rt_{s1}={rt2}")).await, Vec::<String>::new(), "foreign token");
    assert_eq!(held(format!("__miauflix_rt_{s1}={}", at(&c1, &s1))).await, Vec::<String>::new());
    let refreshed = e.cli.post(format!("/api/auth/refresh/{s2}")).header("cookie", cookie_header(&c2)).send().await;
    assert_eq!(status(&refreshed), 200);
    assert_eq!(held(format!("__miauflix_rt_{s2}={rt2}")).await, Vec::<String>::new(), "rotated token");
    let rt2_new = rt(&set_cookies(&refreshed), &s2);
    assert_eq!(held(format!("__miauflix_rt_{s2}={rt2_new}")).await, [s2.as_str()]);
    e.cli.post(format!("/api/auth/logout/{s2}")).header("cookie", format!("__miauflix_rt_{s2}={rt2_new}")).send().await;
    assert_eq!(held(format!("__miauflix_rt_{s1}={rt1}; __miauflix_rt_{s2}={rt2_new}")).await, [s1.as_str()]);
    e.state.store.close().await;
}

#[tokio::test]
async fn reuse_of_a_rotated_refresh_token_revokes_the_whole_session() {
    let e = env_with(&[("MIAUFLIX_AUTH__REFRESH_REUSE_GRACE_SECS", "0")]).await;
    e.setup_admin().await;
    let (_, r1) = e.token(ADMIN, PW).await;
    let resp = e.cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": r1})).send().await;
    assert_eq!(status(&resp), 200);
    let b = body(resp).await;
    let (a2, r2) = (b["access_token"].as_str().unwrap().to_string(), b["refresh_token"].as_str().unwrap().to_string());
    assert_ne!(r1, r2);
    assert_eq!(status(&e.get_bearer("/api/me", &a2).await), 200);

    // The stolen old token is presented again: refused, and the family dies.
    let reuse = e.cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": r1})).send().await;
    assert_eq!(status(&reuse), 401);
    let successor = e.cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": r2})).send().await;
    assert_eq!(status(&successor), 401, "the rotated successor is revoked too");
    assert_eq!(status(&e.get_bearer("/api/me", &a2).await), 401, "its access token stops at once");
    e.state.store.close().await;
}

#[tokio::test]
async fn racing_refreshes_with_one_token_have_exactly_one_winner() {
    let e = env().await;
    e.setup_admin().await;
    let (_, r1) = e.token(ADMIN, PW).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let auth = e.state.auth.clone();
        let r1 = r1.clone();
        tasks.push(tokio::spawn(async move { auth.refresh(&r1, None, &Default::default()).await }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Ok(issued) = t.await.unwrap() {
            winners.push(issued);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one refresh wins");
    // The winner's session survives the losers (they were within the grace period).
    assert_eq!(status(&e.get_bearer("/api/me", &winners[0].access_token).await), 200);
    let next = e
        .cli
        .post("/api/auth/token/refresh")
        .body_json(&json!({"refresh_token": winners[0].refresh_token.to_string()}))
        .send()
        .await;
    assert_eq!(status(&next), 200);
    e.state.store.close().await;
}

#[tokio::test]
async fn disable_and_role_change_take_effect_on_the_next_request() {
    let e = env().await;
    e.setup_admin().await;
    let (admin, _) = e.token(ADMIN, PW).await;
    let uid = e.create_user(&admin, "u@example.com", "user").await;
    let (ua, ur) = e.token("u@example.com", PW).await;
    assert_eq!(status(&e.get_bearer("/api/me", &ua).await), 200);
    assert_eq!(status(&e.get_bearer("/api/users", &ua).await), 403);

    // Promote: the same token now passes the admin check (role comes from the store).
    let p = e
        .cli
        .patch(format!("/api/users/{uid}"))
        .header("authorization", format!("Bearer {admin}"))
        .body_json(&json!({"role": "admin"}))
        .send()
        .await;
    assert_eq!(status(&p), 200);
    assert_eq!(status(&e.get_bearer("/api/users", &ua).await), 200);
    // Demote again, then disable: refused at once, refresh refused, login refused like a wrong password.
    let p = e
        .cli
        .patch(format!("/api/users/{uid}"))
        .header("authorization", format!("Bearer {admin}"))
        .body_json(&json!({"role": "guest"}))
        .send()
        .await;
    assert_eq!(body(p).await["role"], "guest");
    assert_eq!(status(&e.get_bearer("/api/users", &ua).await), 403);
    let d = e
        .cli
        .patch(format!("/api/users/{uid}"))
        .header("authorization", format!("Bearer {admin}"))
        .body_json(&json!({"disabled": true}))
        .send()
        .await;
    assert_eq!(body(d).await["disabled"], true);
    assert_eq!(status(&e.get_bearer("/api/me", &ua).await), 401);
    let r = e.cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": ur})).send().await;
    assert_eq!(status(&r), 401);
    let l = e.cli.post("/api/auth/token").body_json(&json!({"email": "u@example.com", "password": PW})).send().await;
    assert_eq!(status(&l), 401);
    let unknown =
        e.cli.post("/api/auth/token").body_json(&json!({"email": "nobody@example.com", "password": PW})).send().await;
    let (lb, ub) = (body(l).await, body(unknown).await);
    assert_eq!(lb["type"], ub["type"], "disabled and unknown users get the same answer");
    assert_eq!(lb["type"], "urn:miauflix-gate:problem/invalid-credentials");
    assert_eq!(lb["detail"], ub["detail"]);

    // The last admin cannot be demoted, disabled or deleted.
    let me = body(e.get_bearer("/api/me", &admin).await).await;
    let aid = me["id"].as_str().unwrap();
    for patch in [json!({"role": "user"}), json!({"disabled": true})] {
        let r = e
            .cli
            .patch(format!("/api/users/{aid}"))
            .header("authorization", format!("Bearer {admin}"))
            .body_json(&patch)
            .send()
            .await;
        assert_eq!(status(&r), 409);
    }
    let r = e.cli.delete(format!("/api/users/{aid}")).header("authorization", format!("Bearer {admin}")).send().await;
    assert_eq!(status(&r), 409);
    // Deleting the other user works and frees the email.
    let r = e.cli.delete(format!("/api/users/{uid}")).header("authorization", format!("Bearer {admin}")).send().await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        status(&e.cli.get(format!("/api/users/{uid}")).header("authorization", format!("Bearer {admin}")).send().await),
        404
    );
    e.create_user(&admin, "u@example.com", "user").await;
    e.state.store.close().await;
}

#[tokio::test]
async fn guests_and_users_get_403_on_every_admin_endpoint() {
    let e = env().await;
    e.setup_admin().await;
    let (admin, _) = e.token(ADMIN, PW).await;
    let uid = e.create_user(&admin, "user@example.com", "user").await;
    e.create_user(&admin, "guest@example.com", "guest").await;
    let (user, _) = e.token("user@example.com", PW).await;
    let (guest, _) = e.token("guest@example.com", PW).await;

    // Every operation tagged Users in the spec, plus POST /api/auth/users.
    let spec: Value = serde_json::from_str(&openapi_json(e.state.clone())).unwrap();
    let mut ops = vec![("post".to_string(), "/api/auth/users".to_string())];
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "Users")) {
                ops.push((method.clone(), path.replace("{id}", &uid)));
            }
        }
    }
    assert!(ops.len() >= 9, "{ops:?}");
    let payload = json!({"email": "x@example.com", "password": PW, "newPassword": PW, "role": "admin"});
    for token in [&user, &guest] {
        for (method, path) in &ops {
            let req = match method.as_str() {
                "get" => e.cli.get(path),
                "post" => e.cli.post(path),
                "patch" => e.cli.patch(path),
                "delete" => e.cli.delete(path),
                m => panic!("unexpected method {m}"),
            };
            let resp = req.header("authorization", format!("Bearer {token}")).body_json(&payload).send().await;
            assert_eq!(status(&resp), 403, "{method} {path}");
        }
    }
    // And without credentials: 401 everywhere.
    for (method, path) in &ops {
        let req = match method.as_str() {
            "get" => e.cli.get(path),
            "post" => e.cli.post(path),
            "patch" => e.cli.patch(path),
            _ => e.cli.delete(path),
        };
        assert_eq!(status(&req.body_json(&payload).send().await), 401, "{method} {path}");
    }
    // The admin can.
    assert_eq!(status(&e.get_bearer("/api/users", &admin).await), 200);
    e.state.store.close().await;
}

fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[tokio::test]
async fn forged_and_invalid_access_tokens_are_refused() {
    let e = env().await;
    e.setup_admin().await;
    let (good, _) = e.token(ADMIN, PW).await;
    assert_eq!(status(&e.get_bearer("/api/me", &good).await), 200);
    let parts: Vec<&str> = good.split('.').collect();
    let header: Value = serde_json::from_slice(&base64_decode(parts[0])).unwrap();
    let claims: Value = serde_json::from_slice(&base64_decode(parts[1])).unwrap();
    let kid = header["kid"].as_str().unwrap();

    let mut bad = Vec::new();
    // alg none.
    bad.push(format!(
        "{}.{}.",
        b64url(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string().as_bytes()),
        parts[1]
    ));
    // HS256 signed with the public key as the HMAC secret.
    let jwks = body(e.cli.get("/.well-known/jwks.json").send().await).await;
    let x = jwks["keys"][0]["x"].as_str().unwrap();
    let public = base64_decode(x);
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(kid.to_string());
    bad.push(jsonwebtoken::encode(&hs, &claims, &jsonwebtoken::EncodingKey::from_secret(&public)).unwrap());
    bad.push(jsonwebtoken::encode(&hs, &claims, &jsonwebtoken::EncodingKey::from_secret(x.as_bytes())).unwrap());
    // Unknown kid, with a valid signature otherwise.
    bad.push(format!(
        "{}.{}.{}",
        b64url(json!({"alg": "EdDSA", "typ": "JWT", "kid": "ffffffffffffffff"}).to_string().as_bytes()),
        parts[1],
        parts[2]
    ));
    // Tampered payload (role escalation attempt), original signature.
    let mut tampered = claims.clone();
    tampered["sub"] = json!("00000000000000000000000000000000");
    bad.push(format!("{}.{}.{}", parts[0], b64url(tampered.to_string().as_bytes()), parts[2]));
    // Properly signed by our key, but expired / wrong aud / wrong iss / not yet valid.
    let keys = e.state.auth.keys();
    let base = keys.claims(
        claims["sub"].as_str().unwrap(),
        claims["sid"].as_str().unwrap(),
        "admin",
        miauflix_gate::clock::now(),
    );
    let mut expired = base.clone();
    expired.iat -= 3600;
    expired.nbf -= 3600;
    expired.exp = miauflix_gate::clock::now() - 120;
    bad.push(keys.sign(&expired).unwrap());
    let mut aud = base.clone();
    aud.aud = "someone-else".into();
    bad.push(keys.sign(&aud).unwrap());
    let mut iss = base.clone();
    iss.iss = "evil".into();
    bad.push(keys.sign(&iss).unwrap());
    let mut future = base.clone();
    future.nbf += 3600;
    bad.push(keys.sign(&future).unwrap());
    // Garbage.
    bad.push("not.a.jwt".into());
    bad.push("x".repeat(10_000));
    bad.push(String::new());

    for token in &bad {
        let resp = e.get_bearer("/api/me", token).await;
        assert_eq!(status(&resp), 401, "token must be refused: {}", &token[..token.len().min(80)]);
    }
    // A correctly signed fresh token for the same session still works.
    assert_eq!(status(&e.get_bearer("/api/me", &keys.sign(&base).unwrap()).await), 200);
    e.state.store.close().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

#[tokio::test]
async fn malformed_session_ids_and_cookies_are_401_never_500() {
    let e = env().await;
    e.setup_admin().await;
    let (sid, cookies, _) = e.login(ADMIN, PW).await;
    let jar = cookie_header(&cookies);
    let long = "A".repeat(5000);
    let cases: Vec<(Option<&str>, Option<String>)> = vec![
        (None, Some(jar.clone())),
        (Some(sid.as_str()), None),
        (Some("../../etc/passwd"), Some(jar.clone())),
        (Some(long.as_str()), Some(jar.clone())),
        (Some("AAAAAAAAAAAAAAAAAAAAAA"), Some(jar.clone())),
        (Some(sid.as_str()), Some(format!("__miauflix_at_{sid}=garbage"))),
        (Some(sid.as_str()), Some(format!("__miauflix_at_{sid}={long}"))),
        (Some(sid.as_str()), Some(format!("__miauflix_at_{sid}"))),
        (Some(sid.as_str()), Some(";;;===;".into())),
    ];
    for (header, cookie) in cases {
        let mut req = e.cli.get("/api/auth/session");
        if let Some(h) = header {
            req = req.header("x-session-id", h);
        }
        if let Some(c) = &cookie {
            req = req.header("cookie", c);
        }
        let resp = req.send().await;
        assert_eq!(status(&resp), 401, "{header:?} {:?}", cookie.as_ref().map(|c| &c[..c.len().min(60)]));
        assert_eq!(resp.0.headers().get("content-type").unwrap(), "application/problem+json");
    }
    // Refresh with missing, corrupted, oversized or foreign refresh cookies.
    let (other_sid, other_cookies, _) = e.login(ADMIN, PW).await;
    let foreign = cookie_header(&other_cookies).replace(&other_sid, &sid);
    for cookie in
        [String::new(), format!("__miauflix_rt_{sid}=garbage!"), format!("__miauflix_rt_{sid}={long}"), foreign]
    {
        let resp = e.cli.post(format!("/api/auth/refresh/{sid}")).header("cookie", &cookie).send().await;
        assert_eq!(status(&resp), 401, "{}", &cookie[..cookie.len().min(60)]);
    }
    for bad_sid in ["x", "../..", &long] {
        let resp = e.cli.post(format!("/api/auth/refresh/{bad_sid}")).header("cookie", &jar).send().await;
        assert!(matches!(status(&resp), 401 | 404), "{}", status(&resp));
    }
    let resp = e.cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": "x".repeat(200)})).send().await;
    assert_eq!(status(&resp), 401);
    e.state.store.close().await;
}

#[tokio::test]
async fn account_password_change_and_sessions() {
    let e = env().await;
    e.setup_admin().await;
    let (a1, _) = e.token(ADMIN, PW).await;
    let (a2, r2) = e.token(ADMIN, PW).await;
    let (sid3, c3, _) = e.login(ADMIN, PW).await;

    let list = body(e.get_bearer("/api/me/sessions", &a1).await).await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);
    assert!(list.iter().all(|s| s["ip"].is_string() && s["userAgent"].is_string() && s["createdAt"].is_number()));

    // Revoke the browser session from the API session.
    let r =
        e.cli.delete(format!("/api/me/sessions/{sid3}")).header("authorization", format!("Bearer {a1}")).send().await;
    assert_eq!(status(&r), 200);
    let s =
        e.cli.get("/api/auth/session").header("x-session-id", &sid3).header("cookie", cookie_header(&c3)).send().await;
    assert_eq!(status(&s), 401);
    let r =
        e.cli.delete(format!("/api/me/sessions/{sid3}")).header("authorization", format!("Bearer {a1}")).send().await;
    assert_eq!(status(&r), 404);

    // Wrong current password; weak new ones.
    let wrong = e
        .cli
        .post("/api/me/password")
        .header("authorization", format!("Bearer {a1}"))
        .body_json(&json!({"currentPassword": "nope-nope-nope", "newPassword": "another-long-pass"}))
        .send()
        .await;
    assert_eq!(status(&wrong), 401);
    for weak in ["short", "qwerty123456", ADMIN] {
        let r = e
            .cli
            .post("/api/me/password")
            .header("authorization", format!("Bearer {a1}"))
            .body_json(&json!({"currentPassword": PW, "newPassword": weak}))
            .send()
            .await;
        assert_eq!(status(&r), 400, "{weak}");
    }
    let ok = e
        .cli
        .post("/api/me/password")
        .header("authorization", format!("Bearer {a1}"))
        .body_json(&json!({"currentPassword": PW, "newPassword": "another-long-pass"}))
        .send()
        .await;
    assert_eq!(status(&ok), 200);
    let ob = body(ok).await;
    assert_eq!(ob["revokedSessions"], 1, "{ob}");
    assert!(ob["message"].as_str().unwrap().contains("1 other session"));
    assert_eq!(status(&e.get_bearer("/api/me", &a1).await), 200, "the current session stays");
    assert_eq!(status(&e.get_bearer("/api/me", &a2).await), 401, "others end at once");
    let r = e.cli.post("/api/auth/token/refresh").body_json(&json!({"refresh_token": r2})).send().await;
    assert_eq!(status(&r), 401);
    let old = e.cli.post("/api/auth/token").body_json(&json!({"email": ADMIN, "password": PW})).send().await;
    assert_eq!(status(&old), 401);
    let (a4, _) = e.token(ADMIN, "another-long-pass").await;

    // Logout everywhere.
    let r = e.cli.post("/api/me/logout-all").header("authorization", format!("Bearer {a4}")).send().await;
    assert_eq!(body(r).await["revokedSessions"], 2);
    assert_eq!(status(&e.get_bearer("/api/me", &a4).await), 401);
    e.state.store.close().await;
}

#[tokio::test]
async fn the_least_recently_used_session_goes_beyond_the_limit() {
    let e = env_with(&[("MIAUFLIX_AUTH__MAX_SESSIONS_PER_USER", "3")]).await;
    e.setup_admin().await;
    let (first, _) = e.token(ADMIN, PW).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(e.token(ADMIN, PW).await.0);
    }
    assert_eq!(status(&e.get_bearer("/api/me", &first).await), 401, "oldest session evicted");
    for a in &others {
        assert_eq!(status(&e.get_bearer("/api/me", a).await), 200);
    }
    assert_eq!(body(e.get_bearer("/api/me/sessions", &others[0]).await).await.as_array().unwrap().len(), 3);
    e.state.store.close().await;
}

impl Env {
    /// A GET of `/api/me` as a browser session; its status.
    async fn use_browser(&self, sid: &str, jar: &str) -> u16 {
        status(&self.cli.get("/api/me").header("x-session-id", sid).header("cookie", jar).send().await)
    }
}

/// The `sid` claim of an access token (read, not verified).
fn sid_of(access: &str) -> String {
    let claims: Value = serde_json::from_slice(&base64_decode(access.split('.').nth(1).unwrap())).unwrap();
    claims["sid"].as_str().unwrap().to_string()
}

/// The cap's evictions in the audit log: (session, detail), oldest first.
async fn evictions(e: &Env, admin: &str) -> Vec<(String, Value)> {
    let page = body(e.get_bearer("/api/audit?type=session_revoked&limit=1000", admin).await).await;
    let mut out: Vec<(String, Value)> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ev| ev["detail"]["reason"] == "session limit")
        .map(|ev| (ev["target"].as_str().unwrap().to_string(), ev["detail"].clone()))
        .collect();
    out.reverse();
    out
}

#[tokio::test]
async fn the_session_cap_evicts_the_least_recently_used_not_the_oldest_login() {
    let e = env_with(&[
        ("MIAUFLIX_AUTH__MAX_SESSIONS_PER_USER", "3"),
        ("MIAUFLIX_RATE_LIMITS__API", "{per_minute = 100000, burst = 10000}"),
    ])
    .await;
    e.setup_admin().await;
    let started = miauflix_gate::clock::now();
    // The busy one logged in first, so the old rule (oldest login or refresh) evicted it first.
    let (busy, jar, _) = e.login(ADMIN, PW).await;
    let jar = cookie_header(&jar);
    let mut others: std::collections::VecDeque<String> = Default::default();
    let mut gone = Vec::new();
    for round in 0..6 {
        assert_eq!(e.use_browser(&busy, &jar).await, 200, "round {round}: the busy session lives");
        others.push_back(e.token(ADMIN, PW).await.0);
        while others.len() > 2 {
            let evicted = others.pop_front().unwrap();
            assert_eq!(status(&e.get_bearer("/api/me", &evicted).await), 401, "round {round}: the idle one went");
            gone.push(sid_of(&evicted));
        }
        // Using them, oldest first, keeps their order: the oldest is the next to go.
        for a in &others {
            assert_eq!(status(&e.get_bearer("/api/me", a).await), 200, "round {round}");
        }
    }
    assert_eq!(e.use_browser(&busy, &jar).await, 200);
    let listed = body(e.get_bearer("/api/me/sessions", &others[1]).await).await;
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    // The listing reads the last use from memory: the session just used comes first.
    assert_eq!(listed[0]["id"], sid_of(&others[1]), "{listed:?}");

    // Each eviction is recorded with the evicted session's last use.
    let recorded = evictions(&e, &others[1]).await;
    assert_eq!(recorded.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>(), gone);
    for (sid, detail) in &recorded {
        let last: i64 = detail["last_used_at"].as_str().unwrap().parse().unwrap();
        assert!((started..=miauflix_gate::clock::now()).contains(&last), "{sid}: {detail}");
        assert!(detail["user"].is_string(), "{detail}");
    }
    e.state.store.close().await;
}

#[tokio::test]
async fn only_verified_credentials_keep_a_session_from_eviction() {
    let toml = r#"
[auth]
max_sessions_per_user = 3
[rate_limits.auth]
per_minute = 100000
burst = 10000
[rate_limits.api]
per_minute = 100000
burst = 10000
[[routes]]
prefix = "/stream"
upstream = "http://127.0.0.1:1"
min_role = "guest"
stream_keys = true
"#;
    let common::app::App { state, dir } = common::app::App::open(Some(toml), &[]).await;
    let cli = common::app::client(&state).default_header("origin", "http://gate.test");
    let e = Env { cli, state, _dir: dir };
    e.setup_admin().await;

    // A victim session, then two newer ones that are used: the victim is least recently used.
    let (victim, vjar, vbody) = e.login(ADMIN, PW).await;
    let vjar = cookie_header(&vjar);
    let uid = vbody["user"]["id"].as_str().unwrap().to_string();
    let r = e
        .cli
        .post("/api/stream-keys")
        .header("x-session-id", &victim)
        .header("cookie", &vjar)
        .body_json(&json!({"path": "/stream/film", "ttlSeconds": 3600}))
        .send()
        .await;
    assert_eq!(status(&r), 200);
    let url = body(r).await["url"].as_str().unwrap().to_string();
    let (a1, _) = e.token(ADMIN, PW).await;
    let (a2, _) = e.token(ADMIN, PW).await;
    for a in [&a1, &a2] {
        assert_eq!(status(&e.get_bearer("/api/me", a).await), 200);
    }

    // A valid stream URL is a use: the next login evicts a1, not the victim.
    assert_eq!(status(&e.cli.get(&url).send().await), 502, "authenticated, then the dead upstream");
    let (a3, _) = e.token(ADMIN, PW).await;
    assert_eq!(status(&e.get_bearer("/api/me", &a1).await), 401);
    assert_eq!(e.use_browser(&victim, &vjar).await, 200);
    for a in [&a2, &a3] {
        assert_eq!(status(&e.get_bearer("/api/me", a).await), 200);
    }

    // Now the victim is least recently used again. Whoever knows its session id (it is sent
    // as X-Session-Id, shown to admins, written in the audit log) and its user id cannot keep it
    // alive: a token with its claims and another token's signature, an unsigned one, a stream
    // URL with its id and a wrong tag, its id without its cookie, another session's cookie.
    let real = a2.split('.').collect::<Vec<_>>();
    let mut claims: Value = serde_json::from_slice(&base64_decode(real[1])).unwrap();
    claims["sid"] = json!(victim);
    claims["sub"] = json!(uid);
    let claims = b64url(claims.to_string().as_bytes());
    let none = b64url(br#"{"alg":"none","typ":"JWT"}"#);
    let (_, key_part) = url.split_once("mf_sk=").unwrap();
    let mut parts: Vec<String> = key_part.split('.').map(str::to_string).collect();
    parts[3] = b64url(&[0u8; 32]);
    let forged_key = parts.join(".");
    for _ in 0..3 {
        for token in [format!("{}.{claims}.{}", real[0], real[2]), format!("{none}.{claims}.")] {
            assert_eq!(status(&e.get_bearer("/api/me", &token).await), 401);
        }
        assert_eq!(status(&e.cli.get(format!("/stream/film?mf_sk={forged_key}")).send().await), 401);
        assert_eq!(status(&e.cli.get("/api/me").header("x-session-id", &victim).send().await), 401);
        let a2_cookie = format!("__miauflix_at_{victim}={a2}");
        assert_eq!(
            status(&e.cli.get("/api/me").header("x-session-id", &victim).header("cookie", a2_cookie).send().await),
            401
        );
    }
    let (_a4, _) = e.token(ADMIN, PW).await;
    assert_eq!(e.use_browser(&victim, &vjar).await, 401, "forged uses did not count");
    assert_eq!(status(&e.get_bearer("/api/me", &a2).await), 200);
    e.state.store.close().await;
}

#[tokio::test]
async fn the_last_use_is_persisted_by_the_next_write_and_survives_a_restart() {
    let vars = [
        ("MIAUFLIX_AUTH__MAX_SESSIONS_PER_USER", "3"),
        ("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}"),
    ];
    let e = env_with(&vars).await;
    e.setup_admin().await;
    let (a, _) = e.token(ADMIN, PW).await;
    let (b, _) = e.token(ADMIN, PW).await;
    // a is used (in memory only), then a login writes the cap's transaction, which persists it.
    assert_eq!(status(&e.get_bearer("/api/me", &a).await), 200);
    e.token(ADMIN, PW).await;
    let Env { cli, state, _dir: dir } = e;
    state.store.close().await;
    drop((cli, state));
    let state = common::app::open_in(dir.path(), None, &vars).await;
    let cli = common::app::client(&state).default_header("origin", "http://gate.test");
    let r = cli.post("/api/auth/token").body_json(&json!({"email": ADMIN, "password": PW})).send().await;
    assert_eq!(status(&r), 200);
    let bearer_status = |t: String| {
        let cli = &cli;
        async move { status(&cli.get("/api/me").header("authorization", format!("Bearer {t}")).send().await) }
    };
    assert_eq!(bearer_status(b).await, 401, "b, never used, went");
    assert_eq!(bearer_status(a).await, 200, "a's use outlived the restart");
    state.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_client_is_never_evicted_while_others_keep_logging_in() {
    let e = env_with(&[
        ("MIAUFLIX_AUTH__MAX_SESSIONS_PER_USER", "3"),
        ("MIAUFLIX_RATE_LIMITS__API", "{per_minute = 1000000, burst = 100000}"),
        ("MIAUFLIX_RATE_LIMITS__GLOBAL", "{per_minute = 1000000, burst = 100000}"),
    ])
    .await;
    e.setup_admin().await;
    let (busy, jar, _) = e.login(ADMIN, PW).await;
    let jar = cookie_header(&jar);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The busy client: requests back to back on its own task until the others are done.
    let worker = {
        let (cli, stop) = (common::app::client(&e.state), stop.clone());
        tokio::spawn(async move {
            let mut answers = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = cli.get("/api/me").header("x-session-id", &busy).header("cookie", &jar).send().await;
                assert_eq!(r.0.status().as_u16(), 200, "the busy session was refused after {answers} answers");
                answers += 1;
            }
            answers
        })
    };
    // Four other clients of the same user log in again and again, at once.
    let loggers: Vec<_> = (0..4)
        .map(|_| {
            let cli = common::app::client(&e.state).default_header("origin", "http://gate.test");
            tokio::spawn(async move {
                let mut sessions = 0;
                for _ in 0..5 {
                    let r =
                        cli.post("/api/auth/token").body_json(&json!({"email": ADMIN, "password": PW})).send().await;
                    assert_eq!(r.0.status().as_u16(), 200);
                    sessions += 1;
                }
                sessions
            })
        })
        .collect();
    let mut logins = 0;
    for l in loggers {
        logins += l.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = worker.await.expect("the busy client never saw a 401");
    assert_eq!(logins, 20);
    assert!(answers > 0);
    println!("busy client: {answers} answers while 20 logins evicted {} sessions", 20 - 2);
    // Cap held: the busy one and the two most recent.
    assert_eq!(e.state.auth.active_sessions(), 3);
    e.state.store.close().await;
}

#[tokio::test]
async fn admin_reset_password_and_user_sessions() {
    let e = env().await;
    e.setup_admin().await;
    let (admin, _) = e.token(ADMIN, PW).await;
    let uid = e.create_user(&admin, "v@example.com", "user").await;
    let dup = e
        .cli
        .post("/api/auth/users")
        .header("authorization", format!("Bearer {admin}"))
        .body_json(&json!({"email": "V@example.com", "password": PW}))
        .send()
        .await;
    assert_eq!(status(&dup), 409);
    let (ua, _) = e.token("v@example.com", PW).await;
    let list = body(
        e.cli.get(format!("/api/users/{uid}/sessions")).header("authorization", format!("Bearer {admin}")).send().await,
    )
    .await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let r = e
        .cli
        .post(format!("/api/users/{uid}/reset-password"))
        .header("authorization", format!("Bearer {admin}"))
        .body_json(&json!({"newPassword": "brand-new-password"}))
        .send()
        .await;
    assert_eq!(body(r).await["revokedSessions"], 1);
    assert_eq!(status(&e.get_bearer("/api/me", &ua).await), 401);
    let (ua, _) = e.token("v@example.com", "brand-new-password").await;
    let r = e
        .cli
        .delete(format!("/api/users/{uid}/sessions"))
        .header("authorization", format!("Bearer {admin}"))
        .send()
        .await;
    assert_eq!(body(r).await["revokedSessions"], 1);
    assert_eq!(status(&e.get_bearer("/api/me", &ua).await), 401);
    let users = body(e.get_bearer("/api/users", &admin).await).await;
    assert_eq!(users.as_array().unwrap().len(), 2);
    assert!(users.to_string().find("password").is_none(), "no hashes in listings");
    e.state.store.close().await;
}

#[tokio::test]
async fn jwks_publishes_the_ed25519_verification_key() {
    let e = env().await;
    let jwks = body(e.cli.get("/.well-known/jwks.json").send().await).await;
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");
    assert_eq!(key["alg"], "EdDSA");
    assert!(key["kid"].is_string());
    assert_eq!(base64_decode(key["x"].as_str().unwrap()).len(), 32);
    assert!(key.get("d").is_none(), "never the private part");
    e.state.store.close().await;
}

#[tokio::test]
async fn outdated_hashes_are_upgraded_at_the_next_login() {
    let dir = tempfile::tempdir().unwrap();
    let open = |iterations: &'static str| {
        let data = dir.path().join("data");
        async move {
            common::app::open_in(data.parent().unwrap(), None, &[("MIAUFLIX_PASSWORD__ITERATIONS", iterations)]).await
        }
    };
    let hash_of = |state: &Arc<AppState>| {
        state
            .store
            .read(|txn| {
                let t = txn.open_table(miauflix_gate::store::tables::USERS)?;
                let row = redb::ReadableTable::first(&t)?.unwrap();
                let u: Value = serde_json::from_slice(row.1.value()).unwrap();
                Ok(u["password_hash"].as_str().unwrap().to_string())
            })
            .unwrap()
    };
    let state = open("2").await;
    let token = std::fs::read_to_string(state.config.setup_token_path()).unwrap();
    state.auth.complete_setup(ADMIN, PW.to_string().into(), token.trim(), &Default::default()).await.unwrap();
    assert!(hash_of(&state).contains("t=2"));
    state.store.close().await;
    drop(state);

    let state = open("3").await;
    state
        .auth
        .login(ADMIN, PW.to_string().into(), miauflix_gate::auth::SessionKind::Api, &Default::default())
        .await
        .unwrap();
    assert!(hash_of(&state).contains("t=3"), "rehashed with the new parameters");
    state.store.close().await;
}

/// A sign-in whose password check is in flight must not write back the user record it read
/// before: an admin's password reset or disable that commits meanwhile stays, and no session
/// opened with the old password outlives it (the sign-in wrote back the stale record and undid
/// the reset before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_or_disable_during_a_sign_in_is_never_undone() {
    // Each round checks that the old password fails: the lockout must not end the test.
    let e = env_with(&[("MIAUFLIX_LOCKOUT__MAX_FAILURES", "100")]).await;
    e.setup_admin().await;
    let admin = {
        let r = e.cli.post("/api/auth/token").body_json(&json!({"email": ADMIN, "password": PW})).send().await;
        format!("Bearer {}", body(r).await["access_token"].as_str().unwrap())
    };
    const VICTIM: &str = "victim@example.com";
    let r = e
        .cli
        .post("/api/users")
        .header("authorization", &admin)
        .body_json(&json!({"email": VICTIM, "password": PW, "role": "user"}))
        .send()
        .await;
    assert_eq!(status(&r), 201);
    let id = body(r).await["id"].as_str().unwrap().to_string();
    for round in 0..12u64 {
        let old = if round == 0 { PW.to_string() } else { format!("{PW} {}", round - 1) };
        let new = format!("{PW} {round}");
        let attacker = {
            let cli = common::app::client(&e.state).default_header("origin", "http://gate.test");
            let old = old.clone();
            tokio::spawn(async move {
                let r = cli.post("/api/auth/token").body_json(&json!({"email": VICTIM, "password": old})).send().await;
                let s = r.0.status().as_u16();
                (s, body(r).await["access_token"].as_str().map(str::to_string))
            })
        };
        // The reset lands somewhere in or around the attacker's hash.
        tokio::time::sleep(std::time::Duration::from_millis(round * 3)).await;
        let r = e
            .cli
            .post(format!("/api/users/{id}/reset-password"))
            .header("authorization", &admin)
            .body_json(&json!({"newPassword": new}))
            .send()
            .await;
        assert_eq!(status(&r), 200, "round {round}");
        let (s, token) = attacker.await.unwrap();
        assert!(s == 200 || s == 401, "round {round}: {s}");
        // Whatever the order, the new password is the one that works now...
        let r = e.cli.post("/api/auth/token").body_json(&json!({"email": VICTIM, "password": old})).send().await;
        assert_eq!(status(&r), 401, "round {round}: the old password was restored");
        // ...and a session the old password opened does not outlive the reset.
        if let Some(t) = token {
            let r = e.cli.get("/api/me").header("authorization", format!("Bearer {t}")).send().await;
            assert_eq!(status(&r), 401, "round {round}: a session from the old password is live");
        }
    }
    // The same for a disable.
    let r = e
        .cli
        .patch(format!("/api/users/{id}"))
        .header("authorization", &admin)
        .body_json(&json!({"disabled": false}))
        .send()
        .await;
    assert_eq!(status(&r), 200);
    let pw = format!("{PW} 11");
    for round in 0..8u64 {
        let attacker = {
            let cli = common::app::client(&e.state).default_header("origin", "http://gate.test");
            let pw = pw.clone();
            tokio::spawn(async move {
                let r = cli.post("/api/auth/token").body_json(&json!({"email": VICTIM, "password": pw})).send().await;
                body(r).await["access_token"].as_str().map(str::to_string)
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(round * 4)).await;
        let r = e
            .cli
            .patch(format!("/api/users/{id}"))
            .header("authorization", &admin)
            .body_json(&json!({"disabled": true}))
            .send()
            .await;
        assert_eq!(status(&r), 200);
        let token = attacker.await.unwrap();
        let r = e.cli.get(format!("/api/users/{id}")).header("authorization", &admin).send().await;
        assert_eq!(body(r).await["disabled"], true, "round {round}: the disable was undone");
        if let Some(t) = token {
            let r = e.cli.get("/api/me").header("authorization", format!("Bearer {t}")).send().await;
            assert_eq!(status(&r), 401, "round {round}: a disabled user's session is live");
        }
        let r = e
            .cli
            .patch(format!("/api/users/{id}"))
            .header("authorization", &admin)
            .body_json(&json!({"disabled": false}))
            .send()
            .await;
        assert_eq!(status(&r), 200);
    }
    e.state.store.close().await;
}
