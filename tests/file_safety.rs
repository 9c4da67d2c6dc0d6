//! Files the CLI writes as root in directories another user controls (issue 15 item 5): a
//! symlink planted at the restore staging name, the data file or an `--out` target is never
//! followed, and an existing `--out` file ends up 0600.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{Gate, run_cli};

fn cli(data: &Path, args: &[&str]) -> (i32, String, String) {
    run_cli(args, &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap()), ("MIAUFLIX_TLS", "off")])
}

/// A data dir the gate has started in once (so it has a data file and a master key), stopped.
fn data_dir(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    Gate::start(&data, &[("MIAUFLIX_TLS", "off")]).terminate();
    data
}

/// A root-owned 0644 file outside the data dir, the attacker's target.
fn victim(dir: &Path) -> PathBuf {
    let path = dir.join("victim");
    std::fs::write(&path, "precious\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn assert_untouched(victim: &Path) {
    assert_eq!(std::fs::read_to_string(victim).unwrap(), "precious\n");
    assert_eq!(std::fs::metadata(victim).unwrap().permissions().mode() & 0o777, 0o644);
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn backup_and_export_out_never_follow_a_symlink_and_end_up_0600() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let victim = victim(dir.path());
    for cmd in [&["backup"][..], &["audit", "export"][..]] {
        // A symlink at the target: replaced by a new 0600 file, the file it pointed at untouched.
        let link = dir.path().join(format!("{}-link", cmd.join("-")));
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let args = [cmd, &["--out", link.to_str().unwrap()]].concat();
        let (code, _, err) = cli(&data, &args);
        assert_eq!(code, 0, "{cmd:?}: {err}");
        assert_untouched(&victim);
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file(), "{cmd:?}");
        assert_eq!(mode(&link), 0o600, "{cmd:?}");
        // An existing 0644 file ends up 0600 with the new content.
        let existing = dir.path().join(format!("{}-existing", cmd.join("-")));
        std::fs::write(&existing, "old").unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
        let args = [cmd, &["--out", existing.to_str().unwrap()]].concat();
        let (code, _, err) = cli(&data, &args);
        assert_eq!(code, 0, "{cmd:?}: {err}");
        assert_eq!(mode(&existing), 0o600, "{cmd:?}");
        assert_ne!(std::fs::read(&existing).unwrap(), b"old");
    }
    // Nothing temporary is left beside the targets.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
}

#[test]
fn restore_refuses_a_symlinked_data_file_and_never_follows_the_staging_name() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let victim = victim(dir.path());
    let backup = dir.path().join("b.redb");
    let (code, _, err) = cli(&data, &["backup", "--out", backup.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // The data file replaced by a symlink to the victim: refused in one line.
    let store = data.join("gate.redb");
    let real = data.join("gate.redb.real");
    std::fs::rename(&store, &real).unwrap();
    std::os::unix::fs::symlink(&victim, &store).unwrap();
    let (code, _, err) = cli(&data, &["restore", "--from", backup.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("symbolic link") && err.lines().count() == 1, "{err}");
    assert_untouched(&victim);
    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&real, &store).unwrap();

    // A symlink at the staging name, planted before and re-planted all through the restore.
    let staging = data.join(".restore-check.redb");
    std::os::unix::fs::symlink(&victim, &staging).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let planter = {
        let (stop, staging, victim) = (stop.clone(), staging.clone(), victim.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = std::os::unix::fs::symlink(&victim, &staging);
                std::thread::yield_now();
            }
        })
    };
    for _ in 0..10 {
        let (code, out, err) = cli(&data, &["restore", "--from", backup.to_str().unwrap()]);
        assert!(code == 0 || err.lines().count() == 1, "{out}{err}");
        assert_untouched(&victim);
        let meta = std::fs::symlink_metadata(&store).unwrap();
        assert!(meta.is_file(), "the data file must never become a symlink");
        assert_eq!(mode(&store), 0o600);
    }
    stop.store(true, Ordering::Relaxed);
    planter.join().unwrap();
    assert_untouched(&victim);
}
