//! Crash safety of the audit log with the real binary: a burst of failing sign-ins, each
//! acknowledged by its 401, is cut by SIGKILL; after a restart every acknowledged event is in
//! the log and the chain verifies. Ten rounds on the same data file.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gate, http_request, run_cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap().to_string();
    let env = [
        ("MIAUFLIX_TLS", "off"),
        ("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}"),
        ("MIAUFLIX_RATE_LIMITS__GLOBAL", "{per_minute = 100000, burst = 10000}"),
    ];
    let mut acknowledged: HashSet<String> = HashSet::new();
    for round in 0..10 {
        let gate = Gate::start(&data, &env);
        let addr = gate.addr;
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut workers = Vec::new();
        for w in 0..6 {
            let acked = acked.clone();
            workers.push(tokio::spawn(async move {
                for i in 0.. {
                    // Distinct emails, so no lock hides the password check.
                    let body = format!(r#"{{"email":"r{round}w{w}i{i}@example.com","password":"wrong-password"}}"#);
                    match http_request(addr, "POST", "/api/auth/token", Some(body.as_bytes()), &[]).await {
                        Ok(r) if r.status == 401 => {
                            let id = r.headers["x-request-id"].to_str().unwrap().to_string();
                            acked.lock().unwrap().push(id);
                        }
                        Ok(r) => panic!("unexpected status {}", r.status),
                        Err(_) => break, // the process is gone
                    }
                }
            }));
        }
        // Kill mid-burst: once some sign-ins have been answered (however slow the machine),
        // plus a little more so writes are in flight.
        let t = std::time::Instant::now();
        while acked.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(100 + 30 * round)).await;
        let pid = nix::unistd::Pid::from_raw(gate.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        for w in workers {
            w.await.unwrap();
        }
        drop(gate);
        let acked = acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "round {round}: no request was answered before the kill");
        eprintln!("round {round}: {} failing sign-ins acknowledged before SIGKILL", acked.len());
        acknowledged.extend(acked);

        // Restart: the gate opens the file and answers.
        let gate = Gate::start(&data, &env);
        let r = http_request(gate.addr, "GET", "/readyz", None, &[]).await.unwrap();
        assert_eq!(r.status, 200, "round {round}");
        assert!(gate.terminate().success());

        let (code, out, err) = run_cli(&["audit", "verify"], &[("MIAUFLIX_DATA_DIR", data_s.as_str())]);
        assert_eq!(code, 0, "round {round}: {out}{err}");
        let (code, out, err) = run_cli(&["audit", "export"], &[("MIAUFLIX_DATA_DIR", data_s.as_str())]);
        assert_eq!(code, 0, "{err}");
        let stored: HashSet<String> = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "login_failed")
            .map(|v| v["request_id"].as_str().unwrap().to_string())
            .collect();
        let missing: Vec<&String> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(missing.is_empty(), "round {round}: {} acknowledged event(s) lost", missing.len());
    }
}
