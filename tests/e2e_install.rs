//! install.sh into a staging root (feature `e2e`: needs root and useradd): paths, owners,
//! modes, idempotence, a kept config, uninstall and purge.
#![cfg(feature = "e2e")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn sh(args: &[&str]) -> (i32, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh");
    let out = Command::new("sh").arg(script).args(args).output().expect("run install.sh");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

fn id(flag: &str) -> u32 {
    let out = Command::new("id").arg(flag).arg("miauflix-gate").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn install_sh_stages_a_hardened_layout_idempotently() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(uid, "0", "e2e install test needs root (CI runs as root)");
    let found =
        Command::new("sh").arg("-c").arg("command -v useradd").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "e2e install test needs useradd (package passwd)");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = env!("CARGO_BIN_EXE_miauflix-gate");
    let destdir = root.to_str().unwrap();
    let (code, out) = sh(&["--destdir", destdir, "--binary", bin, "--no-start"]);
    assert_eq!(code, 0, "{out}");

    let (svc_uid, svc_gid) = (id("-u"), id("-g"));
    let shell = std::fs::read_to_string("/etc/passwd").unwrap();
    let entry = shell.lines().find(|l| l.starts_with("miauflix-gate:")).unwrap();
    assert!(entry.ends_with("nologin"), "no login shell: {entry}");

    let bin_path = root.join("usr/local/bin/miauflix-gate");
    let config = root.join("etc/miauflix-gate/config.toml");
    let data = root.join("var/lib/miauflix-gate");
    let unit = root.join("etc/systemd/system/miauflix-gate.service");
    assert_eq!(mode(&bin_path), 0o755);
    assert_eq!(mode(&config), 0o640);
    assert_eq!(std::fs::metadata(&config).unwrap().uid(), 0);
    assert_eq!(std::fs::metadata(&config).unwrap().gid(), svc_gid);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(std::fs::metadata(&data).unwrap().uid(), svc_uid);
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/miauflix-gate",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_ADMIN",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "LimitNOFILE=65536",
        "User=miauflix-gate",
    ] {
        assert!(unit_text.contains(needle), "unit lacks {needle}");
    }
    // systemd accepts the unit (ExecStart pointed at the staged binary) and rates its
    // sandbox "OK" or better (exposure <= 2.5).
    let has_analyze = Command::new("sh")
        .arg("-c")
        .arg("command -v systemd-analyze")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(has_analyze, "e2e install test needs systemd-analyze (package systemd)");
    let probe = root.join("unit-check/miauflix-gate.service");
    std::fs::create_dir_all(probe.parent().unwrap()).unwrap();
    std::fs::write(&probe, unit_text.replace("/usr/local/bin/miauflix-gate", bin_path.to_str().unwrap())).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&probe).output().unwrap();
    assert!(verify.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&verify.stderr));
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", &format!("--root={destdir}")])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(exposure <= 2.5, "systemd-analyze security exposure {exposure} > 2.5");
    eprintln!("systemd-analyze security: exposure {exposure}");
    std::fs::remove_dir_all(probe.parent().unwrap()).unwrap();

    // The generated config validates.
    let check = Command::new(bin).args(["config", "check", "--config", config.to_str().unwrap()]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // A second run changes nothing and keeps an edited config.
    let mut edited = std::fs::read_to_string(&config).unwrap();
    edited.push_str("\n# my own note\n");
    std::fs::write(&config, &edited).unwrap();
    let before: Vec<_> = [&bin_path, &unit].iter().map(|p| std::fs::metadata(p).unwrap().mtime_nsec()).collect();
    let (code, out) = sh(&["--destdir", destdir, "--binary", bin, "--no-start"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    let after: Vec<_> = [&bin_path, &unit].iter().map(|p| std::fs::metadata(p).unwrap().mtime_nsec()).collect();
    assert_eq!(before, after, "nothing rewritten");

    // Uninstall keeps data and config; purge removes them.
    std::fs::write(data.join("marker"), b"x").unwrap();
    let (code, out) = sh(&["--destdir", destdir, "--uninstall"]);
    assert_eq!(code, 0, "{out}");
    assert!(!bin_path.exists() && !unit.exists());
    assert!(config.exists() && data.join("marker").exists());
    let (code, out) = sh(&["--destdir", destdir, "--purge", "--yes"]);
    assert_eq!(code, 0, "{out}");
    assert!(!config.exists() && !data.exists());

    // Bad options are one clear line.
    let (code, out) = sh(&["--bogus"]);
    assert_ne!(code, 0);
    assert_eq!(out.trim().lines().count(), 1, "{out}");
}
