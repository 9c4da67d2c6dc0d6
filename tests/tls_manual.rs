//! Manual certificates with the real binary: hot reload of a replaced pair, refusal of a
//! broken replacement (the old certificate stays), and the plain-HTTP redirect listener.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Gate, run_cli};

/// A self-signed leaf for `localhost`, written as PEM files; returns its serial (hex).
fn write_pair(dir: &Path, cert: &str, key: &str) -> String {
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let serial = miauflix_gate::crypto::random_bytes::<8>();
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[&[0x01u8][..], &serial[..]].concat()));
    let c = params.self_signed(&key_pair).unwrap();
    std::fs::write(dir.join(cert), c.pem()).unwrap();
    std::fs::write(dir.join(key), key_pair.serialize_pem()).unwrap();
    miauflix_gate::tls::status::CertFacts::from_der(c.der()).unwrap().serial
}

async fn served(addr: SocketAddr) -> (String, String) {
    // Trust whatever is served: this test checks which certificate, not the chain.
    #[derive(Debug)]
    struct AnyCert;
    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyCert))
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let facts = miauflix_gate::tls::status::CertFacts::from_der(&leaf).unwrap();
    (facts.serial, facts.fingerprint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_certificates_reload_without_a_restart_and_broken_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = write_pair(dir.path(), "cert.pem", "key.pem");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let env = [
        ("MIAUFLIX_TLS", "manual"),
        ("MIAUFLIX_TLS__MANUAL__CERT_FILE", cert.to_str().unwrap()),
        ("MIAUFLIX_TLS__MANUAL__KEY_FILE", key.to_str().unwrap()),
    ];
    let gate = Gate::start(&data, &env);
    assert_eq!(served(gate.addr).await.0, first);

    // A new pair, written in place: served to new connections within a few seconds.
    let second = write_pair(dir.path(), "cert.pem", "key.pem");
    let deadline = Instant::now() + Duration::from_secs(15);
    while served(gate.addr).await.0 != second {
        assert!(Instant::now() < deadline, "the new certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A certificate whose key does not match: refused, the second stays.
    write_pair(dir.path(), "cert.pem", "other-key.pem");
    assert!(gate.wait_for_line(&["refused the changed certificate files"]).is_some(), "{}", gate.log_text());
    assert_eq!(served(gate.addr).await.0, second);
    // Garbage is refused as well.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served(gate.addr).await.0, second);
    assert!(gate.terminate().success());

    let (code, out, err) = run_cli(&["audit", "export"], &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap())]);
    assert_eq!(code, 0, "{err}");
    let types: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap().to_string())
        .collect();
    assert!(types.iter().any(|t| t == "certificate_renewed"), "{types:?}");
    assert!(types.iter().any(|t| t == "certificate_renewal_failed"), "{types:?}");

    // A broken pair at startup is one clear line, not a fallback.
    let (code, _, err) = run_cli(
        &["serve"],
        &[
            ("MIAUFLIX_DATA_DIR", data.to_str().unwrap()),
            ("MIAUFLIX_LISTEN", "127.0.0.1:0"),
            ("MIAUFLIX_TLS", "manual"),
            ("MIAUFLIX_TLS__MANUAL__CERT_FILE", cert.to_str().unwrap()),
            ("MIAUFLIX_TLS__MANUAL__KEY_FILE", key.to_str().unwrap()),
        ],
    );
    assert_ne!(code, 0);
    assert!(err.contains("holds no usable private key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plain_http_listener_only_redirects() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let http = format!("127.0.0.1:{port}");
    let gate =
        Gate::start(&data, &[("MIAUFLIX_HTTP_LISTEN", http.as_str()), ("MIAUFLIX_HTTP__IDLE_TIMEOUT_SECS", "1")]);
    let addr: SocketAddr = http.parse().unwrap();
    for path in ["/", "/api/auth/login?next=/x", "/healthz"] {
        let r = common::http_request(addr, "GET", path, None, &[]).await.unwrap();
        assert_eq!(r.status, 308, "{path}");
        assert_eq!(r.headers["location"], format!("https://gate.test:{}{path}", gate.addr.port()).as_str());
        assert!(r.body.is_empty());
    }
    let r = common::http_request(addr, "POST", "/api/auth/login", Some(b"{}"), &[]).await.unwrap();
    assert_eq!(r.status, 308, "a 308 keeps the method, so nothing is served in clear");
    // No ACME configured: no challenge answers.
    let r = common::http_request(addr, "GET", "/.well-known/acme-challenge/abc", None, &[]).await.unwrap();
    assert_eq!(r.status, 404);
    // A request head trickled a byte every 200 ms does not hold the connection (slowloris):
    // it is closed once the head is overdue (the idle timeout, 1 s here).
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (closed, took) = common::trickle_until_closed(&mut slow).await;
    assert!(closed, "the trickling client still holds its connection after {took:?}");
    assert!(gate.terminate().success());
}
