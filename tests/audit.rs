//! The audit log, in process over real TCP (so client addresses are real): every event type
//! recorded by the action that causes it, queries, export, verification, tampering,
//! retention, escaping. Crash safety with the real binary is in `tests/audit_crash.rs`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{Reply, http_request};
use miauflix_gate::audit::{AuditFilter, AuditRecord};
use miauflix_gate::http::AppState;
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct-horse-battery";
const UA: &str = "audit-test/1.0";

struct Harness {
    state: Arc<AppState>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(vars: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::start_in(dir, vars).await
    }

    async fn start_in(dir: tempfile::TempDir, vars: &[(&str, &str)]) -> Harness {
        let mut env = vec![("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}")];
        env.extend(vars.iter().copied());
        let state = common::app::open_in(dir.path(), None, &env).await;
        let addr = common::app::serve(state.clone()).await;
        Harness { state, addr, _dir: dir }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>, headers: &[(&str, String)]) -> Reply {
        let body = body.map(|b| serde_json::to_vec(&b).unwrap());
        let mut h: Vec<(&str, String)> = Vec::new();
        if !headers.iter().any(|(k, _)| *k == "user-agent") {
            h.push(("user-agent", UA.into()));
        }
        h.extend(headers.iter().cloned());
        http_request(self.addr, method, path, body.as_deref(), &h).await.unwrap()
    }

    async fn bearer(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        self.call(method, path, body, &[("authorization", format!("Bearer {token}"))]).await
    }

