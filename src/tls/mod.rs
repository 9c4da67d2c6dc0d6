//! The main listener's TLS: the rustls configuration the gate owns, a lazy-handshake
//! poem `Acceptor`, and the self-signed certificate.

pub mod acme;
pub mod config;
pub mod manual;
pub mod self_signed;
pub mod status;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use rustls::ServerConfig;
use rustls::server::ResolvesServerCert;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The gate's TLS client configuration (the ACME server, NordVPN's API): the public web
/// roots plus `ca_roots` (a private CA, or Pebble in tests), with the gate's crypto provider.
pub fn client_config(ca_roots: &[std::path::PathBuf]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in ca_roots {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut n = 0;
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| anyhow::anyhow!("{} is not PEM: {e}", path.display()))?;
            roots.add(cert).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            anyhow::bail!("{} holds no certificate", path.display());
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The one crypto provider: aws-lc-rs, forward-secret AEAD suites only
/// ([`crate::crypto::sign::tls_provider`]).
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    crate::crypto::sign::tls_provider()
}

/// Installs aws-lc-rs as the process-wide rustls provider (first call wins).
pub fn install_crypto_provider() {
    let _ = crypto_provider().install_default();
}

/// The server configuration: TLS 1.2 and 1.3, ALPN h2 and http/1.1, server cipher order.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ignore_client_order = true;
    Ok(config)
}

/// Accepts TCP connections and wraps them in TLS. The handshake runs lazily on the
/// connection's own task, so a slow client never holds up `accept`.
pub struct TlsAcceptor<A> {
    inner: A,
    config: Arc<ServerConfig>,
    tls: tokio_rustls::TlsAcceptor,
    /// The configuration for ACME TLS-ALPN-01 validation connections (ALPN `acme-tls/1`).
    challenge: Option<Arc<ServerConfig>>,
    handshake_timeout: Duration,
}

impl<A> TlsAcceptor<A> {
    pub fn new(inner: A, config: Arc<ServerConfig>, handshake_timeout: Duration) -> Self {
        TlsAcceptor {
            inner,
            tls: tokio_rustls::TlsAcceptor::from(config.clone()),
            config,
            challenge: None,
            handshake_timeout,
        }
    }

    /// Answers TLS-ALPN-01 validation connections with `challenge`; every other client gets
    /// the main configuration (whose ALPN list never offers `acme-tls/1`).
    pub fn with_acme_challenge(mut self, challenge: Option<Arc<ServerConfig>>) -> Self {
        self.challenge = challenge;
        self
    }
}

impl<A> Acceptor for TlsAcceptor<A>
where
    A: Acceptor<Io = TcpStream>,
{
    type Io = LazyTls;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (stream, local, remote, _) = self.inner.accept().await?;
        let timeout = self.handshake_timeout;
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out");
        let handshake: Handshake = match &self.challenge {
            None => {
                let accept = self.tls.accept(stream);
                Box::pin(
                    async move { tokio::time::timeout(timeout, accept).await.unwrap_or_else(|_| Err(timed_out())) },
                )
            }
            Some(challenge) => {
                let (main, challenge) = (self.config.clone(), challenge.clone());
                Box::pin(async move {
                    let handshake = async move {
                        let start =
                            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
                        let config =
                            if rustls_acme::is_tls_alpn_challenge(&start.client_hello()) { challenge } else { main };
                        start.into_stream(config).await
                    };
                    tokio::time::timeout(timeout, handshake).await.unwrap_or_else(|_| Err(timed_out()))
                })
            }
        };
        Ok((LazyTls::Handshaking(handshake), local, remote, Scheme::HTTPS))
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<tokio_rustls::server::TlsStream<TcpStream>>> + Send>>;

/// A TLS stream whose handshake completes on first use.
pub enum LazyTls {
    Handshaking(Handshake),
    Ready(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl LazyTls {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self {
                LazyTls::Handshaking(fut) => match fut.as_mut().poll(cx) {
                    Poll::Ready(Ok(stream)) => *self = LazyTls::Ready(Box::new(stream)),
                    Poll::Ready(Err(e)) => {
                        *self = LazyTls::Failed;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                LazyTls::Ready(_) => return Poll::Ready(Ok(())),
                LazyTls::Failed => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "TLS handshake failed")));
                }
            }
        }
    }
}

impl AsyncRead for LazyTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match this {
            LazyTls::Ready(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::InvalidData.into())),
        }
    }
}

impl AsyncWrite for LazyTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        match this {
            LazyTls::Ready(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::InvalidData.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazyTls::Ready(s) => Pin::new(s.as_mut()).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            LazyTls::Ready(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// A served certificate from PEM: the chain (leaf first) and its private key (PKCS#8,
/// Why a certificate or its key cannot be served. `Display` is the line the log, the status
/// page and the start-up error show; the parser's error stays attached as the source.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{name} is not a PEM certificate chain: {source}")]
    Chain {
        name: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(String),
    #[error("not an X.509 certificate: {0}")]
    NotX509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// The leaf of `name` does not parse.
    #[error("{name}: {source}")]
    Leaf {
        name: String,
        #[source]
        source: Box<CertError>,
    },
    #[error("{name} holds no usable private key: {source}")]
    Key {
        name: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{name}: unsupported key: {source}")]
    UnsupportedKey {
        name: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the key in {key} does not belong to the certificate in {chain}")]
    Mismatch {
        key: String,
        chain: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the certificate in {0} has expired")]
    Expired(String),
}

/// PKCS#1 or SEC1), checked to belong together. `chain_name`/`key_name` name the sources in
/// errors (file names, or "the bundle").
pub fn certified_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
    chain_name: &str,
    key_name: &str,
) -> Result<(Arc<rustls::sign::CertifiedKey>, status::CertFacts), CertError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::Chain { name: chain_name.to_string(), source })?;
    let leaf = chain.first().ok_or_else(|| CertError::NoCertificate(chain_name.to_string()))?;
    let facts = status::CertFacts::from_der(leaf)
        .map_err(|e| CertError::Leaf { name: chain_name.to_string(), source: Box::new(e) })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|source| CertError::Key { name: key_name.to_string(), source })?;
    let signing = crate::crypto::sign::tls_signing_key(&key)
        .map_err(|source| CertError::UnsupportedKey { name: key_name.to_string(), source })?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|source| CertError::Mismatch {
        key: key_name.to_string(),
        chain: chain_name.to_string(),
        source,
    })?;
    Ok((Arc::new(certified), facts))
}

/// The SHA-256 fingerprint of a DER certificate, as colon-separated hex.
pub fn fingerprint(der: &[u8]) -> String {
    crate::crypto::sha256(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}
