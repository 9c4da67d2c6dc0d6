//! Black-box tests: the real binary, a temp data dir, real TLS on loopback.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Gate, client_config, https_request, run_cli};

fn tls13_and_12() -> Vec<&'static rustls::SupportedProtocolVersion> {
    vec![&rustls::version::TLS13, &rustls::version::TLS12]
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_healthz_over_tls_with_a_stable_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = Gate::start(&data, &[]);
    let pem = data.join("self-signed.pem");

    // The data dir and secrets are private.
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(data.join("master.key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(data.join("gate.redb")).unwrap().permissions().mode() & 0o777, 0o600);
    let token_mode = std::fs::metadata(data.join("setup-token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(token_mode, 0o600, "setup token must be owner-only");
    let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
    assert!(token.trim().len() >= 40);
    assert!(!gate.log_text().contains(token.trim()), "the setup token must not be logged");

    // A client that trusts only the gate's own certificate connects, for every name it covers.
    for name in ["localhost", "127.0.0.1"] {
        let reply = https_request(gate.addr, name, client_config(&pem, &tls13_and_12()), "GET", "/healthz", None)
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["status"], "ok");
        assert!(reply.headers.contains_key("x-request-id"));
        assert_eq!(reply.alpn.as_deref(), Some(&b"http/1.1"[..]));
    }
    // A client offering both gets the server's preference, h2.
    let mut both = client_config(&pem, &tls13_and_12());
    both.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    assert_eq!(common::tls_alpn(gate.addr, "localhost", both).await.unwrap().as_deref(), Some(&b"h2"[..]));
    // TLS 1.2 alone and TLS 1.3 alone both work.
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let reply =
            https_request(gate.addr, "localhost", client_config(&pem, &[v]), "GET", "/readyz", None).await.unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["store"], true);
        assert_eq!(reply.tls_version, Some(v.version));
    }
    // A name the certificate does not cover is refused by the client.
    assert!(
        https_request(gate.addr, "example.com", client_config(&pem, &tls13_and_12()), "GET", "/healthz", None)
            .await
            .is_err()
    );

    // The healthcheck subcommand finds the running gate.
    let listen = gate.addr.to_string();
    let (code, out, err) = run_cli(&["healthcheck"], &[("MIAUFLIX_LISTEN", &listen)]);
    assert_eq!(code, 0, "healthcheck failed: {out} {err}");

    let first_pem = std::fs::read(&pem).unwrap();
    let status = gate.terminate();
    assert!(status.success(), "SIGTERM must end the gate cleanly: {status:?}");

    // Healthcheck now fails: nothing answers.
    let (code, _, err) = run_cli(&["healthcheck", "--timeout", "2"], &[("MIAUFLIX_LISTEN", &listen)]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // Restart: same certificate, same token, data intact.
    let gate = Gate::start(&data, &[]);
    assert!(std::fs::read(&pem).unwrap() == first_pem, "certificate must be stable across restarts");
    assert_eq!(std::fs::read_to_string(data.join("setup-token")).unwrap(), token);
    let reply = https_request(gate.addr, "localhost", client_config(&pem, &tls13_and_12()), "GET", "/healthz", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(gate.terminate().success());
}

#[test]
fn refuses_a_master_key_readable_by_others() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let key = data.join("master.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) =
        run_cli(&[], &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap()), ("MIAUFLIX_LISTEN", "127.0.0.1:0")]);
    assert_ne!(code, 0);
    assert!(err.contains("master key file") && err.contains("chmod 600"), "{err}");
    assert_eq!(fatal_lines(&err), 1, "one clear line on stderr: {err}");
    // Nothing was created beside it.
    assert!(!data.join("gate.redb").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_a_wrong_master_key_without_touching_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = Gate::start(&data, &[]);
    assert!(gate.terminate().success());
    let before = std::fs::read(data.join("gate.redb")).unwrap();
    let other = dir.path().join("other.key");
    std::fs::write(&other, [9u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, _, err) = run_cli(
        &[],
        &[
            ("MIAUFLIX_DATA_DIR", data.to_str().unwrap()),
            ("MIAUFLIX_LISTEN", "127.0.0.1:0"),
            ("MIAUFLIX_MASTER_KEY_FILE", other.to_str().unwrap()),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("master key does not match"), "{err}");
    assert_eq!(fatal_lines(&err), 1, "{err}");
    // With the right key, everything is still there: same certificate, same data keys.
    let pem_before = std::fs::read(data.join("self-signed.pem")).unwrap();
    let gate = Gate::start(&data, &[]);
    assert_eq!(std::fs::read(data.join("self-signed.pem")).unwrap(), pem_before);
    assert!(gate.terminate().success());

    // A missing master key beside existing data is refused, not replaced.
    std::fs::rename(data.join("master.key"), dir.path().join("saved.key")).unwrap();
    let (code, _, err) =
        run_cli(&[], &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap()), ("MIAUFLIX_LISTEN", "127.0.0.1:0")]);
    assert_ne!(code, 0);
    assert!(err.contains("is missing but data file"), "{err}");
    assert!(!data.join("master.key").exists(), "no new key may be made");
    let _ = before;
}

#[test]
fn refuses_a_corrupt_data_file_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let junk: Vec<u8> = (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(data.join("gate.redb"), &junk).unwrap();
    let (code, _, err) =
        run_cli(&[], &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap()), ("MIAUFLIX_LISTEN", "127.0.0.1:0")]);
    assert_ne!(code, 0);
    assert!(err.contains("gate.redb"), "{err}");
    assert_eq!(fatal_lines(&err), 1, "{err}");
    assert!(std::fs::read(data.join("gate.redb")).unwrap() == junk, "a corrupt file must not be rewritten");
}

