//! End-to-end TLS checks with system tools (feature `e2e`): `openssl s_client` against
//! the real binary. A missing tool is a failure, never a silent pass.
#![cfg(feature = "e2e")]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::Gate;

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "e2e needs `{tool}` on PATH (apt-get install -y {tool}); .ci/run installs it");
}

/// Runs `openssl s_client` with extra args; returns (handshake succeeded, output).
fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-servername")
        .arg("localhost")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl");
    let _ = child.stdin.take().unwrap().write_all(b"Q\n");
    let out = child.wait_with_output().expect("openssl output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let ok = out.status.success() && text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

#[test]
fn only_tls12_and_tls13_with_forward_secret_aead_suites() {
    require("openssl");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = Gate::start(&data, &[]);

    for old in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(gate.addr, &[old, "-cipher", "DEFAULT:@SECLEVEL=0"]);
        assert!(!ok, "{old} must be refused:\n{text}");
    }
    let (ok, text) = s_client(gate.addr, &["-tls1_2"]);
    assert!(ok, "TLS 1.2 must work:\n{text}");
    assert!(text.contains("ECDHE"), "TLS 1.2 uses ECDHE:\n{text}");
    assert!(text.contains("GCM") || text.contains("CHACHA20"), "AEAD suite:\n{text}");
    let (ok, text) = s_client(gate.addr, &["-tls1_3"]);
    assert!(ok, "TLS 1.3 must work:\n{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    // Non-forward-secret and CBC suites are refused over TLS 1.2.
    for weak in ["AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA256"] {
        let (ok, text) = s_client(gate.addr, &["-tls1_2", "-cipher", weak]);
        assert!(!ok, "{weak} must be refused:\n{text}");
    }
    // ALPN: h2 is offered.
    let (ok, text) = s_client(gate.addr, &["-alpn", "h2,http/1.1"]);
    assert!(ok && text.contains("ALPN protocol: h2"), "{text}");
    // The served certificate is the one in self-signed.pem.
    let (_, text) = s_client(
        gate.addr,
        &[
            "-CAfile",
            data.join("self-signed.pem").to_str().unwrap(),
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
        ],
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(gate.terminate().success());
}
