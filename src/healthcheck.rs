//! `healthcheck`: one GET /healthz against the running gate on this machine.
//!
//! The probe goes to loopback and sends nothing secret, so it checks the TLS handshake's
//! signatures but not the certificate chain (the self-signed certificate would fail it).

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::Config;

#[derive(Debug)]
struct LoopbackProbeVerifier(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for LoopbackProbeVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Succeeds when the gate answers `GET /healthz` with 200 within `timeout`.
pub async fn check(config: &Config, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, probe(config))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {}s", timeout.as_secs()))?
}

async fn probe(config: &Config) -> anyhow::Result<()> {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let tcp =
        tokio::net::TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    let status = if config.tls_enabled() {
        let provider = Arc::new(crate::tls::crypto_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(LoopbackProbeVerifier(provider)))
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost")?;
        let tls =
            connector.connect(name, tcp).await.map_err(|e| anyhow::anyhow!("TLS handshake with {addr} failed: {e}"))?;
        request(tls).await?
    } else {
        request(tcp).await?
    };
    if status == 200 { Ok(()) } else { anyhow::bail!("/healthz answered {status}") }
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> anyhow::Result<u16> {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer"))?;
    Ok(status)
}
