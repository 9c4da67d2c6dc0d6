//! Slow and greedy clients against the real binary over TLS: a request body trickled to the
//! gate's own API is cut by `http.body_timeout_secs`, connections over the per-address and
//! total caps are closed at accept (on every listener) and the count is released when they
//! end, an oversized body still lets the client read its 413 (lingering close), and the
//! descriptor limit is raised at start.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Gate, client_config};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// Starts the binary with `toml` as its config file and `env`; returns the temp dir (keep it
/// alive), the gate and its certificate.
fn start_with(toml: &str, env: &[(&str, &str)]) -> (tempfile::TempDir, Gate, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, toml).unwrap();
    let mut all = vec![("MIAUFLIX_CONFIG", cfg.to_str().unwrap())];
    all.extend_from_slice(env);
    let gate = Gate::start(&data, &all);
    (dir, gate, data.join("self-signed.pem"))
}

async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from, 0))?;
    sock.connect(to).await
}

/// A TLS connection from `from`; an error when the gate closes the socket instead (bounded:
/// a gate that neither answers nor closes within 5 s is a failure too).
async fn tls_from(gate: &Gate, pem: &std::path::Path, from: IpAddr) -> Result<Tls, String> {
    let connect = async {
        let tcp = tcp_from(from, gate.addr).await.map_err(|e| e.to_string())?;
        let config = client_config(pem, &[&rustls::version::TLS13]);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), connect).await.expect("the gate neither answered nor closed")
}

