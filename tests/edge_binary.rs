//! The edge against the real binary over TLS: lockout across client addresses, trusted
//! proxies, HSTS, bounded memory while 100 MiB stream through the proxy, and the main
//! listener's own proxy path (`http::serve`): header set, one upstream connection per HTTP/1
//! client connection, redial, HTTP/2 streams, upgrades, idle timeout, graceful shutdown.

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

/// Starts the binary with `toml` as its config file; returns the temp dir (keep it alive), the
/// gate and its data dir.
fn start_with(toml: &str) -> (tempfile::TempDir, Gate, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, toml).unwrap();
    let gate = Gate::start(&data, &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    (dir, gate, data)
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

/// A loopback upstream that runs `serve` on every connection it accepts.
async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, peer) = listener.accept().await.unwrap();
            tokio::spawn(serve(s, peer));
        }
    });
    up
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_download_streams_through_with_bounded_memory() {
    // A plain upstream on loopback that sends 100 MiB.
    let up = raw_upstream(|mut s, _| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let total: usize = 100 * 1024 * 1024;
        s.write_all(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {total}\r\ncontent-type: application/octet-stream\r\n\r\n")
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
    })
    .await;
    let (_dir, gate, data) = start_with(&format!(
        "[[routes]]\nprefix = \"/media\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\ntimeout_secs = 60\n"
    ));
    let before = vm_hwm_kib(gate.child.id());
    let r = call(&gate, &data.join("self-signed.pem"), None, "GET", "/media/movie.mkv", None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100 * 1024 * 1024);
    let after = vm_hwm_kib(gate.child.id());
    println!("gate peak RSS: {before} KiB before, {after} KiB after a 100 MiB download");
    assert!(after < before + 48 * 1024, "the gate must stream, not buffer: peak RSS grew from {before} to {after} KiB");
    assert!(gate.terminate().success());
}

/// An upstream on loopback speaking raw HTTP/1.1 with keep-alive: answers every request with
/// JSON naming the headers it received and the client port the request came from (so a test
/// sees which upstream connection carried it); `/svc/close` answers with `connection: close`
/// and closes; a WebSocket upgrade gets its 101 and then every byte echoed back.
async fn recording_upstream() -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    raw_upstream(|s, peer| async move {
                let mut s = BufReader::new(s);
                loop {
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_string());
                    }
                    let path = head[0].split(' ').nth(1).unwrap_or("").to_string();
                    let headers: serde_json::Map<String, serde_json::Value> = head[1..]
                        .iter()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), json!(v.trim())))
                        .collect();
                    if headers.get("upgrade").is_some_and(|u| u == "websocket") {
                        // The RFC 6455 answer to the key; the gate tunnels nothing else.
                        use base64::Engine;
                        let key = headers.get("sec-websocket-key").and_then(|k| k.as_str()).unwrap_or("");
                        let digest = aws_lc_rs::digest::digest(
                            &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
                            format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
                        );
                        let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
                        let _ = s
                            .get_mut()
                            .write_all(format!("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {accept}\r\n\r\n").as_bytes())
                            .await;
                        let (mut r, mut w) = s.into_inner().into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        return;
                    }
                    let close = path == "/svc/close";
                    let body = json!({"path": path, "port": peer.port(), "headers": headers}).to_string();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-miauflix-user: forged\r\nkeep-alive: timeout=5\r\n{}\r\n{body}",
                        body.len(),
                        if close { "connection: close\r\n" } else { "" }
                    );
                    if s.get_mut().write_all(reply.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
    })
    .await
}

/// One TLS connection to the gate with an HTTP/1.1 client on it (kept open across requests).
async fn keepalive_client(
    gate: &Gate,
    pem: &std::path::Path,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config(pem, &v(&[&rustls::version::TLS13]))));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

