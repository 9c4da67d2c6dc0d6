//! The admin CLI against a running gate (through `<data>/admin.sock`) and against a stopped
//! one (the data file directly); backup during a write load and restore into a fresh data dir.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{Gate, http_request, run_cli, run_cli_stdin};
use serde_json::{Value, json};

const ADMIN: &str = "admin@example.com";
const PW: &str = "correct-horse-battery";

fn env(data: &Path) -> Vec<(&'static str, String)> {
    vec![("MIAUFLIX_DATA_DIR", data.to_str().unwrap().to_string()), ("MIAUFLIX_TLS", "off".into())]
}

fn cli(data: &Path, args: &[&str]) -> (i32, String, String) {
    let e = env(data);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_cli(args, &e)
}

fn cli_in(data: &Path, args: &[&str], input: &str) -> (i32, String, String) {
    let e = env(data);
    let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run_cli_stdin(args, &e, input)
}

fn start(data: &Path) -> Gate {
    Gate::start(
        data,
        &[("MIAUFLIX_TLS", "off"), ("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}")],
    )
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> (u16, Value) {
    let r = http_request(addr, "POST", path, Some(body.to_string().as_bytes()), &[]).await.unwrap();
    (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::Null))
}

async fn setup(gate: &Gate, data: &Path) {
    let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let (status, _) =
        post(gate.addr, "/api/auth/setup", json!({"email": ADMIN, "password": PW, "setupToken": token.trim()})).await;
    assert_eq!(status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_go_through_the_socket_and_backup_restore_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = start(&data);
    setup(&gate, &data).await;
    let sock = data.join("admin.sock");
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    // user add: the password comes on stdin, never argv.
    let (code, out, err) =
        cli_in(&data, &["user", "add", "--email", "Bob@Example.com", "--role", "user"], "bob-password-long\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("bob@example.com"), "{out}");
    let (code, _, err) = cli_in(&data, &["user", "add", "--email", "nopw@example.com"], "");
    assert_ne!(code, 0);
    assert!(err.contains("password") && err.lines().count() == 1, "{err}");

    let (code, out, _) = cli(&data, &["user", "list", "--json"]);
    assert_eq!(code, 0);
    let users: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(users.as_array().unwrap().len(), 2);
    let (code, out, err) = cli(&data, &["user", "set-role", "--email", "bob@example.com", "--role", "guest"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("guest"), "{out}");
    let (code, _, err) = cli(&data, &["user", "set-role", "--email", "nobody@example.com", "--role", "guest"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim(), "miauflix-gate: no such user");

    // Bob signs in; his session is listed and revoked from the shell.
    let (status, tokens) =
        post(gate.addr, "/api/auth/token", json!({"email": "bob@example.com", "password": "bob-password-long"})).await;
    assert_eq!(status, 200);
    let (code, out, _) = cli(&data, &["sessions", "list", "--email", "bob@example.com", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<Value>(out.trim()).unwrap().as_array().unwrap().len(), 1);
    let (code, out, _) = cli(&data, &["sessions", "revoke", "--email", "bob@example.com"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 session(s)"), "{out}");
    let (status, _) =
        post(gate.addr, "/api/auth/token/refresh", json!({"refresh_token": tokens["refresh_token"]})).await;
    assert_eq!(status, 401, "a revoked session cannot refresh");

    let (code, out, err) = cli(&data, &["keys", "rotate"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("live in the running gate"), "{out}");

    // The admin keeps a session across backup and restore.
    let (status, admin_tokens) = post(gate.addr, "/api/auth/token", json!({"email": ADMIN, "password": PW})).await;
    assert_eq!(status, 200);

    // Backup while failing sign-ins keep the writer busy.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for w in 0..4 {
        let (stop, writes, addr) = (stop.clone(), writes.clone(), gate.addr);
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"email": format!("load{w}-{i}@example.com"), "password": "wrong-password"});
                let _ = http_request(addr, "POST", "/api/auth/token", Some(body.to_string().as_bytes()), &[]).await;
                writes.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let backup = dir.path().join("gate.backup");
    let (code, out, err) = cli(&data, &["backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("master key is NOT in it"), "{out}");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(writes.load(Ordering::Relaxed) > 0);
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    // While the gate runs, restore refuses.
    let (code, _, err) = cli(&data, &["restore", "--from", backup.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("stop it first"), "{err}");
    assert!(gate.terminate().success());
    assert!(!sock.exists(), "the socket is removed on shutdown");

    // Restore into a fresh data dir that has the same master key.
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(data.join("master.key"), fresh.join("master.key")).unwrap();
    std::fs::set_permissions(fresh.join("master.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = cli(&fresh, &["restore", "--from", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored"), "{out}");
    let (code, out, err) = cli(&fresh, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let gate = start(&fresh);
    let (status, _) = post(gate.addr, "/api/auth/token", json!({"email": ADMIN, "password": PW})).await;
    assert_eq!(status, 200, "users intact");
    let (status, _) =
        post(gate.addr, "/api/auth/token/refresh", json!({"refresh_token": admin_tokens["refresh_token"]})).await;
    assert_eq!(status, 200, "sessions intact");
    let (code, out, _) = cli(&fresh, &["user", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("bob@example.com") && out.contains("guest"), "{out}");
    assert!(gate.terminate().success());

    // A data dir with another master key refuses the backup and keeps its own file.
    let other = dir.path().join("other");
    let g = start(&other);
    assert!(g.terminate().success());
    let (code, _, err) = cli(&other, &["restore", "--from", backup.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot decrypt this backup"), "{err}");
    let names: Vec<String> =
        std::fs::read_dir(&other).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("before-restore") || n.contains("restore-check")), "{names:?}");
    let (code, out, err) = cli(&other, &["user", "list", "--json"]);
    assert_eq!((code, out.trim()), (0, "[]"), "its own data file is untouched: {err}");
}

#[test]
fn admin_commands_work_on_a_stopped_gate_and_bad_input_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = cli(&data, &["user", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("start the gate once first"), "{err}");
    let g = start(&data);
    assert!(g.terminate().success());
    let (code, out, err) =
        cli_in(&data, &["user", "add", "--email", "carol@example.com", "--role", "admin"], "carol-password-1\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("carol@example.com") && out.contains("admin"), "{out}");
    let (code, _, err) = cli(&data, &["user", "set-role", "--email", "carol@example.com", "--role", "emperor"]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("role must be admin, user or guest"), "{err}");
    let backup = dir.path().join("b.redb");
    let (code, _, err) = cli(&data, &["backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = cli(&data, &["vpn", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("stopped") && out.contains("not running"), "{out}");
    // The key can be stored while the gate is stopped; bad input is one line and stores nothing.
    let (code, out, err) = cli_in(&data, &["vpn", "set-key"], "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("public key"), "{out}");
    let (code, _, err) = cli_in(&data, &["vpn", "set-key"], "not-a-key\n");
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("base64 WireGuard key"), "{err}");
    // A file that is not a backup is refused before anything is replaced.
    std::fs::write(dir.path().join("junk"), b"not a redb file at all").unwrap();
    let (code, _, err) = cli(&data, &["restore", "--from", dir.path().join("junk").to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not usable"), "{err}");
}