async fn keepalive_from(gate: &Gate, pem: &std::path::Path, from: IpAddr) -> Result<Sender, String> {
    let tls = tls_from(gate, pem, from).await?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn healthz(sender: &mut Sender) -> u16 {
    sender.ready().await.unwrap();
    let req = hyper::Request::get("/healthz").header("host", "localhost").body(http_body_util::Empty::new()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    status
}

/// Reads until the gate closes (or 15 s pass); returns what arrived and whether it closed.
async fn read_until_closed<R: AsyncRead + Unpin>(r: &mut R) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Sends `head` then trickles `piece` every 200 ms (for at most 12 s) while reading; returns
/// the answer, whether the gate closed the connection and after how long.
async fn trickle_body<S>(stream: S, head: &str, piece: &'static [u8]) -> (String, bool, Duration)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    w.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        while started.elapsed() < Duration::from_secs(12) {
            if w.write_all(piece).await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Keep the write side open: only the gate may end this connection.
        std::future::pending::<()>().await;
    });
    let (got, closed) = read_until_closed(&mut r).await;
    writer.abort();
    (String::from_utf8_lossy(&got).into_owned(), closed, started.elapsed())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_trickled_to_the_gates_api_is_cut_by_the_body_deadline() {
    // The idle timeout is long and every piece resets it: only the body deadline can act.
    let (_dir, gate, pem) = start_with("[http]\nbody_timeout_secs = 2\nidle_timeout_secs = 60\n", &[]);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let sized = "POST /api/auth/login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                 content-length: 1000\r\n\r\n";
    let chunked = "POST /api/auth/login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                   transfer-encoding: chunked\r\n\r\n";
    let one_chunk = format!("{chunked}3e8\r\n");
    let cases: [(&str, &str, &'static [u8]); 3] = [
        ("Content-Length, a byte at a time", sized, b"a"),
        ("chunked, a chunk at a time", chunked, b"1\r\na\r\n"),
        ("chunked, one chunk trickled", &one_chunk, b"a"),
    ];
    for (what, head, piece) in cases {
        let tls = tls_from(&gate, &pem, lo).await.unwrap();
        let (answer, closed, took) = trickle_body(tls, head, piece).await;
        eprintln!("{what}: answered and closed after {took:?}");
        assert!(closed, "{what}: the trickled body still held the connection after {took:?}");
        assert!(took < Duration::from_secs(8), "{what}: closed only after {took:?}");
        assert!(answer.starts_with("HTTP/1.1 408"), "{what}: expected a 408, got {answer:?}");
        assert!(answer.contains("application/problem+json"), "{what}: {answer:?}");
        assert!(answer.contains("request-timeout"), "{what}: {answer:?}");
    }
    // A body that arrives in time is still read: a wrong login is answered 401.
    let r = common::https_request(
        gate.addr,
        "localhost",
        client_config(&pem, &[&rustls::version::TLS13]),
        "POST",
        "/api/auth/login",
        Some(br#"{"email":"nobody@example.com","password":"a-very-long-passphrase"}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_caps_are_closed_at_accept_and_released_when_they_end() {
    let redirect = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_dir, gate, pem) = start_with(
        "[http]\nmax_connections = 12\nmax_connections_per_ip = 8\nidle_timeout_secs = 60\n",
        &[("MIAUFLIX_HTTP_LISTEN", &redirect.to_string())],
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();

    // Eight from one address: all served.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut c = keepalive_from(&gate, &pem, ip("127.0.0.1")).await.unwrap();
        assert_eq!(healthz(&mut c).await, 200);
        held.push(c);
    }
    // More from that address are closed before the handshake, on both listeners.
    for _ in 0..4 {
        assert!(tls_from(&gate, &pem, ip("127.0.0.1")).await.is_err(), "a 9th connection from one address");
    }
    let mut plain = tcp_from(ip("127.0.0.1"), redirect).await.unwrap();
    let _ = plain.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    let (got, closed) = read_until_closed(&mut plain).await;
    assert!(
        closed && got.is_empty(),
        "the redirect listener counts the same address: {:?}",
        String::from_utf8_lossy(&got)
    );
    // The first eight still work.
    for c in &mut held {
        assert_eq!(healthz(c).await, 200);
    }
    // Another address has its own count, up to the total of 12.
    let mut others = Vec::new();
    for _ in 0..4 {
        let mut c = keepalive_from(&gate, &pem, ip("127.0.0.2")).await.unwrap();
        assert_eq!(healthz(&mut c).await, 200);
        others.push(c);
    }
    for _ in 0..3 {
        assert!(tls_from(&gate, &pem, ip("127.0.0.3")).await.is_err(), "a 13th connection in all");
    }
    // Closing releases the counts: new connections are served again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        if let Ok(c) = keepalive_from(&gate, &pem, ip("127.0.0.1")).await {
            break c;
        }
        assert!(Instant::now() < deadline, "closed connections were never released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(healthz(&mut again).await, 200);
    let mut third = keepalive_from(&gate, &pem, ip("127.0.0.3")).await.unwrap();
    assert_eq!(healthz(&mut third).await, 200);
    // Refusals are counted, and logged at most once per address and minute.
    let refusals = gate.log_text().lines().filter(|l| l.contains("over the connection cap")).count();
    assert!((1..=2).contains(&refusals), "{refusals} refusal log lines:\n{}", gate.log_text());
    drop(others);
}

/// Sends `head` and `body` while reading the answer at the same time; returns the answer,
/// whether the gate closed the connection cleanly (TLS close_notify, not a reset or a bare
/// EOF) and whether the whole body could be written.
async fn send_while_reading(stream: Tls, head: String, body: Vec<u8>) -> (String, bool, bool) {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        if w.write_all(head.as_bytes()).await.is_err() {
            return (false, w);
        }
        for chunk in body.chunks(16 * 1024) {
            if w.write_all(chunk).await.is_err() {
                return (false, w);
            }
        }
        (w.flush().await.is_ok(), w)
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let clean = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the connection did not end");
    let (wrote, _w) = tokio::time::timeout(Duration::from_secs(15), writer).await.expect("writer stuck").unwrap();
    (String::from_utf8_lossy(&got).into_owned(), clean, wrote)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_body_still_lets_the_client_read_its_413() {
    let (_dir, gate, pem) =
        start_with("[http]\nmax_body_bytes = 65536\n[rate_limits.auth]\nper_minute = 1000\nburst = 1000\n", &[]);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    const BODY: usize = 4 * 65536;
    let sized = format!(
        "POST /api/auth/login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {BODY}\r\n\r\n"
    );
    let chunked = "POST /api/auth/login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                   transfer-encoding: chunked\r\n\r\n"
        .to_string();
    let mut framed = Vec::new();
    for piece in vec![b'a'; BODY].chunks(8192) {
        framed.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        framed.extend_from_slice(piece);
        framed.extend_from_slice(b"\r\n");
    }
    framed.extend_from_slice(b"0\r\n\r\n");
    for (what, head, body) in [("Content-Length", sized, vec![b'a'; BODY]), ("chunked", chunked, framed)] {
        for attempt in 0..10 {
            let tls = tls_from(&gate, &pem, lo).await.unwrap();
            let (answer, clean, wrote) = send_while_reading(tls, head.clone(), body.clone()).await;
            // The gate reads the rest of the body away after answering, then closes cleanly:
            // a close with the body unread resets the connection, and the reset can destroy
            // the answer before the client reads it.
            assert!(wrote, "{what} #{attempt}: the body could not be sent in full");
            assert!(clean, "{what} #{attempt}: the connection ended without close_notify: {answer:?}");
            assert!(answer.starts_with("HTTP/1.1 413"), "{what} #{attempt}: expected a 413, got {answer:?}");
            assert!(answer.contains("application/problem+json"), "{what} #{attempt}: {answer:?}");
            assert!(answer.contains("payload-too-large"), "{what} #{attempt}: {answer:?}");
        }
    }
}

#[test]
fn the_descriptor_limit_is_raised_to_the_hard_limit_at_start() {
    use std::io::BufRead;
    // systemd's default soft limit is 1024; here the gate starts with 512 of a hard 4096.
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "ulimit -S -n 512 && ulimit -H -n 4096 && exec \"$0\"", common::BIN])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MIAUFLIX_DATA_DIR", dir.path().join("data"))
        .env("MIAUFLIX_LISTEN", "127.0.0.1:0")
        .env("MIAUFLIX_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok).take(200) {
        let done = line.contains("listening");
        log.push(line);
        if done {
            break;
        }
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let files = limits.lines().find(|l| l.starts_with("Max open files")).expect("limits").to_string();
    let nums: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums, ["4096", "4096"], "soft limit raised to the hard one: {files}");
    // The default cap (4096 connections, up to two descriptors each) does not fit in 4096.
    let log = log.join("\n");
    assert!(log.contains("RLIMIT_NOFILE"), "no warning about the descriptor limit:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_trickled_over_http2_or_to_a_proxied_route_is_bounded_too() {
    use http_body_util::BodyExt;
    // An upstream that reads whatever comes and never answers (one waiting for the whole body).
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while !matches!(s.read(&mut buf).await, Ok(0) | Err(_)) {}
            });
        }
    });
    let (_dir, gate, pem) = start_with(
        &format!(
            "[http]\nbody_timeout_secs = 2\nidle_timeout_secs = 60\n[[routes]]\nprefix = \"/up\"\n\
             upstream = \"http://{up}\"\nmin_role = \"public\"\ntimeout_secs = 2\n"
        ),
        &[],
    );
    let lo: IpAddr = "127.0.0.1".parse().unwrap();

    // HTTP/2: a request body stream that yields a byte every 200 ms, for ever.
    let tcp = tcp_from(lo, gate.addr).await.unwrap();
    let mut config = client_config(&pem, &[&rustls::version::TLS13]);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let trickle = Box::pin(futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some((Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(b"a"))), ()))
    }));
    let req = hyper::Request::post("https://localhost/api/auth/login")
        .header("content-type", "application/json")
        .body(http_body_util::StreamBody::new(trickle))
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), h2.send_request(req))
        .await
        .expect("an HTTP/2 body trickle was not cut")
        .unwrap();
    assert_eq!(resp.status(), 408, "HTTP/2 trickle");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("request-timeout"));
    eprintln!("HTTP/2: answered after {:?}", started.elapsed());

    // A proxied route streams its body to the upstream (no whole-body deadline, so large
    // uploads work); the wait for the upstream's answer is bounded by the route's timeout.
    let tls = tls_from(&gate, &pem, lo).await.unwrap();
    let head = "POST /up/upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100000\r\n\r\n";
    let (answer, closed, took) = trickle_body(tls, head, b"a").await;
    eprintln!("proxied: answered and closed after {took:?}");
    assert!(closed && took < Duration::from_secs(8), "the proxied trickle held the connection for {took:?}");
    assert!(answer.starts_with("HTTP/1.1 504"), "expected the route's 504, got {answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_caps_hold_on_a_plain_listener_with_tls_off() {
    let (_dir, gate, _) = start_with("[tls]\nmode = \"off\"\n[http]\nmax_connections_per_ip = 2\n", &[]);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = tcp_from(lo, gate.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        assert_eq!(healthz(&mut sender).await, 200);
        held.push(sender);
    }
    let mut extra = tcp_from(lo, gate.addr).await.unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    let (got, closed) = read_until_closed(&mut extra).await;
    assert!(
        closed && got.is_empty(),
        "a third connection from one address was served: {:?}",
        String::from_utf8_lossy(&got)
    );
    for c in &mut held {
        assert_eq!(healthz(c).await, 200);
    }
}