async fn get_json(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, hyper::HeaderMap, serde_json::Value) {
    use http_body_util::BodyExt;
    sender.ready().await.unwrap();
    let mut req = hyper::Request::get(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender.send_request(req.body(http_body_util::Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status.as_u16(), parts.headers, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_listener_proxies_with_one_upstream_connection_per_client_connection() {
    let up = recording_upstream().await;
    let (_dir, gate, data) = start_with(&format!(
        "[[routes]]\nprefix = \"/svc\"\nupstream = \"http://{up}\"\nmin_role = \"user\"\nrate_class = \"api\"\n"
    ));
    let pem = data.join("self-signed.pem");
    setup(&gate, &data).await;
    let r = call(
        &gate,
        &pem,
        None,
        "POST",
        "/api/auth/token",
        Some(json!({"email": "root@example.com", "password": PW})),
        &[],
    )
    .await;
    let bearer = format!("Bearer {}", r.json()["access_token"].as_str().unwrap());

    // Without credentials: 401 problem from the gate, with the security headers.
    let mut a = keepalive_client(&gate, &pem).await;
    let (status, headers, body) = get_json(&mut a, "/svc/x", &[]).await;
    assert_eq!(status, 401);
    assert_eq!(body["type"], "urn:miauflix-gate:problem/unauthorized");
    assert_eq!(headers.get("x-frame-options").unwrap(), "DENY");

    // Five requests on one client connection: identity from the gate, spoofed identity and
    // hop-by-hop headers gone both ways, the full header set, one upstream connection.
    let spoof = [
        ("authorization", bearer.as_str()),
        ("x-miauflix-user", "admin-by-claim"),
        ("remote-user", "admin-by-claim"),
        ("connection", "keep-alive, x-secret-hop"),
        ("x-secret-hop", "drop me"),
    ];
    let mut ports = Vec::new();
    for i in 0..5 {
        let (status, headers, body) = get_json(&mut a, &format!("/svc/item/{i}?q=1"), &spoof).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["path"], format!("/svc/item/{i}?q=1"));
        let h = &body["headers"];
        assert_eq!(h["x-miauflix-email"], "root@example.com");
        assert_eq!(h["x-miauflix-role"], "admin");
        assert_ne!(h["x-miauflix-user"], "admin-by-claim");
        assert!(h.get("remote-user").is_none() && h.get("x-secret-hop").is_none(), "{h}");
        assert!(h.get("authorization").is_none(), "credentials are not forwarded: {h}");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["host"], up.to_string());
        assert!(headers.get("x-miauflix-user").is_none() && headers.get("keep-alive").is_none());
        for name in [
            "strict-transport-security",
            "content-security-policy",
            "x-content-type-options",
            "referrer-policy",
            "permissions-policy",
            "cross-origin-opener-policy",
            "x-request-id",
            "ratelimit",
            "ratelimit-policy",
        ] {
            assert!(headers.contains_key(name), "{name} missing on a proxied response");
        }
        assert!(headers.get("server").is_none());
        ports.push(body["port"].as_u64().unwrap());
    }
    assert!(ports.iter().all(|p| *p == ports[0]), "one upstream connection per client connection: {ports:?}");

    // A second client connection gets its own upstream connection.
    let mut b = keepalive_client(&gate, &pem).await;
    let (_, _, body) = get_json(&mut b, "/svc/other", &[("authorization", &bearer)]).await;
    assert_ne!(body["port"].as_u64().unwrap(), ports[0]);

    // HTTP/2: concurrent streams on one client connection go through the shared pool, each
    // with the gate's identity headers.
    {
        use http_body_util::BodyExt;
        let mut config = client_config(&pem, &v(&[&rustls::version::TLS13]));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (h2, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let streams = (0..4).map(|i| {
            let mut h2 = h2.clone();
            let bearer = bearer.clone();
            async move {
                let req = hyper::Request::get(format!("https://localhost/svc/h2/{i}"))
                    .header("authorization", bearer)
                    .header("x-miauflix-role", "forged")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = h2.send_request(req).await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, serde_json::from_slice::<serde_json::Value>(&body).unwrap())
            }
        });
        for (i, (status, body)) in futures_util::future::join_all(streams).await.into_iter().enumerate() {
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["path"], format!("/svc/h2/{i}"));
            assert_eq!(body["headers"]["x-miauflix-role"], "admin");
            assert_eq!(body["headers"]["x-miauflix-email"], "root@example.com");
        }
    }

    // The upstream closes its connection: the next request on the same client connection
    // dials again and succeeds.
    let (status, _, _) = get_json(&mut a, "/svc/close", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let (status, _, body) = get_json(&mut a, "/svc/after", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert_ne!(body["port"].as_u64().unwrap(), ports[0]);

    // A WebSocket-style upgrade passes through the listener both ways.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = keepalive_client(&gate, &pem).await;
    c.ready().await.unwrap();
    let req = hyper::Request::get("/svc/ws")
        .header("host", "localhost")
        .header("authorization", &bearer)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    io.write_all(b"ping through the gate").await.unwrap();
    let mut echoed = [0u8; 21];
    tokio::time::timeout(std::time::Duration::from_secs(5), io.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping through the gate");
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_close_and_shutdown_lets_requests_in_flight_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Upstreams that take 1.5 s, and 2.6 s (longer than two idle periods), to answer.
    let delayed = |ms: u64, body: &'static str| {
        raw_upstream(move |mut s, _| async move {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            let _ = s.write_all(head.as_bytes()).await;
        })
    };
    let up = delayed(1500, "slow").await;
    let slower = delayed(2600, "slower").await;
    // One that sends 64 MiB.
    const BIG: usize = 64 * 1024 * 1024;
    let big = raw_upstream(|mut s, _| async move {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await;
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..BIG / chunk.len() {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
        }
    })
    .await;
    let route = |prefix: &str, up: SocketAddr| {
        format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\ntimeout_secs = 10\n"
        )
    };
    let (_dir, gate, data) = start_with(&format!(
        "[http]\nidle_timeout_secs = 1\nshutdown_grace_secs = 10\n{}{}{}",
        route("/slow", up),
        route("/slower", slower),
        route("/big", big)
    ));
    let pem = data.join("self-signed.pem");

    // A keep-alive connection that says nothing is closed by the gate after about a second.
    let mut a = keepalive_client(&gate, &pem).await;
    let (status, _, _) = get_json(&mut a, "/healthz", &[]).await;
    assert_eq!(status, 200);
    let started = std::time::Instant::now();
    while !a.is_closed() {
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "the idle connection was not closed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let idle = started.elapsed();
    assert!(idle >= std::time::Duration::from_millis(900), "closed too early: {idle:?}");

    // Slowloris: a request head trickled a byte every 200 ms keeps the connection busy but
    // never completes; the gate closes it once the head is overdue (idle timeout, 1 s here).
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client_config(&pem, &v(&[&rustls::version::TLS13]))));
    let mut slow = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    let (closed, took) = common::trickle_until_closed(&mut slow).await;
    assert!(closed, "a trickled request head must not hold a connection ({took:?})");
    assert!(took < std::time::Duration::from_secs(5), "closed only after {took:?}");

    // A response head that takes longer than two idle periods (within the route's timeout)
    // is waited for: the idle timeout does not cut a request in flight.
    let mut c = keepalive_client(&gate, &pem).await;
    let (status, _, _) = get_json(&mut c, "/slower/x", &[]).await;
    assert_eq!(status, 200, "a slow head within the route's timeout is waited for");

    // A client that stops reading a large response: the gate cuts the connection once the
    // response has made no progress for another idle period (nginx's `send_timeout`).
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let mut stalled =
        connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    stalled.write_all(b"GET /big/x HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    stalled.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let drained = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection must end");
    assert!(got < BIG, "the stalled response was cut ({got} bytes of {BIG} arrived)");

    // SIGTERM while a proxied request waits on the upstream: the request still completes.
    let mut b = keepalive_client(&gate, &pem).await;
    let in_flight = tokio::spawn(async move {
        use http_body_util::BodyExt;
        b.ready().await.unwrap();
        let req =
            hyper::Request::get("/slow/x").header("host", "localhost").body(http_body_util::Empty::new()).unwrap();
        let resp = b.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || gate.terminate()).await.unwrap();
    let (code, body) = in_flight.await.unwrap();
    assert_eq!((code, &body[..]), (200, &b"slow"[..]));
    assert!(status.success());
}
