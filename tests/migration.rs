//! A data file written by an earlier schema version (committed under `tests/fixtures/`) is
//! opened and migrated by this binary, with users, sessions and the audit chain intact.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{Gate, http_request, run_cli};
use miauflix_gate::store::{SCHEMA_VERSION, Store, tables};

fn copy_fixture(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700)).unwrap();
    for file in ["gate.redb", "master.key"] {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
        // git keeps no modes; the gate insists on a private key file.
        std::fs::set_permissions(to.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_2_fixture_opens_and_keeps_users_sessions_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_fixture("schema-v2", &data);
    let env = [("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];

    let (code, out, err) = run_cli(&["audit", "verify"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run_cli(&["user", "list"], &env);
    assert_eq!(code, 0);
    assert!(out.contains("admin@example.com") && out.contains("user@example.com"), "{out}");
    let (code, out, _) = run_cli(&["sessions", "list", "--email", "user@example.com", "--json"], &env);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(out.trim()).unwrap().as_array().unwrap().len(), 1);

    let gate = Gate::start(&data, &[("MIAUFLIX_TLS", "off")]);
    let body = br#"{"email":"admin@example.com","password":"fixture-admin-password"}"#;
    let r = http_request(gate.addr, "POST", "/api/auth/token", Some(body), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(gate.terminate().success());

    let store = Store::open(&data.join("gate.redb")).unwrap();
    let version = store
        .read(|txn| {
            let meta = txn.open_table(tables::META)?;
            let v = meta.get("schema_version")?.unwrap();
            Ok(u64::from_be_bytes(v.value().try_into().unwrap()))
        })
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_1_fixture_migrates_and_gains_an_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_fixture("schema-v1", &data);
    let env = [("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];
    let gate = Gate::start(&data, &[("MIAUFLIX_TLS", "off")]);
    assert!(gate.wait_for_line(&["migrated data file schema", "to=2"]).is_some(), "{}", gate.log_text());
    let body = br#"{"email":"admin@example.com","password":"fixture-admin-password"}"#;
    let r = http_request(gate.addr, "POST", "/api/auth/token", Some(body), &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(gate.terminate().success());
    let (code, out, _) = run_cli(&["sessions", "list", "--email", "admin@example.com", "--json"], &env);
    assert_eq!(code, 0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(out.trim()).unwrap().as_array().unwrap().len(), 2);
    let (code, out, err) = run_cli(&["audit", "verify"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verifies"), "{out}");
}
