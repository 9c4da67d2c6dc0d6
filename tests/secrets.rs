//! Named secrets over the API: write-only, admin-only, validated against header injection,
//! audited, sealed in the store and kept across a restart.

mod common;

use common::app::{App, Client};
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct horse battery staple";
const VALUE: &str = "Zq8-proxy-shared-value-0192";

async fn body(r: poem::test::TestResponse) -> Value {
    serde_json::from_str(&r.0.into_body().into_string().await.unwrap()).unwrap_or(Value::Null)
}

async fn token(cli: &Client, email: &str) -> String {
    let r = cli.post("/api/auth/token").body_json(&json!({"email": email, "password": PW})).send().await;
    assert_eq!(r.0.status(), 200);
    body(r).await["access_token"].as_str().unwrap().to_string()
}

async fn admin(app: &App) -> (Client, String) {
    let cli = app.client().default_header("origin", "http://gate.test");
    let setup = std::fs::read_to_string(app.state.config.setup_token_path()).unwrap();
    app.state.auth.complete_setup(ADMIN, PW.to_string().into(), setup.trim(), &Default::default()).await.unwrap();
    let t = token(&cli, ADMIN).await;
    (cli, t)
}

#[tokio::test]
async fn secrets_are_write_only_admin_only_and_audited() {
    let app = App::open(None, &[]).await;
    let (cli, t) = admin(&app).await;
    let bearer = format!("Bearer {t}");

    let r = cli
        .put("/api/secrets/miauflix_proxy_secret")
        .header("authorization", &bearer)
        .body_json(&json!({"value": VALUE}))
        .send()
        .await;
    assert_eq!(r.0.status(), 200);
    let set = body(r).await;
    assert_eq!(set["name"], "miauflix_proxy_secret");
    assert!(!set.to_string().contains(VALUE), "{set}");

    let r = cli.get("/api/secrets").header("authorization", &bearer).send().await;
    assert_eq!(r.0.status(), 200);
    let list = body(r).await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains(VALUE), "the listing never shows the value: {list}");
    assert_eq!(app.state.secrets.value("miauflix_proxy_secret").unwrap().as_slice(), VALUE.as_bytes());

    // Header injection, blanks, controls, oversize, and names outside the alphabet.
    for bad in ["", "a\r\nX-Injected: 1", "a\nb", "tab\there", " lead", "trail ", "nul\u{0}", "é"] {
        let r = cli
            .put("/api/secrets/other")
            .header("authorization", &bearer)
            .body_json(&json!({"value": bad}))
            .send()
            .await;
        assert_eq!(r.0.status(), 400, "{bad:?}");
        let b = body(r).await;
        let text = b.to_string().to_lowercase();
        for word in ["password", "token", "secret", "hash", "key"] {
            assert!(!text.contains(word), "{word} in {b}");
        }
    }
    let long = "a".repeat(4097);
    let r =
        cli.put("/api/secrets/other").header("authorization", &bearer).body_json(&json!({"value": long})).send().await;
    assert_eq!(r.0.status(), 400);
    for bad in ["Upper", "a%20b", "..", ".hidden", "-x", "a%0d%0ab", &"a".repeat(65)] {
        let r = cli
            .put(format!("/api/secrets/{bad}"))
            .header("authorization", &bearer)
            .body_json(&json!({"value": "v"}))
            .send()
            .await;
        assert!(matches!(r.0.status().as_u16(), 400 | 404), "{bad}: {}", r.0.status());
    }
    assert!(app.state.secrets.value("other").is_none());

    // Only admins: a user is refused, an anonymous caller too, and nothing changes.
    let r = cli
        .post("/api/users")
        .header("authorization", &bearer)
        .body_json(&json!({"email": "u@example.com", "password": PW, "role": "user"}))
        .send()
        .await;
    assert_eq!(r.0.status(), 201);
    let user = token(&cli, "u@example.com").await;
    for (auth, want) in [(Some(format!("Bearer {user}")), 403), (None, 401)] {
        let mut req = cli.put("/api/secrets/miauflix_proxy_secret").body_json(&json!({"value": "evil"}));
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.0.status(), want);
        let mut req = cli.get("/api/secrets");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.0.status(), want);
    }
    assert_eq!(app.state.secrets.value("miauflix_proxy_secret").unwrap().as_slice(), VALUE.as_bytes());

    // Audited by name, never by value.
    let r = cli.get("/api/audit").header("authorization", &bearer).send().await;
    assert_eq!(r.0.status(), 200);
    let text = body(r).await.to_string();
    assert!(text.contains("secret_set") && text.contains("miauflix_proxy_secret"), "{text}");
    assert!(!text.contains(VALUE));

    // Deleted: gone from memory and the listing; deleting again is a 404.
    let r = cli.delete("/api/secrets/miauflix_proxy_secret").header("authorization", &bearer).send().await;
    assert_eq!(r.0.status(), 200);
    assert!(app.state.secrets.value("miauflix_proxy_secret").is_none());
    let r = cli.delete("/api/secrets/miauflix_proxy_secret").header("authorization", &bearer).send().await;
    assert_eq!(r.0.status(), 404);
}

#[tokio::test]
async fn a_secret_survives_a_restart_and_is_sealed_in_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let state = common::app::open_in(dir.path(), None, &[]).await;
        state.secrets.set("upstream_a", VALUE.as_bytes(), "test", &Default::default()).await.unwrap();
        state.store.close().await;
    }
    let data = std::fs::read(dir.path().join("data").join("gate.redb")).unwrap();
    assert!(!data.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()), "the value is not in the data file in clear");
    let state = common::app::open_in(dir.path(), None, &[]).await;
    assert_eq!(state.secrets.value("upstream_a").unwrap().as_slice(), VALUE.as_bytes());
}

/// Concurrent changes reach the store and the running gate's memory in the same order: after
/// a burst of parallel sets, the value the proxy would send is the one a restart would load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sets_leave_memory_and_the_data_file_agreeing() {
    let app = App::open(None, &[]).await;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for i in 0..12 {
            let state = app.state.clone();
            tasks.push(tokio::spawn(async move {
                let v = format!("value-{round}-{i}");
                state.secrets.set("shared", v.as_bytes(), "test", &Default::default()).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let memory = app.state.secrets.value("shared").unwrap();
        let stored = miauflix_gate::secrets::get(&app.state.store, &app.state.keyring, "shared").unwrap().unwrap();
        assert_eq!(memory.as_slice(), stored.as_slice(), "round {round}");
    }
}
