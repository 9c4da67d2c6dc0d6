//! The edge against the real binary over TLS: lockout across client addresses, trusted
//! proxies, HSTS, and bounded memory while 100 MiB stream through the proxy.

mod common;

use std::net::SocketAddr;

use common::{Gate, client_config, https_request_from};
use serde_json::json;

const PW: &str = "a-very-long-passphrase";

fn v(versions: &[&'static rustls::SupportedProtocolVersion]) -> Vec<&'static rustls::SupportedProtocolVersion> {
    versions.to_vec()
}

async fn call(
    gate: &Gate,
    pem: &std::path::Path,
    from: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
    headers: &[(&str, String)],
) -> common::Reply {
    https_request_from(
        from.map(|f| f.parse().unwrap()),
        gate.addr,
        "localhost",
        client_config(pem, &v(&[&rustls::version::TLS13])),
        method,
        path,
        body.map(|b| b.to_string().into_bytes()).as_deref(),
        headers,
    )
    .await
    .unwrap()
}

async fn setup(gate: &Gate, data: &std::path::Path) {
    let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let r = call(
        gate,
        &data.join("self-signed.pem"),
        None,
        "POST",
        "/api/auth/setup",
        Some(json!({"email": "root@example.com", "password": PW, "setupToken": token.trim()})),
        &[],
    )
    .await;
    assert_eq!(r.status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn lockout_counts_per_account_across_addresses_and_xff_needs_a_trusted_peer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, "[http]\ntrusted_proxies = [\"127.0.0.9/32\"]\n").unwrap();
    let gate = Gate::start(&data, &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    let pem = data.join("self-signed.pem");
    setup(&gate, &data).await;
    let r = call(&gate, &pem, None, "GET", "/healthz", None, &[]).await;
    assert_eq!(r.headers.get("strict-transport-security").unwrap(), "max-age=31536000; includeSubDomains");

    // Five failures from five addresses lock the account for every address.
    for i in 2..7 {
        let from = format!("127.0.0.{i}");
        let r = call(
            &gate,
            &pem,
            Some(&from),
            "POST",
            "/api/auth/token",
            Some(json!({"email": "root@example.com", "password": "wrong-wrong-wrong"})),
            &[],
        )
        .await;
        assert_eq!(r.status, 401, "attempt from {from}");
    }
    let r = call(
        &gate,
        &pem,
        Some("127.0.0.7"),
        "POST",
        "/api/auth/token",
        Some(json!({"email": "root@example.com", "password": PW})),
        &[],
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.json()["type"], "urn:miauflix-gate:problem/account-locked");

    // X-Forwarded-For from an untrusted peer is ignored; from the trusted one it is believed.
    let xff = [("x-forwarded-for", "203.0.113.7".to_string())];
    call(
        &gate,
        &pem,
        Some("127.0.0.8"),
        "POST",
        "/api/auth/token",
        Some(json!({"email": "x@example.com", "password": "nope-nope-nope"})),
        &xff,
    )
    .await;
    call(
        &gate,
        &pem,
        Some("127.0.0.9"),
        "POST",
        "/api/auth/token",
        Some(json!({"email": "y@example.com", "password": "nope-nope-nope"})),
        &xff,
    )
    .await;
    let line = |who: &str| gate.wait_for_line(&["login_failed", who]).unwrap_or_default();
    assert!(line("x@example.com").contains("ip=\"127.0.0.8\""), "{}", line("x@example.com"));
    assert!(line("y@example.com").contains("ip=\"203.0.113.7\""), "{}", line("y@example.com"));
    assert!(!gate.log_text().contains(PW));
    assert!(gate.terminate().success());
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_download_streams_through_with_bounded_memory() {
    // A plain upstream on loopback that sends 100 MiB.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let total: usize = 100 * 1024 * 1024;
                s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {total}\r\ncontent-type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                )
                .await
                .unwrap();
                let chunk = vec![b'z'; 256 * 1024];
                let mut sent = 0;
                while sent < total {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[routes]]\nprefix = \"/media\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\ntimeout_secs = 60\n"
        ),
    )
    .unwrap();
    let gate = Gate::start(&data, &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    let before = vm_hwm_kib(gate.child.id());
    let r = call(&gate, &data.join("self-signed.pem"), None, "GET", "/media/movie.mkv", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100 * 1024 * 1024);
    let after = vm_hwm_kib(gate.child.id());
    println!("gate peak RSS: {before} KiB before, {after} KiB after a 100 MiB download");
    assert!(after < before + 48 * 1024, "the gate must stream, not buffer: peak RSS grew from {before} to {after} KiB");
    assert!(gate.terminate().success());
}