    async fn setup(&self) {
        let token = std::fs::read_to_string(self.state.config.setup_token_path()).unwrap();
        let r = self
            .call(
                "POST",
                "/api/auth/setup",
                Some(json!({"email": ADMIN, "password": PW, "setupToken": token.trim()})),
                &[],
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }

    async fn token(&self, email: &str, pw: &str) -> (String, String) {
        let r = self.call("POST", "/api/auth/token", Some(json!({"email": email, "password": pw})), &[]).await;
        assert_eq!(r.status, 200, "token for {email}: {}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        (b["access_token"].as_str().unwrap().into(), b["refresh_token"].as_str().unwrap().into())
    }

    fn all(&self) -> Vec<AuditRecord> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.state.auth.audit().query(&AuditFilter::default(), 1000, cursor).unwrap();
            out.extend(page.records);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    }
}

#[tokio::test]
async fn every_event_type_is_recorded_with_ip_and_user_agent_by_its_action() {
    let h = Harness::start(&[
        ("MIAUFLIX_AUTH__REFRESH_REUSE_GRACE_SECS", "0"),
        ("MIAUFLIX_RATE_LIMITS__API", "{per_minute = 1, burst = 60}"),
    ])
    .await;
    h.setup().await; // setup_completed
    let (admin, _) = h.token(ADMIN, PW).await; // login_succeeded
    let r = h.call("POST", "/api/auth/token", Some(json!({"email": ADMIN, "password": "wrong-password!"})), &[]).await;
    assert_eq!(r.status, 401); // login_failed

    // user_created, then five failures lock the account (account_locked), an admin unlocks it.
    let r = h
        .bearer(
            "POST",
            "/api/users",
            &admin,
            Some(json!({"email": "victim@example.com", "password": "victim-password-1", "role": "user"})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let victim = r.json()["id"].as_str().unwrap().to_string();
    for _ in 0..5 {
        h.call(
            "POST",
            "/api/auth/token",
            Some(json!({"email": "victim@example.com", "password": "nope-nope-nope"})),
            &[],
        )
        .await;
    }
    let locked = h
        .call(
            "POST",
            "/api/auth/token",
            Some(json!({"email": "victim@example.com", "password": "victim-password-1"})),
            &[],
        )
        .await;
    assert_eq!(locked.status, 429);
    assert_eq!(h.bearer("POST", &format!("/api/users/{victim}/unlock"), &admin, None).await.status, 200);

    // role_changed, user_updated, user_disabled and back.
    let victim_path = format!("/api/users/{victim}");
    let patch = |body: Value| h.bearer("PATCH", &victim_path, &admin, Some(body));
    assert_eq!(patch(json!({"role": "guest"})).await.status, 200);
    assert_eq!(patch(json!({"displayName": "Victim"})).await.status, 200);
    assert_eq!(patch(json!({"disabled": true})).await.status, 200);
    assert_eq!(patch(json!({"disabled": false, "role": "user"})).await.status, 200);

    // token_refreshed, then the old token again: refresh_reuse_detected (no grace).
    let (user_access, refresh) = h.token("victim@example.com", "victim-password-1").await;
    let r = h.call("POST", "/api/auth/token/refresh", Some(json!({"refresh_token": refresh})), &[]).await;
    assert_eq!(r.status, 200);
    let r = h.call("POST", "/api/auth/token/refresh", Some(json!({"refresh_token": refresh})), &[]).await;
    assert_eq!(r.status, 401);

    // permission_denied: a user asks for the user list.
    let (user_access2, user_refresh2) = h.token("victim@example.com", "victim-password-1").await;
    assert_eq!(h.bearer("GET", "/api/users", &user_access2, None).await.status, 403);
    let _ = user_access;

    // password_changed, then logout (revoking a refresh token).
    let r = h
        .bearer(
            "POST",
            "/api/me/password",
            &user_access2,
            Some(json!({"currentPassword": "victim-password-1", "newPassword": "victim-password-2"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (_, refresh3) = h.token("victim@example.com", "victim-password-2").await;
    let r = h.call("POST", "/api/auth/token/revoke", Some(json!({"refresh_token": refresh3})), &[]).await;
    assert_eq!(r.status, 200);
    let _ = user_refresh2;

    // session_revoked: the admin signs out one of their own other sessions.
    let (_, _) = h.token(ADMIN, PW).await;
    let sessions = h.bearer("GET", "/api/me/sessions", &admin, None).await.json();
    let other = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["current"] != true)
        .and_then(|s| s["id"].as_str())
        .unwrap()
        .to_string();
    assert_eq!(h.bearer("DELETE", &format!("/api/me/sessions/{other}"), &admin, None).await.status, 200);

    // csrf_rejected: a browser session used from a foreign origin.
    let login = h.call("POST", "/api/auth/login", Some(json!({"email": ADMIN, "password": PW})), &[]).await;
    assert_eq!(login.status, 200);
    let sid = login.json()["session"].as_str().unwrap().to_string();
    let cookies: Vec<String> = login
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
        .collect();
    let r = h
        .call(
            "POST",
            &format!("/api/auth/logout/{sid}"),
            None,
            &[("cookie", cookies.join("; ")), ("origin", "https://evil.example".into())],
        )
        .await;
    assert_eq!(r.status, 403);

    // user_deleted.
    assert_eq!(h.bearer("DELETE", &format!("/api/users/{victim}"), &admin, None).await.status, 200);

    // rate_limited: anonymous API calls from this address run out.
    let mut limited = false;
    for _ in 0..80 {
        if h.call("GET", "/api/auth/setup", None, &[]).await.status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited);

    let records = h.all();
    let expected = [
        "setup_completed",
        "login_succeeded",
        "login_failed",
        "user_created",
        "account_locked",
        "account_unlocked",
        "role_changed",
        "user_updated",
        "user_disabled",
        "token_refreshed",
        "refresh_reuse_detected",
        "permission_denied",
        "password_changed",
        "logout",
        "session_revoked",
        "csrf_rejected",
        "user_deleted",
        "rate_limited",
    ];
    for kind in expected {
        let r = records.iter().find(|r| r.kind == kind).unwrap_or_else(|| panic!("no {kind} record"));
        assert_eq!(r.ip, "127.0.0.1", "{kind}");
        assert_eq!(r.user_agent, UA, "{kind}");
        assert!(!r.request_id.is_empty(), "{kind}");
    }
    // A failed sign-in names the submitted email, and the account it belongs to.
    let failed = records.iter().find(|r| r.kind == "login_failed" && r.target.as_deref() == Some(ADMIN)).unwrap();
    assert!(failed.detail.contains_key("user"));
    assert_eq!(failed.actor, None);
    // Nothing secret is ever stored.
    let everything = serde_json::to_string(&records).unwrap();
    for secret in [PW, "victim-password-1", "victim-password-2", &admin, &refresh, &refresh3] {
        assert!(!everything.contains(secret), "a secret reached the audit log");
    }
    let report = h.state.auth.audit().verify().unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.checked as usize, records.len());
    h.state.store.close().await;
}

/// Appends `n` synthetic records directly (for query, retention and tamper tests).
async fn seed(state: &AppState, n: usize, ts_ms: i64) {
    for i in 0..n {
        let rec = AuditRecord {
            seq: 0,
            ts_ms: ts_ms + i as i64,
            kind: if i % 2 == 0 { "login_failed".into() } else { "login_succeeded".into() },
            severity: if i % 2 == 0 { "warning".into() } else { "info".into() },
            actor: None,
            target: Some(format!("user{}@example.com", i % 3)),
            ip: format!("10.0.0.{}", i % 4),
            user_agent: UA.into(),
            request_id: format!("req-{i}"),
            detail: Default::default(),
        };
        state.store.write(move |txn| miauflix_gate::audit::append(txn, rec.clone())).await.unwrap();
    }
}

#[tokio::test]
async fn queries_filter_and_paginate_newest_first_and_export_is_json_lines() {
    let h = Harness::start(&[]).await;
    // Seeded first: timestamps never decrease along the chain.
    let base = 1_780_000_000_000; // 2026-05-28
    seed(&h.state, 60, base).await;
    h.setup().await;
    let (admin, _) = h.token(ADMIN, PW).await;

    // type + severity + user + ip, paginated by 7.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/audit?type=login_failed&severity=warning&user=user0@example.com&limit=7".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = h.bearer("GET", &path, &admin, None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        for e in b["events"].as_array().unwrap() {
            assert_eq!(e["type"], "login_failed");
            assert_eq!(e["target"], "user0@example.com");
            seen.push(e["seq"].as_u64().unwrap());
        }
        match b["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    // i ≡ 0 (mod 2) and i ≡ 0 (mod 3): i = 0, 6, …, 54 → 10 records, newest first, no repeats.
    assert_eq!(seen.len(), 10);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));

    let r = h.bearer("GET", "/api/audit?ip=10.0.0.1&limit=1000", &admin, None).await.json();
    assert_eq!(r["events"].as_array().unwrap().len(), 15);
    // since/until select by time.
    let since = miauflix_gate::http::api::audit::rfc3339_ms(base + 10);
    let until = miauflix_gate::http::api::audit::rfc3339_ms(base + 19);
    let r = h.bearer("GET", &format!("/api/audit?since={since}&until={until}&limit=1000"), &admin, None).await.json();
    let times: Vec<u64> = r["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(times.len(), 10, "{r}");
    // Bad filters are refused with a problem.
    let r = h.bearer("GET", "/api/audit?type=nonsense", &admin, None).await;
    assert_eq!(r.status, 400);
    let r = h.bearer("GET", "/api/audit?since=yesterday", &admin, None).await;
    assert_eq!(r.status, 400);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/problem+json"));

    // Export: valid JSON Lines, oldest first, every record.
    let r = h.bearer("GET", "/api/audit/export", &admin, None).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("application/jsonl"));
    let text = String::from_utf8(r.body).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let total = h.state.auth.audit().info().unwrap().length as usize;
    assert_eq!(lines.len(), total);
    assert!(lines.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
    assert!(lines.iter().all(|l| l["time"].is_string() && l["type"].is_string()));

    // Users see only their own history; non-admins cannot read the log.
    let mine = h.bearer("GET", "/api/me/events", &admin, None).await.json();
    let events = mine["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "login_succeeded"));
    assert!(events.iter().all(|e| !e["target"].as_str().unwrap_or("").starts_with("user")));
    let r = h.call("GET", "/api/audit", None, &[]).await;
    assert_eq!(r.status, 401);
    h.state.store.close().await;
}

#[tokio::test]
async fn verify_finds_a_flipped_byte_at_the_right_record() {
    let h = Harness::start(&[]).await;
    seed(&h.state, 20, 1_780_000_000_000).await;
    let audit = h.state.auth.audit();
    let report = audit.verify().unwrap();
    assert!(report.ok && report.checked == 20, "{report:?}");

    // Flip one byte inside record 13's JSON, as someone editing the file would.
    h.state
        .store
        .write(|txn| {
            use redb::ReadableTable;
            let mut t = txn.open_table(miauflix_gate::store::tables::AUDIT)?;
            let mut v = t.get(13)?.unwrap().value().to_vec();
            let at = v.len() - 10;
            v[at] ^= 0x01;
            t.insert(13, v.as_slice())?;
            Ok(())
        })
        .await
        .unwrap();
    let report = audit.verify().unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad, Some(13));
    assert_eq!(report.checked, 12, "records before the bad one still verify");
    h.state.store.close().await;
}

#[tokio::test]
async fn retention_prunes_by_count_and_age_and_the_rest_still_verifies() {
    let h = Harness::start(&[]).await;
    let audit = h.state.auth.audit();
    let day = 86_400_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    seed(&h.state, 30, now - 100 * day).await; // older than 90 days
    seed(&h.state, 40, now - day).await;
    assert_eq!(audit.info().unwrap().length, 70);
    // By age: the 30 old ones go.
    assert_eq!(audit.prune(90, 0).await.unwrap(), 30);
    let info = audit.info().unwrap();
    assert_eq!((info.first, info.last, info.length), (31, 70, 40));
    assert!(audit.verify().unwrap().ok);
    // By count: only the newest 25 stay.
    assert_eq!(audit.prune(0, 25).await.unwrap(), 15);
    let report = audit.verify().unwrap();
    assert!(report.ok && report.first == 46 && report.checked == 25, "{report:?}");
    // The index went with the records, and appending continues the chain.
    let page =
        audit.query(&AuditFilter { user: Some("user0@example.com".into()), ..Default::default() }, 1000, None).unwrap();
    assert!(page.records.iter().all(|r| r.seq >= 46));
    seed(&h.state, 5, now).await;
    let report = audit.verify().unwrap();
    assert!(report.ok && report.last == 75, "{report:?}");
    h.state.store.close().await;
}

#[tokio::test]
async fn crafted_user_agents_are_stored_escaped() {
    let h = Harness::start(&[]).await;
    h.setup().await;
    // Over HTTP: obs-text carrying C1 controls (NEL, CSI) and a tab.
    let evil = "evil\u{85}INFO forged line\u{9b}31m\there";
    let r = h
        .call(
            "POST",
            "/api/auth/token",
            Some(json!({"email": ADMIN, "password": "wrong-password!"})),
            &[("user-agent", evil.into())],
        )
        .await;
    assert_eq!(r.status, 401);
    // Directly: newlines and ANSI escapes that HTTP itself would refuse.
    let client = miauflix_gate::audit::ClientInfo {
        ip: "127.0.0.1".into(),
        user_agent: "bot\r\n2026-11-29 INFO admin logged in\u{1b}[2J".into(),
        request_id: "r1".into(),
    };
    miauflix_gate::audit::SecurityEvent::new(
        miauflix_gate::audit::EventKind::LoginFailed,
        miauflix_gate::audit::Severity::Warning,
        &client,
    )
    .target("x@example.com\nforged")
    .record(h.state.auth.audit())
    .await;
    let records = h.all();
    let uas: Vec<&str> = records.iter().filter(|r| r.kind == "login_failed").map(|r| r.user_agent.as_str()).collect();
    assert!(uas.contains(&"evil\\u{85}INFO forged line\\u{9b}31m\\there"), "{uas:?}");
    assert!(uas.contains(&"bot\\r\\n2026-11-29 INFO admin logged in\\u{1b}[2J"), "{uas:?}");
    assert!(records.iter().all(|r| !r.user_agent.chars().any(char::is_control)));
    assert!(records.iter().any(|r| r.target.as_deref() == Some("x@example.com\\nforged")));
    h.state.store.close().await;
}

#[tokio::test]
async fn metrics_need_an_admin_or_the_scraper_token_and_status_summarises() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tf = token_file.to_str().unwrap().to_string();
    let h = Harness::start_in(dir, &[("MIAUFLIX_METRICS__TOKEN_FILE", &tf)]).await;
    h.setup().await;
    let (admin, _) = h.token(ADMIN, PW).await;
    h.call("POST", "/api/auth/token", Some(json!({"email": ADMIN, "password": "wrong-password!"})), &[]).await;

    assert_eq!(h.call("GET", "/metrics", None, &[]).await.status, 401);
    let wrong = h.call("GET", "/metrics", None, &[("authorization", "Bearer not-the-token".into())]).await;
    assert_eq!(wrong.status, 401);
    let scraper =
        h.call("GET", "/metrics", None, &[("authorization", "Bearer 0123456789abcdef0123456789abcdef".into())]).await;
    assert_eq!(scraper.status, 200);
    assert!(scraper.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(scraper.body).unwrap();
    for name in [
        "http_requests_total{",
        "http_request_duration_seconds_bucket{",
        "auth_logins_total{result=\"success\"}",
        "auth_logins_total{result=\"failure\"}",
        "auth_active_sessions",
        "audit_events_total{type=\"login_failed\"}",
        "audit_chain_length",
        "process_resident_memory_bytes",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    let by_admin = h.bearer("GET", "/metrics", &admin, None).await;
    assert_eq!(by_admin.status, 200);

    let s = h.bearer("GET", "/api/system/status", &admin, None).await;
    assert_eq!(s.status, 200);
    let s = s.json();
    assert!(s["loginsSucceeded1h"].as_u64().unwrap() >= 1);
    assert!(s["loginsFailed1h"].as_u64().unwrap() >= 1);
    assert!(s["requests5m"].as_u64().unwrap() >= 4);
    assert!(s["storeBytes"].as_u64().unwrap() > 0);
    assert!(s["auditChain"]["length"].as_u64().unwrap() >= 3);
    let r = h.call("GET", "/readyz", None, &[]).await.json();
    assert_eq!(r["status"], "ready");
    assert_eq!(r["store_writable"], true);
    h.state.store.close().await;
}
