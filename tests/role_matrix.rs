//! The role matrix: every operation in the OpenAPI document, called with no credentials, as a
//! guest, a user and an admin, with a disabled user's token and with a logged-out session's
//! token. Each operation declares its minimum role in its description (`Minimum role: admin.`);
//! an operation without one fails here, and so does one whose answers do not match it: below
//! the role the answer is 401 (no valid credentials) or 403 (a valid caller whose role is too
//! low), at or above it neither of those, and never a 5xx for anyone.
//!
//! Bodies are built from the operation's request schema (required fields, lengths, enums), so
//! a valid request reaches the role check instead of stopping at body validation.

use std::collections::BTreeMap;
use std::sync::Arc;

use miauflix_gate::config::{Config, Overrides};
use miauflix_gate::http::{AppState, build_app, openapi_json};
use poem::http::Method;
use poem::test::TestClient;
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct-horse-battery";

type Client = TestClient<poem::endpoint::BoxEndpoint<'static, poem::Response>>;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Role {
    Public,
    Guest,
    User,
    Admin,
}

fn declared_role(op: &Value) -> Option<Role> {
    let text = format!("{} {}", op["summary"].as_str().unwrap_or(""), op["description"].as_str().unwrap_or(""));
    let mut found = text.match_indices("Minimum role: ").map(|(i, m)| &text[i + m.len()..]);
    let role = match found.next()?.split(['.', ' ', '\n']).next()? {
        "public" => Role::Public,
        "guest" => Role::Guest,
        "user" => Role::User,
        "admin" => Role::Admin,
        _ => return None,
    };
    // Exactly one declaration.
    if found.next().is_some() { None } else { Some(role) }
}

/// Who calls: a role with valid credentials, or credentials that must never work.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Caller {
    Anonymous,
    Guest,
    User,
    Admin,
    Disabled,
    LoggedOut,
}

impl Caller {
    fn role(self) -> Option<Role> {
        match self {
            Caller::Guest => Some(Role::Guest),
            Caller::User => Some(Role::User),
            Caller::Admin => Some(Role::Admin),
            _ => None,
        }
    }
    fn email(self) -> Option<&'static str> {
        match self {
            Caller::Guest => Some("guest@example.com"),
            Caller::User => Some("user@example.com"),
            Caller::Admin => Some(ADMIN),
            _ => None,
        }
    }
}

struct Lab {
    cli: Client,
    state: Arc<AppState>,
    spec: Value,
    tokens: BTreeMap<&'static str, (String, String)>,
    _dir: tempfile::TempDir,
}

