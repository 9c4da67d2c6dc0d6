//! Attacks on the auth surface against the real binary over TLS: parallel guesses against the
//! lockout (login, token and password change share one reserved budget), floods of free
//! refusals that must not flood the audit log, logout of a session the caller does not hold,
//! and CSRF with lowercase and extension methods.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Gate, Reply, client_config, https_request_from};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const ADMIN: &str = "root@example.com";
const PW: &str = "a-very-long-passphrase";
const WRONG: &str = "wrong-wrong-wrong";

struct Lab {
    _dir: tempfile::TempDir,
    gate: Gate,
    pem: std::path::PathBuf,
}

impl Lab {
    /// The binary with `toml` as its config and the first admin made.
    async fn start(toml: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = dir.path().join("gate.toml");
        std::fs::write(&cfg, toml).unwrap();
        let gate = Gate::start(&data, &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
        let lab = Lab { pem: data.join("self-signed.pem"), _dir: dir, gate };
        let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
        let r = lab
            .call(
                Some("127.0.0.2"),
                "POST",
                "/api/auth/setup",
                Some(json!({"email": ADMIN, "password": PW, "setupToken": token.trim()})),
                &[],
            )
            .await;
        assert_eq!(r.status, 201);
        lab
    }

    fn config(&self) -> rustls::ClientConfig {
        client_config(&self.pem, &[&rustls::version::TLS13])
    }

    async fn call(
        &self,
        from: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, String)],
    ) -> Reply {
        https_request_from(
            from.map(|f| f.parse().unwrap()),
            self.gate.addr,
            "localhost",
            self.config(),
            method,
            path,
            body.map(|b| b.to_string().into_bytes()).as_deref(),
            headers,
        )
        .await
        .unwrap()
    }

    /// A bearer access token and the session id.
    async fn token(&self, from: &str, email: &str, pw: &str) -> (String, String) {
        let r =
            self.call(Some(from), "POST", "/api/auth/token", Some(json!({"email": email, "password": pw})), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let access = r.json()["access_token"].as_str().unwrap().to_string();
        let sid = claims(&access)["sid"].as_str().unwrap().to_string();
        (access, sid)
    }

    /// A browser login: the session id and its `name=value` cookies.
    async fn browser(&self, from: &str, email: &str, pw: &str) -> (String, Vec<String>) {
        let r =
            self.call(Some(from), "POST", "/api/auth/login", Some(json!({"email": email, "password": pw})), &[]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let sid = r.json()["session"].as_str().unwrap().to_string();
        let cookies = r
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        (sid, cookies)
    }

    /// Every audit record's (seq, type), read by the admin from 127.0.0.2.
    async fn audit(&self, admin: &str) -> Vec<(u64, String)> {
        let r = self.call(Some("127.0.0.2"), "GET", "/api/audit?limit=1000", None, &bearer(admin)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["seq"].as_u64().unwrap(), e["type"].as_str().unwrap_or_default().to_string()))
            .collect()
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// One keep-alive HTTP/1.1 connection over TLS from `local`, for floods.
async fn connection(lab: &Lab, local: IpAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(local, 0)).unwrap();
    let tcp = sock.connect(lab.gate.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(lab.config()));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `n` copies of a request on one connection; returns the statuses seen.
async fn flood(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    n: usize,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::collections::BTreeMap<u16, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        sender.ready().await.unwrap();
        let mut b = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = sender.send_request(b.body(Full::new(Bytes::from(body.to_string()))).unwrap()).await.unwrap();
        *seen.entry(resp.status().as_u16()).or_default() += 1;
        let _ = resp.into_body().collect().await;
    }
    seen
}

/// Sends every (path, password) at once, each from its own client address (`X-Forwarded-For`
/// through the trusted 127.0.0.1); returns the answers in order.
async fn in_parallel(lab: &Arc<Lab>, attempts: Vec<(&'static str, &'static str)>) -> Vec<Reply> {
    let start = Arc::new(tokio::sync::Barrier::new(attempts.len()));
    let mut tasks = Vec::new();
    for (i, (path, pw)) in attempts.into_iter().enumerate() {
        let (lab, start) = (lab.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let xff = [("x-forwarded-for", format!("198.51.100.{}", i + 1))];
            start.wait().await;
            lab.call(None, "POST", path, Some(json!({"email": ADMIN, "password": pw})), &xff).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status).collect()
}

/// Every 429 is the lockout answer, in the contract's words.
fn assert_locked_answers(replies: &[Reply]) {
    for r in replies.iter().filter(|r| r.status == 429) {
        let b = r.json();
        assert_eq!(b["type"], "urn:miauflix-gate:problem/account-locked", "{b}");
        assert!(b["message"].as_str().unwrap().starts_with("Too many requests"), "{b}");
        assert!(r.headers.contains_key("retry-after"));
    }
}

const SPREAD: &str = "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n";

#[tokio::test(flavor = "multi_thread")]
async fn parallel_guesses_never_get_past_the_lockout_budget_on_login_and_token() {
    let lab = Arc::new(Lab::start(SPREAD).await);
    // 39 wrong and the right one at once from 40 addresses, over both login doors.
    let mut attempts: Vec<(&str, &str)> =
        (0..39).map(|i| (if i % 2 == 0 { "/api/auth/login" } else { "/api/auth/token" }, WRONG)).collect();
    attempts.insert(20, ("/api/auth/login", PW));
    let replies = in_parallel(&lab, attempts).await;
    let s = statuses(&replies);
    let hashed = s.iter().filter(|s| matches!(s, 200 | 401)).count();
    println!("39 wrong + 1 right in parallel: {hashed} reached the password check, answers {s:?}");
    assert!(hashed <= 5, "at most max_failures attempts may reach the password check: {s:?}");
    assert_eq!(s.iter().filter(|s| **s == 429).count(), 40 - hashed, "{s:?}");
    assert_locked_answers(&replies);
    // Either the right one got in before the budget was spent (then fewer than five failures
    // counted), or five failures locked the account and the right password is refused now.
    if s[20] == 200 {
        assert!(s.iter().filter(|s| **s == 401).count() <= 4, "{s:?}");
    } else {
        assert_eq!(s.iter().filter(|s| **s == 401).count(), 5, "{s:?}");
        let r = lab
            .call(Some("127.0.0.3"), "POST", "/api/auth/token", Some(json!({"email": ADMIN, "password": PW})), &[])
            .await;
        assert_eq!(r.status, 429, "the lock holds");
    }

    // 9 wrong and 1 right at once on a fresh account: the same bound, and a lock set by the
    // failures is not lifted by a success.
    let lab = Arc::new(Lab::start(SPREAD).await);
    let mut attempts: Vec<(&str, &str)> = (0..9).map(|_| ("/api/auth/token", WRONG)).collect();
    attempts.push(("/api/auth/token", PW));
    let replies = in_parallel(&lab, attempts).await;
    let s = statuses(&replies);
    assert!(s.iter().filter(|s| matches!(s, 200 | 401)).count() <= 5, "{s:?}");
    assert_locked_answers(&replies);
    if s.iter().filter(|s| **s == 401).count() == 5 {
        let r = lab
            .call(Some("127.0.0.3"), "POST", "/api/auth/login", Some(json!({"email": ADMIN, "password": PW})), &[])
            .await;
        assert_eq!(r.status, 429, "{s:?}: the lock holds after the burst");
    }

    // Unknown emails: the same budget, the same answer.
    let replies = {
        let start = Arc::new(tokio::sync::Barrier::new(12));
        let mut tasks = Vec::new();
        for i in 0..12 {
            let (lab, start) = (lab.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                let xff = [("x-forwarded-for", format!("203.0.113.{}", i + 1))];
                start.wait().await;
                let body = json!({"email": "ghost@example.com", "password": WRONG});
                lab.call(None, "POST", "/api/auth/token", Some(body), &xff).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    };
    let s = statuses(&replies);
    assert!(s.iter().filter(|s| **s == 401).count() <= 5, "{s:?}");
    assert!(s.iter().filter(|s| **s == 429).count() >= 7, "{s:?}");
    assert_locked_answers(&replies);
}

#[tokio::test(flavor = "multi_thread")]
async fn password_change_guesses_spend_the_lockout_budget_and_the_auth_rate() {
    // Per-IP auth limit raised: the lockout alone must stop 30 parallel guesses on one token.
    let lab = Arc::new(Lab::start("[rate_limits.auth]\nper_minute = 100000\nburst = 10000\n").await);
    let (access, _) = lab.token("127.0.0.2", ADMIN, PW).await;
    let start = Arc::new(tokio::sync::Barrier::new(30));
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (lab, start, access) = (lab.clone(), start.clone(), access.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let body =
                json!({"currentPassword": format!("guess-number-{i}"), "newPassword": "another-long-passphrase"});
            lab.call(Some("127.0.0.4"), "POST", "/api/me/password", Some(body), &bearer(&access)).await
        }));
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    let s = statuses(&replies);
    assert!(s.iter().filter(|s| **s == 401).count() <= 5, "{s:?}");
    assert!(s.iter().filter(|s| **s == 429).count() >= 25, "{s:?}");
    assert_locked_answers(&replies);
    // The guesses locked the account for sign-in too, and the right current password as well.
    let r = lab
        .call(Some("127.0.0.5"), "POST", "/api/auth/token", Some(json!({"email": ADMIN, "password": PW})), &[])
        .await;
    assert_eq!(r.status, 429);
    let body = json!({"currentPassword": PW, "newPassword": "another-long-passphrase"});
    let r = lab.call(Some("127.0.0.4"), "POST", "/api/me/password", Some(body), &bearer(&access)).await;
    assert_eq!(r.status, 429);

    // With the default per-IP auth limit (burst 5), the sixth call from one address is refused
    // by the rate limit before the lockout is reached.
    let lab = Lab::start("[lockout]\nmax_failures = 50\n").await;
    let (access, _) = lab.token("127.0.0.2", ADMIN, PW).await;
    let mut seen = Vec::new();
    for i in 0..6 {
        let body = json!({"currentPassword": format!("guess-number-{i}"), "newPassword": "another-long-passphrase"});
        let r = lab.call(Some("127.0.0.4"), "POST", "/api/me/password", Some(body), &bearer(&access)).await;
        seen.push((r.status, r.json()["type"].as_str().unwrap_or_default().to_string()));
    }
    assert_eq!(seen[..5].iter().map(|s| s.0).collect::<Vec<_>>(), [401; 5], "{seen:?}");
    assert_eq!(seen[5], (429, "urn:miauflix-gate:problem/rate-limited".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_ends_only_a_session_the_request_holds() {
    let lab = Lab::start("").await;
    let (admin, _) = lab.token("127.0.0.2", ADMIN, PW).await;
    let r = lab
        .call(
            Some("127.0.0.2"),
            "POST",
            "/api/users",
            Some(json!({"email": "other@example.com", "password": "other-long-passphrase", "role": "user"})),
            &bearer(&admin),
        )
        .await;
    assert_eq!(r.status, 201);
    let (victim, victim_cookies) = lab.browser("127.0.0.3", ADMIN, PW).await;
    let victim_cookie = victim_cookies.join("; ");
    let (other_sid, other_cookies) = lab.browser("127.0.0.4", "other@example.com", "other-long-passphrase").await;
    let (other_bearer, _) = lab.token("127.0.0.4", "other@example.com", "other-long-passphrase").await;
    let other_access =
        other_cookies.iter().find(|c| c.starts_with("__miauflix_at_")).unwrap().split('=').nth(1).unwrap();
    let alive = |sid: String, cookie: String| {
        let lab = &lab;
        async move {
            let h = [("x-session-id", sid), ("cookie", cookie)];
            lab.call(Some("127.0.0.3"), "GET", "/api/auth/session", None, &h).await.status
        }
    };
    assert_eq!(alive(victim.clone(), victim_cookie.clone()).await, 200);

    let origin = ("origin", "https://localhost".to_string());
    let path = format!("/api/auth/logout/{victim}");
    let attempts: Vec<Vec<(&str, String)>> = vec![
        // Anonymous, knowing only the id.
        vec![],
        vec![origin.clone()],
        // Another user's own cookies and bearer token.
        vec![("cookie", other_cookies.join("; ")), origin.clone()],
        bearer(&other_bearer),
        // Someone else's tokens under the victim's cookie names.
        vec![("cookie", format!("__miauflix_at_{victim}={other_access}")), origin.clone()],
        vec![("cookie", format!("__miauflix_rt_{victim}=forged-forged-forged")), origin.clone()],
        vec![("cookie", format!("__miauflix_RT_{victim}=x; __miauflix_at_{other_sid}={other_access}")), origin.clone()],
        // A bearer token for another session with the victim's id as the header.
        vec![("authorization", format!("Bearer {other_bearer}")), ("x-session-id", victim.clone())],
    ];
    for headers in &attempts {
        let r = lab.call(Some("127.0.0.5"), "POST", &path, None, headers).await;
        assert_eq!(r.status, 200, "logout answers 200 whatever: {headers:?}");
        assert_eq!(r.json()["message"], "Logged out");
        let cleared: Vec<&str> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).collect();
        assert!(cleared.iter().any(|c| c.starts_with(&format!("__miauflix_rt_{victim}=;")) && c.contains("Max-Age=0")));
        assert_eq!(alive(victim.clone(), victim_cookie.clone()).await, 200, "{headers:?} ended someone else's session");
    }
    // The other user's own session is still alive too (their cookie rode along).
    assert_eq!(alive(other_sid.clone(), other_cookies.join("; ")).await, 200);

    // Holding the session ends it: its refresh cookie alone, its access cookie alone, or a
    // bearer token of that session.
    let rt = victim_cookies.iter().find(|c| c.starts_with("__miauflix_rt_")).unwrap().clone();
    let r = lab.call(Some("127.0.0.3"), "POST", &path, None, &[("cookie", rt), origin.clone()]).await;
    assert_eq!(r.status, 200);
    assert_eq!(alive(victim.clone(), victim_cookie.clone()).await, 401);

    let (s2, c2) = lab.browser("127.0.0.3", ADMIN, PW).await;
    let at = c2.iter().find(|c| c.starts_with("__miauflix_at_")).unwrap().clone();
    let r = lab
        .call(Some("127.0.0.3"), "POST", &format!("/api/auth/logout/{s2}"), None, &[("cookie", at), origin.clone()])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(alive(s2, c2.join("; ")).await, 401);

    let (b3, s3) = lab.token("127.0.0.3", ADMIN, PW).await;
    let r = lab.call(Some("127.0.0.3"), "POST", &format!("/api/auth/logout/{s3}"), None, &bearer(&b3)).await;
    assert_eq!(r.status, 200);
    assert_eq!(lab.call(Some("127.0.0.3"), "GET", "/api/me", None, &bearer(&b3)).await.status, 401);
    assert!(lab.gate.terminate().success());
}

/// A loopback upstream answering 200 to everything; counts the requests it got.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("ok")))) }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread")]
async fn csrf_covers_every_method_but_get_head_options_in_any_case() {
    let (up, hits) = counting_upstream().await;
    let lab =
        Lab::start(&format!("[[routes]]\nprefix = \"/app\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\n"))
            .await;
    let cookie = ("cookie", "__miauflix_at_AAAAAAAAAAAAAAAAAAAAAA=x".to_string());
    for method in [
        "post",
        "Post",
        "pOST",
        "put",
        "delete",
        "patch",
        "PROPFIND",
        "PROPPATCH",
        "MKCOL",
        "PURGE",
        "LOCK",
        "COPY",
        "MOVE",
        "get",
        "head",
        "options",
        "TRACE",
        "CONNECTX",
    ] {
        let r = lab.call(Some("127.0.0.3"), method, "/app/thing", None, std::slice::from_ref(&cookie)).await;
        assert_eq!(r.status, 403, "{method} with a session cookie and no origin reached the upstream");
        assert_eq!(r.json()["type"], "urn:miauflix-gate:problem/csrf-rejected", "{method}");
        let r = lab
            .call(
                Some("127.0.0.3"),
                method,
                "/app/thing",
                None,
                &[cookie.clone(), ("origin", "https://evil.example".into())],
            )
            .await;
        assert_eq!(r.status, 403, "{method} from a foreign origin");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no refused request reached the upstream");
    // The gate's own API too (before its 404/405).
    for method in ["post", "PROPFIND", "PURGE"] {
        let r = lab
            .call(
                Some("127.0.0.3"),
                method,
                "/api/auth/logout/AAAAAAAAAAAAAAAAAAAAAA",
                None,
                std::slice::from_ref(&cookie),
            )
            .await;
        assert_eq!(r.status, 403, "{method}");
    }
    // Safe methods and same-origin unsafe ones still pass.
    for method in ["GET", "HEAD", "OPTIONS"] {
        let r = lab.call(Some("127.0.0.3"), method, "/app/thing", None, std::slice::from_ref(&cookie)).await;
        assert_eq!(r.status, 200, "{method}");
    }
    let r = lab
        .call(
            Some("127.0.0.3"),
            "PROPFIND",
            "/app/thing",
            None,
            &[cookie.clone(), ("origin", "https://localhost".into())],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn floods_of_free_refusals_add_a_handful_of_audit_records() {
    let (up, _hits) = counting_upstream().await;
    let lab = Lab::start(&format!(
        "[http]\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n[audit]\nmax_events = 200\nprune_interval_secs = 1\n\n\
         [rate_limits.auth]\nper_minute = 100000\nburst = 10000\n\n\
         [[routes]]\nprefix = \"/app\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\n"
    ))
    .await;
    let (admin, _) = lab.token("127.0.0.2", ADMIN, PW).await;
    let before = lab.audit(&admin).await;
    assert!(!before.is_empty());

    // 2,000 CSRF refusals from one address on the gate's API, then 2,000 on a proxied route.
    let mut conn = connection(&lab, "127.0.0.6".parse().unwrap()).await;
    let csrf = [("cookie", "__miauflix_rt_AAAAAAAAAAAAAAAAAAAAAA=x"), ("origin", "https://evil.example")];
    let seen = flood(&mut conn, 2000, "POST", "/api/auth/logout/AAAAAAAAAAAAAAAAAAAAAA", &csrf, "").await;
    assert!(seen.keys().all(|s| matches!(s, 403 | 429)), "{seen:?}");
    let mut conn = connection(&lab, "127.0.0.7".parse().unwrap()).await;
    let seen = flood(&mut conn, 2000, "POST", "/app/x", &csrf, "").await;
    assert!(seen.keys().all(|s| matches!(s, 403 | 429)), "{seen:?}");
    let mid = lab.audit(&admin).await;
    let added = mid.len() - before.len();
    println!("4,000 CSRF refusals ({seen:?} on the proxied route) added {added} records: {:?}", &mid[..added]);
    assert!(added <= 6, "4,000 refusals from two addresses added {added} audit records: {:?}", &mid[..added.min(20)]);

    // A locked account: five failures lock it, then 300 more attempts from one address.
    let mut conn = connection(&lab, "127.0.0.8".parse().unwrap()).await;
    let wrong = json!({"email": "ghost@example.com", "password": WRONG}).to_string();
    let json_ct = [("content-type", "application/json")];
    let seen = flood(&mut conn, 305, "POST", "/api/auth/token", &json_ct, &wrong).await;
    assert_eq!(seen.get(&401), Some(&5), "{seen:?}");
    assert_eq!(seen.get(&429), Some(&300), "{seen:?}");
    let after = lab.audit(&admin).await;
    let added = after.len() - mid.len();
    println!("305 attempts on one email ({seen:?}) added {added} records: {:?}", &after[..added]);
    // Five login_failed, one account_locked, then the refusals of the lock as one record.
    assert!(added <= 8, "a flood on a locked account added {added} audit records: {:?}", &after[..added.min(20)]);

    // The same locked email from 40 more addresses, over both doors: counted, not recorded.
    for i in 0..40 {
        let path = if i % 2 == 0 { "/api/auth/login" } else { "/api/auth/token" };
        let xff = [("x-forwarded-for", format!("192.0.2.{}", i + 1))];
        let body = json!({"email": "Ghost@Example.com ", "password": WRONG});
        assert_eq!(lab.call(None, "POST", path, Some(body), &xff).await.status, 429);
    }
    let after = lab.audit(&admin).await;
    let added = after.len() - mid.len();
    assert!(added <= 8, "attempts on a locked account from many addresses added records: {:?}", &after[..added]);

    // Nothing earlier was pruned to make room.
    let seqs: std::collections::HashSet<u64> = after.iter().map(|(s, _)| *s).collect();
    for (seq, kind) in &before {
        assert!(seqs.contains(seq), "record {seq} ({kind}) is gone");
    }
}

/// Clients that hang up while their password is being hashed: each hash still runs to its
/// end, so each must still spend its place in the lockout budget (else cancelling buys
/// unlimited password checks, and argon2 work beyond the hashing pool's bound).
#[tokio::test(flavor = "multi_thread")]
async fn guesses_whose_clients_hang_up_mid_hash_still_spend_the_budget() {
    let lab = Arc::new(Lab::start(SPREAD).await);
    let mut tasks = Vec::new();
    for i in 0..30u8 {
        let lab = lab.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = connection(&lab, "127.0.0.1".parse().unwrap()).await;
            let body = json!({"email": ADMIN, "password": WRONG}).to_string();
            let req = hyper::Request::post("/api/auth/login")
                .header("host", "localhost")
                .header("content-type", "application/json")
                .header("x-forwarded-for", format!("198.51.100.{}", i + 1))
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            // Written, then abandoned before the answer: the connection closes with it. (20 ms:
            // with 5 ms a loaded machine sometimes gave up before the request was even read, so
            // no check started and there was nothing to spend; 30 hashes queue far longer.)
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), sender.send_request(req)).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The right password never gets in: while the abandoned checks run their places are
    // taken (429, Retry-After 1); once they end they count as failures and lock the email.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = lab
            .call(Some("127.0.0.3"), "POST", "/api/auth/login", Some(json!({"email": ADMIN, "password": PW})), &[])
            .await;
        assert_eq!(r.status, 429, "hung-up guesses freed the budget: {}", String::from_utf8_lossy(&r.body));
        assert_locked_answers(std::slice::from_ref(&r));
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        if retry > 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the abandoned checks never resolved into a lock");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A signed-in guest asking for admin-only answers again and again (the gate's API, forward
/// auth, an admin-only route) costs one `permission_denied` record per window, not one each.
#[tokio::test(flavor = "multi_thread")]
async fn a_guest_hammering_admin_paths_adds_a_handful_of_audit_records() {
    let (up, hits) = counting_upstream().await;
    let lab = Lab::start(&format!(
        "[rate_limits.api]\nper_minute = 100000\nburst = 10000\n\n\
         [rate_limits.global]\nper_minute = 100000\nburst = 10000\n\n\
         [[routes]]\nprefix = \"/vault\"\nupstream = \"http://{up}\"\nmin_role = \"admin\"\n"
    ))
    .await;
    let (admin, _) = lab.token("127.0.0.2", ADMIN, PW).await;
    let r = lab
        .call(
            Some("127.0.0.2"),
            "POST",
            "/api/users",
            Some(json!({"email": "guest@example.com", "password": "guest-password-1", "role": "guest"})),
            &bearer(&admin),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let (guest, _) = lab.token("127.0.0.9", "guest@example.com", "guest-password-1").await;
    let before = lab.audit(&admin).await;

    let mut conn = connection(&lab, "127.0.0.9".parse().unwrap()).await;
    let auth = format!("Bearer {guest}");
    let h = [("authorization", auth.as_str())];
    let verify = [("authorization", auth.as_str()), ("x-original-uri", "/vault/secrets")];
    for (path, headers) in [("/api/users", &h[..]), ("/vault/x", &h[..]), ("/api/auth/verify", &verify[..])] {
        let seen = flood(&mut conn, 300, "GET", path, headers, "").await;
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![403], "{path}: {seen:?}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the admin-only upstream saw a guest");
    let after = lab.audit(&admin).await;
    let added: Vec<_> = after.iter().filter(|(s, _)| !before.iter().any(|(b, _)| b == s)).collect();
    println!("900 refusals of a guest added {} records: {:?}", added.len(), &added[..added.len().min(10)]);
    assert!(
        added.len() <= 2,
        "900 refusals of one guest added {} records: {:?}",
        added.len(),
        &added[..added.len().min(10)]
    );
    assert!(added.iter().any(|(_, k)| k == "permission_denied"), "the first refusal is still recorded");
}

/// Wrong setup tokens cost no hash: recorded once per address per window.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_setup_tokens_add_one_record_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, "[rate_limits.auth]\nper_minute = 100000\nburst = 10000\n").unwrap();
    let gate = Gate::start(&data, &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    let lab = Lab { pem: data.join("self-signed.pem"), _dir: dir, gate };
    let mut conn = connection(&lab, "127.0.0.5".parse().unwrap()).await;
    let bad = json!({"email": ADMIN, "password": PW, "setupToken": "not-the-token"}).to_string();
    let seen = flood(&mut conn, 200, "POST", "/api/auth/setup", &[("content-type", "application/json")], &bad).await;
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), vec![401], "{seen:?}");
    let token = std::fs::read_to_string(data_token(&lab)).unwrap();
    let r = lab
        .call(
            Some("127.0.0.2"),
            "POST",
            "/api/auth/setup",
            Some(json!({"email": ADMIN, "password": PW, "setupToken": token.trim()})),
            &[],
        )
        .await;
    assert_eq!(r.status, 201);
    let (admin, _) = lab.token("127.0.0.2", ADMIN, PW).await;
    let records = lab.audit(&admin).await;
    let failed = records.iter().filter(|(_, k)| k == "login_failed").count();
    assert!(failed <= 1, "200 wrong setup tokens from one address added {failed} login_failed records");
    assert_eq!(failed, 1, "the first wrong token is still recorded");
}

fn data_token(lab: &Lab) -> std::path::PathBuf {
    lab.pem.with_file_name("setup-token")
}

/// (method, path, JSON body or null, headers).
type Call = (&'static str, String, Value, Vec<(&'static str, String)>);

/// Sends every request at once, the `i`th from its own client address (`X-Forwarded-For`
/// through the trusted 127.0.0.1); returns the answers in order.
async fn all_at_once(lab: &Arc<Lab>, reqs: Vec<Call>) -> Vec<Reply> {
    let start = Arc::new(tokio::sync::Barrier::new(reqs.len()));
    let mut tasks = Vec::new();
    for (i, (method, path, body, mut headers)) in reqs.into_iter().enumerate() {
        let (lab, start) = (lab.clone(), start.clone());
        headers.push(("x-forwarded-for", format!("198.51.{}.{}", 100 + i / 200, i % 200 + 1)));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            lab.call(None, method, &path, (!body.is_null()).then_some(body), &headers).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_parallel_guesses_from_fifty_addresses_stay_within_the_lockout_budget() {
    let lab = Arc::new(Lab::start(SPREAD).await);
    let reqs = (0..50)
        .map(|i| {
            let door = if i % 2 == 0 { "/api/auth/login" } else { "/api/auth/token" };
            let pw = if i == 25 { PW } else { WRONG };
            ("POST", door.to_string(), json!({"email": ADMIN, "password": pw}), Vec::new())
        })
        .collect();
    let replies = all_at_once(&lab, reqs).await;
    let s = statuses(&replies);
    let hashed = s.iter().filter(|s| matches!(s, 200 | 401)).count();
    println!("49 wrong + 1 right from 50 addresses: {hashed} reached the password check");
    assert!(hashed <= 5, "{s:?}");
    assert_eq!(s.iter().filter(|s| **s == 429).count(), 50 - hashed, "{s:?}");
    assert_locked_answers(&replies);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_parallel_logins_leave_at_most_the_session_limit_live() {
    // A low session limit, so that the logins that get through (the lockout reserves its budget
    // for attempts in flight, so most of a burst gets 429) exceed it.
    let lab = Arc::new(Lab::start(&format!("{SPREAD}[auth]\nmax_sessions_per_user = 3\n")).await);
    let reqs = (0..200)
        .map(|_| ("POST", "/api/auth/token".to_string(), json!({"email": ADMIN, "password": PW}), Vec::new()))
        .collect();
    let replies = all_at_once(&lab, reqs).await;
    let issued: Vec<String> = replies
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["access_token"].as_str().unwrap().to_string())
        .collect();
    let mut answers = std::collections::BTreeMap::new();
    for r in &replies {
        *answers.entry(r.status).or_insert(0) += 1;
    }
    println!(
        "200 parallel logins: answers {answers:?}; {}",
        replies
            .iter()
            .find(|r| r.status != 200)
            .map(|r| String::from_utf8_lossy(&r.body).to_string())
            .unwrap_or_default()
    );
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 429), "{:?}", statuses(&replies));
    assert!(!issued.is_empty(), "no login succeeded");
    // Of every token handed out, only the newest max_sessions_per_user (3) sessions live.
    let checks = issued.iter().map(|t| ("GET", "/api/me".to_string(), Value::Null, bearer(t))).collect();
    let live: Vec<&String> =
        all_at_once(&lab, checks).await.iter().zip(&issued).filter(|(r, _)| r.status == 200).map(|(_, t)| t).collect();
    println!("200 parallel logins: {} issued, {} still live", issued.len(), live.len());
    assert_eq!(live.len(), issued.len().min(3), "{} issued, {} live", issued.len(), live.len());
    let r = lab.call(Some("127.0.0.2"), "GET", "/api/me/sessions", None, &bearer(live[0])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().unwrap().len(), issued.len().min(3), "{}", r.json());
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_parallel_refreshes_of_one_token_yield_exactly_one_new_token() {
    let lab = Arc::new(Lab::start(SPREAD).await);
    let r = lab
        .call(Some("127.0.0.2"), "POST", "/api/auth/token", Some(json!({"email": ADMIN, "password": PW})), &[])
        .await;
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let reqs = (0..20)
        .map(|_| ("POST", "/api/auth/token/refresh".to_string(), json!({"refresh_token": refresh}), Vec::new()))
        .collect();
    let replies = all_at_once(&lab, reqs).await;
    let s = statuses(&replies);
    let winners: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    assert_eq!(winners.len(), 1, "{s:?}");
    assert!(s.iter().all(|s| matches!(s, 200 | 401)), "{s:?}");
    // The one new pair works and rotates again.
    let next = winners[0].json()["refresh_token"].as_str().unwrap().to_string();
    let r =
        lab.call(Some("127.0.0.2"), "POST", "/api/auth/token/refresh", Some(json!({"refresh_token": next})), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread")]
async fn admins_demoting_each_other_at_once_never_leave_no_admin() {
    let lab = Arc::new(Lab::start(SPREAD).await);
    let (root, _) = lab.token("127.0.0.2", ADMIN, PW).await;
    let mut admins = vec![(String::new(), root)];
    for i in 0..4 {
        let email = format!("admin{i}@example.com");
        let body = json!({"email": email, "password": PW, "role": "admin"});
        let r = lab.call(Some("127.0.0.2"), "POST", "/api/users", Some(body), &bearer(&admins[0].1)).await;
        assert_eq!(r.status, 201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        let (access, _) = lab.token(&format!("127.0.0.{}", 10 + i), &email, PW).await;
        admins.push((id, access));
    }
    let r = lab.call(Some("127.0.0.2"), "GET", "/api/me", None, &bearer(&admins[0].1)).await;
    admins[0].0 = r.json()["id"].as_str().unwrap().to_string();
    // Every admin demotes (or disables) every other admin, all 20 requests at once.
    let mut reqs = Vec::new();
    for (i, (_, actor)) in admins.iter().enumerate() {
        for (j, (target, _)) in admins.iter().enumerate() {
            if i != j {
                let body = if (i + j) % 2 == 0 { json!({"role": "user"}) } else { json!({"disabled": true}) };
                reqs.push(("PATCH", format!("/api/users/{target}"), body, bearer(actor)));
            }
        }
    }
    let replies = all_at_once(&lab, reqs).await;
    let s = statuses(&replies);
    assert!(s.iter().all(|s| matches!(s, 200 | 401 | 403 | 409)), "{s:?}");
    // Some admin is left, enabled, and can still act as one.
    let mut left = Vec::new();
    for (id, access) in &admins {
        let r = lab.call(Some("127.0.0.2"), "GET", "/api/users", None, &bearer(access)).await;
        if r.status == 200 {
            let users = r.json();
            let me = users.as_array().unwrap().iter().find(|u| u["id"] == id.as_str()).unwrap().clone();
            assert_eq!(me["role"], "admin");
            assert_eq!(me["disabled"], false);
            left.push(users);
        }
    }
    println!("5 admins demoting each other: answers {s:?}, {} admins left", left.len());
    assert!(!left.is_empty(), "no admin is left");
    let enabled_admins =
        left[0].as_array().unwrap().iter().filter(|u| u["role"] == "admin" && u["disabled"] == false).count();
    assert_eq!(enabled_admins, left.len(), "{}", left[0]);
}