#[test]
fn refuses_a_data_dir_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    // Under a regular file, and on a file system that takes no directories (even for root).
    for data in [file.join("data"), std::path::PathBuf::from("/proc/miauflix-gate-data")] {
        let (code, _, err) =
            run_cli(&[], &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap()), ("MIAUFLIX_LISTEN", "127.0.0.1:0")]);
        assert_ne!(code, 0);
        assert!(err.contains("cannot create data directory"), "{err}");
        assert_eq!(fatal_lines(&err), 1, "{err}");
    }
}

#[test]
fn config_errors_are_one_line_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:8443\"\nbogus = 1\n").unwrap();
    let (code, _, err) = run_cli(&["config", "check"], &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bogus"), "{err}");
    assert_eq!(fatal_lines(&err), 1, "{err}");

    std::fs::write(&cfg, "listen = [\n").unwrap();
    let (code, _, err) = run_cli(&["config", "check", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line"), "{err}");
    assert_eq!(fatal_lines(&err), 1, "{err}");

    let (code, _, err) = run_cli(&["config", "check"], &[("MIAUFLIX_TLS", "off"), ("MIAUFLIX_LISTEN", "0.0.0.0:8080")]);
    assert_eq!(code, 2);
    assert!(err.contains("loopback"), "{err}");

    let (code, out, _) = run_cli(&["config", "check"], &[("MIAUFLIX_LISTEN", "127.0.0.1:9443")]);
    assert_eq!(code, 0);
    assert!(out.contains("127.0.0.1:9443"));

    let (code, out, _) = run_cli(&["--version"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains(env!("CARGO_PKG_VERSION")));
}

/// Lines of the final error (log lines before it carry a timestamp and level).
fn fatal_lines(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with("miauflix-gate:")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_login_refresh_logout_against_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = Gate::start(&data, &[]);
    let pem = data.join("self-signed.pem");
    let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let call = |method: &'static str,
                path: String,
                body: Option<serde_json::Value>,
                cookie: Option<String>,
                sid: Option<String>| {
        let pem = pem.clone();
        let addr = gate.addr;
        async move {
            common::https_request_with(
                addr,
                "localhost",
                client_config(&pem, &tls13_and_12()),
                method,
                &path,
                body.map(|b| b.to_string().into_bytes()).as_deref(),
                &[
                    ("cookie", cookie.unwrap_or_default()),
                    ("x-session-id", sid.unwrap_or_default()),
                    ("origin", "https://localhost".to_string()),
                ],
            )
            .await
            .unwrap()
        }
    };
    let pw = "a-very-long-passphrase";
    let r = call(
        "POST",
        "/api/auth/setup".into(),
        Some(serde_json::json!({"email": "root@example.com", "password": pw, "setupToken": token.trim()})),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 201);
    assert!(!data.join("setup-token").exists());
    let r = call(
        "POST",
        "/api/auth/login".into(),
        Some(serde_json::json!({"email": "root@example.com", "password": pw})),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let sid = r.json()["session"].as_str().unwrap().to_string();
    let set: Vec<String> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    assert_eq!(set.len(), 2);
    assert!(
        set.iter().all(|c| c.contains("Secure") && c.contains("HttpOnly") && c.contains("SameSite=Strict")),
        "{set:?}"
    );
    let jar =
        |set: &[String]| set.iter().map(|c| c.split(';').next().unwrap().to_string()).collect::<Vec<_>>().join("; ");
    let r = call("GET", "/api/auth/session".into(), None, Some(jar(&set)), Some(sid.clone())).await;
    assert_eq!(r.status, 200);
    let r = call("POST", format!("/api/auth/refresh/{sid}"), None, Some(jar(&set)), None).await;
    assert_eq!(r.status, 200);
    let set2: Vec<String> = r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let r = call("GET", "/api/auth/session".into(), None, Some(jar(&set2)), Some(sid.clone())).await;
    assert_eq!(r.status, 200);
    let r = call("POST", format!("/api/auth/logout/{sid}"), None, Some(jar(&set2)), None).await;
    assert_eq!(r.status, 200);
    let r = call("GET", "/api/auth/session".into(), None, Some(jar(&set2)), Some(sid.clone())).await;
    assert_eq!(r.status, 401);
    assert!(
        gate.wait_for_line(&["login_succeeded"]).is_some() && gate.wait_for_line(&["event=\"logout\""]).is_some(),
        "security events are logged"
    );
    let log = gate.log_text();
    assert!(!log.contains(pw), "no password in logs");
    for c in set.iter().chain(set2.iter()) {
        let value = c.split(';').next().unwrap().split_once('=').unwrap().1;
        assert!(!log.contains(value), "no token in logs");
    }
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rotate_keeps_sessions_and_certificate_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = Gate::start(&data, &[]);
    let env = [("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];
    let jwks_before = https_request(
        gate.addr,
        "localhost",
        client_config(&data.join("self-signed.pem"), &tls13_and_12()),
        "GET",
        "/.well-known/jwks.json",
        None,
    )
    .await
    .unwrap()
    .json();
    // While the gate runs, the rotation goes through its admin socket and is live at once.
    let (code, out, err) = run_cli(&["keys", "rotate"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data key 2 is active") && out.contains("live in the running gate"), "{out}");
    let jwks_live = https_request(
        gate.addr,
        "localhost",
        client_config(&data.join("self-signed.pem"), &tls13_and_12()),
        "GET",
        "/.well-known/jwks.json",
        None,
    )
    .await
    .unwrap()
    .json();
    assert_eq!(jwks_live["keys"].as_array().unwrap().len(), 2, "{jwks_live}");
    assert!(gate.terminate().success());
    let pem_before = std::fs::read(data.join("self-signed.pem")).unwrap();

    // Stopped: the CLI opens the data file itself.
    let (code, out, err) = run_cli(&["keys", "rotate"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data key 3 is active"), "{out}");
    assert!(out.contains("re-encrypted"), "{out}");

    // After restart: same certificate (its key re-encrypted, still readable); the first key
    // retired more than a token lifetime ago is gone only later, so the old kids still verify.
    let gate = Gate::start(&data, &[]);
    assert!(std::fs::read(data.join("self-signed.pem")).unwrap() == pem_before);
    let jwks = https_request(
        gate.addr,
        "localhost",
        client_config(&data.join("self-signed.pem"), &tls13_and_12()),
        "GET",
        "/.well-known/jwks.json",
        None,
    )
    .await
    .unwrap()
    .json();
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids.len(), 3, "{jwks}");
    assert!(kids.contains(&jwks_before["keys"][0]["kid"].as_str().unwrap()), "old key still verifies");
    assert!(gate.terminate().success());

    // The rotation is in the audit log; a restart with another configuration is too.
    let gate = Gate::start(&data, &[("MIAUFLIX_LOCKOUT__MAX_FAILURES", "7")]);
    assert!(gate.terminate().success());
    let (code, out, err) = run_cli(&["audit", "export"], &env);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let rotated = records.iter().find(|r| r["type"] == "keys_rotated").expect("keys_rotated recorded");
    assert_eq!(rotated["ip"], "local");
    let changed = records.iter().find(|r| r["type"] == "config_changed").expect("config_changed recorded");
    assert_eq!(changed["detail"]["sections"], "lockout");
    let (code, out, _) = run_cli(&["audit", "verify"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("verifies"), "{out}");
}