async fn json_of(resp: poem::test::TestResponse) -> (u16, Value) {
    let status = resp.0.status().as_u16();
    let text = resp.0.into_body().into_string().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Lab {
    async fn start() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let flags = Overrides {
            data_dir: Some(dir.path().join("data")),
            listen: Some("127.0.0.1:0".into()),
            tls: Some("off".into()),
        };
        let env = vec![("MIAUFLIX_RATE_LIMITS__AUTH".to_string(), "{per_minute = 100000, burst = 10000}".to_string())];
        let config = Config::load(None, env, &flags).unwrap();
        let state = miauflix_gate::server::open(config).await.unwrap().state;
        let app = poem::EndpointExt::boxed(build_app(state.clone()));
        let cli = TestClient::new(app).default_header("host", "gate.test").default_header("origin", "http://gate.test");
        let spec: Value = serde_json::from_str(&openapi_json(state.clone())).unwrap();
        let mut lab = Lab { cli, state, spec, tokens: BTreeMap::new(), _dir: dir };
        let token = std::fs::read_to_string(lab.state.config.setup_token_path()).unwrap();
        let r = lab
            .cli
            .post("/api/auth/setup")
            .body_json(&json!({"email": ADMIN, "password": PW, "setupToken": token.trim()}))
            .send()
            .await;
        assert_eq!(r.0.status(), 201);
        lab.login(ADMIN).await;
        for (email, role) in [
            ("user@example.com", "user"),
            ("guest@example.com", "guest"),
            ("disabled@example.com", "user"),
            ("gone@example.com", "user"),
            ("victim@example.com", "user"),
        ] {
            let (s, _) =
                lab.admin_call(Method::POST, "/api/users", json!({"email": email, "password": PW, "role": role})).await;
            assert_eq!(s, 201, "create {email}");
        }
        for email in ["user@example.com", "guest@example.com", "disabled@example.com", "gone@example.com"] {
            lab.login(email).await;
        }
        // The disabled user's token was valid until the admin disabled the account.
        let id = lab.user_id("disabled@example.com").await;
        let (s, _) = lab.admin_call(Method::PATCH, &format!("/api/users/{id}"), json!({"disabled": true})).await;
        assert_eq!(s, 200);
        // The logged-out session's token was valid until its session was revoked.
        let refresh = lab.tokens["gone@example.com"].1.clone();
        let r = lab.cli.post("/api/auth/token/revoke").body_json(&json!({"refresh_token": refresh})).send().await;
        assert_eq!(r.0.status(), 200);
        lab
    }

    /// Logs `email` in as an API client and keeps its tokens.
    async fn login(&mut self, email: &'static str) {
        let r = self.cli.post("/api/auth/token").body_json(&json!({"email": email, "password": PW})).send().await;
        let (s, b) = json_of(r).await;
        assert_eq!(s, 200, "login {email}: {b}");
        let access = b["access_token"].as_str().unwrap().to_string();
        let refresh = b["refresh_token"].as_str().unwrap().to_string();
        self.tokens.insert(email, (access, refresh));
    }

    async fn admin_call(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let access = &self.tokens[ADMIN].0;
        json_of(
            self.cli
                .request(method, path)
                .header("authorization", format!("Bearer {access}"))
                .body_json(&body)
                .send()
                .await,
        )
        .await
    }

    async fn user_id(&self, email: &str) -> String {
        let (_, users) = self.admin_call(Method::GET, "/api/users", Value::Null).await;
        let user = users.as_array().unwrap().iter().find(|u| u["email"] == email).unwrap();
        user["id"].as_str().unwrap().to_string()
    }

    fn access(&self, caller: Caller) -> Option<String> {
        match caller {
            Caller::Anonymous => None,
            Caller::Disabled => Some(self.tokens["disabled@example.com"].0.clone()),
            Caller::LoggedOut => Some(self.tokens["gone@example.com"].0.clone()),
            c => Some(self.tokens[c.email().unwrap()].0.clone()),
        }
    }

    /// After a call that may have ended the caller's own session (logout-all, a password
    /// change), logs in again so the next operation is tried with live credentials.
    async fn keep_alive(&mut self, caller: Caller) {
        let (Some(email), Some(access)) = (caller.email(), self.access(caller)) else { return };
        let r = self.cli.get("/api/me").header("authorization", format!("Bearer {access}")).send().await;
        if r.0.status() != 200 {
            self.login(email).await;
        }
    }
}

