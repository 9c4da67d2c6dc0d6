//! The admin socket refuses callers that are neither root nor the gate's user (feature `e2e`:
//! runs as root and switches to `nobody` with `setpriv`).
#![cfg(feature = "e2e")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{BIN, Gate, run_cli};

fn as_nobody(data: &std::path::Path, args: &[&str]) -> (i32, String) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("setpriv").is_file()))
        .unwrap_or(false);
    assert!(found, "setpriv is not installed (apt-get install -y util-linux); the e2e feature needs it");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .args(args)
        .env_clear()
        .env("MIAUFLIX_DATA_DIR", data)
        .output()
        .expect("run setpriv");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_caller_that_is_neither_root_nor_the_service_user_is_refused() {
    assert_eq!(common::run_cli(&["--version"], &[]).0, 0);
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    assert_eq!(uid, 0, "this e2e test runs as root");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let gate = Gate::start(&data, &[("MIAUFLIX_TLS", "off")]);
    let sock = data.join("admin.sock");

    // As installed: the data dir (0700) and the socket (0600) keep others out.
    let (code, err) = as_nobody(&data, &["user", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("permission denied") && err.lines().count() == 1, "{err}");

    // Even if someone loosens the modes, the peer-credential check refuses.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, err) = as_nobody(&data, &["user", "list"]);
    assert_ne!(code, 0);
    assert!(err.contains("only root and the gate's service user"), "{err}");
    assert!(gate.terminate().success());

    let (code, out, err) = run_cli(&["audit", "export"], &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap())]);
    assert_eq!(code, 0, "{err}");
    let denied = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["type"] == "permission_denied")
        .expect("the refusal is audited");
    assert_eq!(denied["actor"], "uid:65534");
}
