//! Helpers shared by the integration tests: the real binary on a free port, and a small
//! HTTPS client that trusts exactly the gate's self-signed certificate.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

pub mod app;

pub const BIN: &str = env!("CARGO_BIN_EXE_miauflix-gate");

/// A running gate process; killed on drop.
pub struct Gate {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gate {
    /// Starts the binary with the data dir and env, listening on a free loopback port, and
    /// waits for its "listening" line.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Gate {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MIAUFLIX_DATA_DIR", data_dir)
            .env("MIAUFLIX_LISTEN", "127.0.0.1:0")
            .env("MIAUFLIX_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start gate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("miauflix-gate") && line.contains("listening") && line.contains("addr=") {
                    let addr = line.split("addr=").nth(1).and_then(|s| s.split_whitespace().next()).map(str::to_string);
                    let _ = tx.send(addr);
                }
                log2.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(a)) => a.parse().unwrap_or_else(|_| panic!("bad listen address {a:?}")),
            _ => {
                let _ = child.kill();
                panic!("gate did not start; log:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Gate { child, addr, log }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The first log line that has every one of `parts`, waiting up to 10 s for it (the log
    /// is read from the child's stderr by another thread).
    pub fn wait_for_line(&self, parts: &[&str]) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return Some(line.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "gate did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion with the given args and env; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run gate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`run_cli`], with `input` on standard input.
pub fn run_cli_stdin(args: &[&str], env: &[(&str, &str)], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run gate");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A response as the test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    /// The ALPN protocol the TLS handshake chose.
    pub alpn: Option<Vec<u8>>,
    pub tls_version: Option<rustls::ProtocolVersion>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// A TLS client config that trusts only the given PEM certificate.
pub fn client_config(ca_pem: &Path, versions: &[&'static rustls::SupportedProtocolVersion]) -> rustls::ClientConfig {
    let pem = std::fs::read(ca_pem).expect("read pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pem) {
        roots.add(cert).expect("add root");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Completes a TLS handshake and returns the negotiated ALPN protocol.
pub async fn tls_alpn(
    addr: SocketAddr,
    server_name: &str,
    config: rustls::ClientConfig,
) -> Result<Option<Vec<u8>>, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.alpn_protocol().map(|p| p.to_vec()))
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).map(|c| c.expect("pem")).collect()
}

/// One HTTP/1.1 request over TLS to `addr`, verifying the certificate for `server_name`.
pub async fn https_request(
    addr: SocketAddr,
    server_name: &str,
    config: rustls::ClientConfig,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Reply, String> {
    https_request_with(addr, server_name, config, method, path, body, &[]).await
}

/// Like [`https_request`], with extra headers (empty values are skipped).
pub async fn https_request_with(
    addr: SocketAddr,
    server_name: &str,
    config: rustls::ClientConfig,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, String)],
) -> Result<Reply, String> {
    https_request_from(None, addr, server_name, config, method, path, body, headers).await
}

/// Like [`https_request_with`], from a chosen local address (e.g. 127.0.0.2).
#[allow(clippy::too_many_arguments)]
pub async fn https_request_from(
    local: Option<std::net::IpAddr>,
    addr: SocketAddr,
    server_name: &str,
    config: rustls::ClientConfig,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, String)],
) -> Result<Reply, String> {
    let tcp = match local {
        Some(ip) => {
            let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            sock.bind(SocketAddr::new(ip, 0)).map_err(|e| e.to_string())?;
            sock.connect(addr).await.map_err(|e| e.to_string())?
        }
        None => tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?,
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(|p| p.to_vec());
    let tls_version = conn.protocol_version();
    let mut reply = send_http1(tls, server_name, method, path, body, headers).await?;
    reply.alpn = alpn;
    reply.tls_version = tls_version;
    Ok(reply)
}

/// One plain HTTP/1.1 request (for gates with `tls = off`).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, String)],
) -> Result<Reply, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    send_http1(tcp, "gate.test", method, path, body, headers).await
}

async fn send_http1<S>(
    io: S,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, String)],
) -> Result<Reply, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder().method(method).uri(path).header("host", host);
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    for (name, value) in headers {
        if !value.is_empty() {
            builder = builder.header(*name, value.as_str());
        }
    }
    let req = builder
        .body(Full::new(Bytes::from(body.map(|b| b.to_vec()).unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
    Ok(Reply { status, headers, body, alpn: None, tls_version: None })
}

/// Slowloris: trickles a request head that never ends into `stream`, one byte every 200 ms,
/// for up to 8 s; returns whether the server closed the connection, and after how long.
pub async fn trickle_until_closed<S>(stream: &mut S) -> (bool, Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = b"GET / HTTP/1.1\r\nhost: localhost\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let started = Instant::now();
    for byte in head.iter().cycle() {
        if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
            return (true, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    // The write side may stay open for a moment; the read side tells (an answer such as a
    // 408 may come before the end).
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(1), async {
        while !matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await
    .is_ok();
    (closed, started.elapsed())
}