/// A value the schema accepts: required properties only, strings at their minimum length,
/// the first enum value, integers at their minimum.
fn example(spec: &Value, schema: &Value, name: &str) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let target = &spec["components"]["schemas"][r.rsplit('/').next().unwrap()];
        return example(spec, target, name);
    }
    if let Some(all) = schema["allOf"].as_array() {
        return example(spec, &all[0], name);
    }
    if let Some(e) = schema["enum"].as_array() {
        return e[0].clone();
    }
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = serde_json::Map::new();
            for req in schema["required"].as_array().into_iter().flatten() {
                let key = req.as_str().unwrap();
                out.insert(key.into(), example(spec, &schema["properties"][key], key));
            }
            Value::Object(out)
        }
        Some("array") => {
            let n = schema["minItems"].as_u64().unwrap_or(0) as usize;
            Value::Array((0..n).map(|_| example(spec, &schema["items"], name)).collect())
        }
        Some("integer") | Some("number") => json!(schema["minimum"].as_f64().unwrap_or(1.0) as i64),
        Some("boolean") => json!(false),
        _ => {
            let lower = name.to_ascii_lowercase();
            let base = if lower.contains("password") {
                PW.to_string()
            } else if lower.contains("email") {
                "matrix@example.com".to_string()
            } else if lower == "path" {
                "/media/x".to_string()
            } else {
                "x".to_string()
            };
            let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
            let max = schema["maxLength"].as_u64().map(|m| m as usize).unwrap_or(usize::MAX);
            let mut s = base;
            while s.len() < min {
                s.push('A');
            }
            s.truncate(max.max(min));
            json!(s)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_answers_by_its_declared_minimum_role() {
    let mut lab = Lab::start().await;
    let victim = lab.user_id("victim@example.com").await;
    let spec = lab.spec.clone();
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let role = declared_role(op).unwrap_or_else(|| {
                panic!("{method} {path} declares no minimum role (`Minimum role: public|guest|user|admin.`)")
            });
            // The declaration and the security requirement in the spec agree.
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            if path != "/metrics" {
                assert_eq!(secured, role != Role::Public, "{method} {path}: security vs declared {role:?}");
            }
            ops.push((method.to_uppercase(), path.clone(), role, op.clone()));
        }
    }
    assert!(ops.len() >= 40, "{} operations", ops.len());
    // Operations that end the caller's own session go last, so fewer logins are needed.
    ops.sort_by_key(|(_, p, _, _)| p.contains("logout") || p.contains("password"));

    let callers = [Caller::Anonymous, Caller::Disabled, Caller::LoggedOut, Caller::Guest, Caller::User, Caller::Admin];
    let mut cells = 0;
    let mut served = 0;
    let mut failures = Vec::new();
    for (method, path, role, op) in &ops {
        let concrete = path.replace("{id}", &victim).replace("{session}", "00000000000000000000000000000000");
        let body = op["requestBody"]["content"]
            .as_object()
            .and_then(|c| c.values().next())
            .map(|media| example(&spec, &media["schema"], ""));
        for caller in callers {
            let mut req = lab.cli.request(Method::from_bytes(method.as_bytes()).unwrap(), &concrete);
            if let Some(access) = lab.access(caller) {
                req = req.header("authorization", format!("Bearer {access}"));
            }
            if path == "/api/auth/verify" {
                req = req.header("x-original-uri", "/api/me");
            }
            if let Some(b) = &body {
                req = req.body_json(b);
            }
            let (status, answer) = json_of(req.send().await).await;
            cells += 1;
            served += usize::from((200..300).contains(&status));
            let kind = answer["type"].as_str().unwrap_or("").to_string();
            let allowed = match caller.role() {
                None => *role == Role::Public,
                Some(r) => r >= *role,
            };
            let ok = if status >= 500 {
                false
            } else if *role == Role::Public {
                true
            } else if allowed {
                // Neither refusal may come from the auth layer. (A 401/403 about something
                // else, like a wrong current password, would carry another problem type.)
                !(status == 401 && kind.ends_with("/unauthorized") || status == 403 && kind.ends_with("/forbidden"))
            } else if caller.role().is_some() {
                status == 403
            } else {
                status == 401
            };
            if !ok {
                failures.push(format!("{method} {path} as {caller:?} (declared {role:?}): {status} {answer}"));
            }
            // The Miauflix client takes an error naming a credential field for a leak.
            let text = answer.to_string().to_lowercase();
            if status >= 400 && ["password", "token", "secret", "hash", "key"].iter().any(|w| text.contains(w)) {
                failures.push(format!("{method} {path} as {caller:?}: the error names a credential field: {answer}"));
            }
            lab.keep_alive(caller).await;
        }
    }
    println!(
        "role matrix: {} operations x {} callers = {cells} cells, {served} answered 2xx",
        ops.len(),
        callers.len()
    );
    // The bodies and ids are good enough that most allowed calls really run.
    assert!(served >= 60, "only {served} cells answered 2xx");
    assert!(failures.is_empty(), "{} cells disagree with the declared roles:\n{}", failures.len(), failures.join("\n"));
    lab.state.store.close().await;
}

#[test]
fn a_missing_or_doubled_declaration_is_no_declaration() {
    assert_eq!(declared_role(&json!({"summary": "x", "description": "Minimum role: user."})), Some(Role::User));
    assert_eq!(declared_role(&json!({"summary": "x"})), None);
    assert_eq!(declared_role(&json!({"description": "Minimum role: root."})), None);
    assert_eq!(declared_role(&json!({"description": "Minimum role: user. Minimum role: admin."})), None);
}
