//! What the proxy passes through, against the real binary (plain HTTP, so raw requests can
//! say exactly what an attacker would): the forwarding and identity headers the upstream
//! sees (HTTP/1.0, HTTP/1.1, h2c), a missing `Host`, `X-Forwarded-For` behind a trusted
//! proxy, upgrades other than a well-formed WebSocket, a client's malformed body, and an
//! upstream's `Set-Cookie` for the gate's own cookies.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::Gate;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The peer the gate trusts as a proxy; tests that play the direct client come from 127.0.0.1.
const PROXY_PEER: &str = "127.0.0.2";
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const METRICS_TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn ws_accept(key: &str) -> String {
    use base64::Engine;
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{WS_GUID}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A raw HTTP/1.1 upstream on loopback. By path:
/// - `/up/force101`: answers 101 whatever was asked (`upgrade:` echoes the request's, else
///   `foo`), then echoes every byte — an upstream that tunnels anything.
/// - `/up/wsbad`: a WebSocket 101 with a wrong `Sec-WebSocket-Accept`, then echoes.
/// - `/up/wsgood`: with `upgrade: websocket`, a correct 101 (setting a gate cookie among
///   others), then echoes; else JSON as below.
/// - `/up/cookies`: sets the gate's cookie names among others.
/// - `/up/hold`: never answers.
/// - anything else: 200 with JSON naming the headers it received.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
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
                    let lines: Vec<(String, String)> = head[1..]
                        .iter()
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let get = |name: &str| lines.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                    let switch = match path.as_str() {
                        "/up/force101" => Some(format!(
                            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {}\r\n\r\n",
                            get("upgrade").unwrap_or_else(|| "foo".into())
                        )),
                        "/up/wsbad" => Some(format!(
                            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n\r\n",
                            ws_accept("AAAAAAAAAAAAAAAAAAAAAA==")
                        )),
                        "/up/wsgood" if get("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) => {
                            Some(format!(
                                "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\nset-cookie: __miauflix_at_ws=forged\r\nset-cookie: ws=1\r\n\r\n",
                                ws_accept(&get("sec-websocket-key").unwrap_or_default())
                            ))
                        }
                        _ => None,
                    };
                    if let Some(reply) = switch {
                        if s.get_mut().write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                        let (mut r, mut w) = s.into_inner().into_split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        return;
                    }
                    if path == "/up/hold" {
                        let mut sink = Vec::new();
                        let _ = s.read_to_end(&mut sink).await;
                        return;
                    }
                    let mut headers = serde_json::Map::new();
                    for (k, v) in &lines {
                        headers.insert(k.clone(), json!(v));
                    }
                    let body = json!({"path": path, "headers": headers}).to_string();
                    let cookies = if path == "/up/cookies" {
                        [
                            "a=1; Path=/",
                            "__miauflix_at_s1=forged; Path=/; HttpOnly",
                            "__MIAUFLIX_RT_s1=forged; Path=/api/auth",
                            "__Host-__miauflix_at_s2=forged; Path=/; Secure",
                            "__secure-__Miauflix_at_s3=forged; Secure",
                            "__miauflix_other=forged",
                            " __miauflix_at_s4 =forged",
                            "__miauflix_at_s5",
                            "b=2",
                            "__Host-kept=3; Path=/; Secure",
                        ]
                        .iter()
                        .map(|c| format!("set-cookie: {c}\r\n"))
                        .collect::<String>()
                    } else {
                        String::new()
                    };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{cookies}\r\n{body}",
                        body.len()
                    );
                    if s.get_mut().write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A plain-HTTP gate with a public route `/up` to `up`, trusting `PROXY_PEER` as a proxy.
fn start(up: SocketAddr) -> (tempfile::TempDir, Gate) {
    start_logging(up, "info")
}

/// Like [`start`], with `MIAUFLIX_LOG` set to `log`.
fn start_logging(up: SocketAddr, log: &str) -> (tempfile::TempDir, Gate) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\nmode = \"off\"\n[http]\ntrusted_proxies = [\"{PROXY_PEER}/32\"]\n\
             [[routes]]\nprefix = \"/up\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\ntimeout_secs = 5\n"
        ),
    )
    .unwrap();
    let gate =
        Gate::start(&dir.path().join("data"), &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_LOG", log)]);
    (dir, gate)
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("json body: {self:?}"))
    }
    /// The headers the echo upstream says it received.
    fn seen(&self) -> Value {
        assert_eq!(self.status, 200, "{self:?} {}", String::from_utf8_lossy(&self.body));
        self.json()["headers"].clone()
    }
}

async fn connect(gate: &Gate, from: Option<&str>) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        sock.bind(SocketAddr::new(ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
    }
    sock.connect(gate.addr).await.unwrap()
}

/// Reads one response head and its body (by `content-length`, chunked, or to EOF) from `s`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut BufReader<S>) -> Raw {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut status_line = String::new();
        s.read_line(&mut status_line).await.unwrap();
        let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if s.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.trim_end().split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let mut body = Vec::new();
        let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
        let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        if status == 101 || status == 204 || status == 304 {
        } else if let Some(len) = len {
            body.resize(len, 0);
            s.read_exact(&mut body).await.unwrap();
        } else if chunked {
            loop {
                let mut size = String::new();
                s.read_line(&mut size).await.unwrap();
                let n = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; n + 2];
                s.read_exact(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            let _ = s.read_to_end(&mut body).await;
        }
        Raw { status, headers, body }
    })
    .await
    .expect("a response within 10 s")
}

/// Writes `request` as it is on a fresh connection (from `from`) and reads the response.
async fn raw(gate: &Gate, from: Option<&str>, request: &str) -> Raw {
    let mut s = BufReader::new(connect(gate, from).await);
    s.get_mut().write_all(request.as_bytes()).await.unwrap();
    read_response(&mut s).await
}

/// A GET of `path` over HTTP/1.1 with `Host: gate.test` and `extra` header lines.
async fn get(gate: &Gate, from: Option<&str>, path: &str, extra: &[&str]) -> Raw {
    let extra: String = extra.iter().map(|h| format!("{h}\r\n")).collect();
    raw(gate, from, &format!("GET {path} HTTP/1.1\r\nhost: gate.test\r\nconnection: close\r\n{extra}\r\n")).await
}

/// Headers a client may send to pass itself off as someone, somewhere or something else.
const SPOOFED: &[&str] = &[
    "x-forwarded-host: evil.example",
    "x-forwarded-proto: https",
    "x-forwarded-for: 198.51.100.66",
    "x-forwarded-prefix: /admin",
    "x-forwarded-port: 8443",
    "x-forwarded-server: evil.example",
    "x-forwarded-uri: /admin",
    "x-forwarded-user: admin",
    "x-forwarded-email: admin@example.com",
    "x-forwarded-groups: admins",
    "x-forwarded-preferred-username: admin",
    "x-auth-request-user: admin",
    "x-auth-request-email: admin@example.com",
    "x-remote-user: admin",
    "x-webauth-user: admin",
    "X-WEBAUTH-GROUPS: admins",
    "x-user: admin",
    "x-email: admin@example.com",
    "x-original-url: /admin",
    "x-rewrite-url: /admin",
    "x-client-ip: 198.51.100.66",
    "true-client-ip: 198.51.100.66",
    "cf-connecting-ip: 198.51.100.66",
    "x_forwarded_prefix: /admin",
    "x_auth_request_user: admin",
    "true_client_ip: 198.51.100.66",
    "x-remote-groups: admins",
    "x-authentik-username: admin",
    "oidc-claim-email: admin@example.com",
    "x-ms-client-principal-name: admin",
    "x-auth-user: admin",
    "x-proxy-user: admin",
    "x-authenticated-user: admin",
];

/// Asserts that no spoofed header reached the upstream except the three the gate sets.
fn assert_no_spoofed(seen: &Value) {
    for line in SPOOFED {
        let name = line.split(':').next().unwrap().to_ascii_lowercase();
        if matches!(name.as_str(), "x-forwarded-host" | "x-forwarded-proto" | "x-forwarded-for") {
            continue;
        }
        assert!(seen.get(&name).is_none(), "{name} reached the upstream: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_the_gates_own_over_http1_and_http2() {
    let up = upstream().await;
    let (_dir, gate) = start(up);

    // HTTP/1.1 with Host: the gate's three X-Forwarded-* and none of the client's claims.
    let seen = get(&gate, None, "/up/a", SPOOFED).await.seen();
    assert_eq!(seen["x-forwarded-host"], "gate.test", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_no_spoofed(&seen);

    // HTTP/1.0 without Host is allowed; the client's X-Forwarded-Host still goes.
    let extra: String = SPOOFED.iter().map(|h| format!("{h}\r\n")).collect();
    let r = raw(&gate, None, &format!("GET /up/old HTTP/1.0\r\n{extra}\r\n")).await;
    let seen = r.seen();
    assert!(seen.get("x-forwarded-host").is_none(), "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_no_spoofed(&seen);

    // HTTP/2 (h2c, prior knowledge): no Host, only :authority — which the gate states.
    let tcp = connect(&gate, None).await;
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get("http://gate.test:8080/up/h2");
    for line in SPOOFED {
        let (k, v) = line.split_once(':').unwrap();
        req = req.header(k.trim(), v.trim());
    }
    let resp = h2.send_request(req.body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let seen = &body["headers"];
    assert_eq!(seen["x-forwarded-host"], "gate.test:8080", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http", "{seen}");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_no_spoofed(seen);
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn http11_without_exactly_one_host_is_a_400() {
    let up = upstream().await;
    let (_dir, gate) = start(up);
    for path in ["/up/x", "/healthz"] {
        for request in [
            format!("GET {path} HTTP/1.1\r\nconnection: close\r\n\r\n"),
            format!("GET {path} HTTP/1.1\r\nx-forwarded-host: evil.example\r\nconnection: close\r\n\r\n"),
            format!("GET {path} HTTP/1.1\r\nhost: a.test\r\nhost: b.test\r\nconnection: close\r\n\r\n"),
        ] {
            let r = raw(&gate, None, &request).await;
            assert_eq!(r.status, 400, "{request:?}: {r:?}");
            assert_eq!(r.header("content-type"), Some("application/problem+json"), "{r:?}");
            assert_eq!(r.json()["status"], 400);
        }
    }
    // With a Host, and over HTTP/1.0 without one, both doors answer.
    assert_eq!(get(&gate, None, "/healthz", &[]).await.status, 200);
    assert_eq!(raw(&gate, None, "GET /healthz HTTP/1.0\r\n\r\n").await.status, 200);
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_behind_a_trusted_proxy_ends_at_the_first_unparsable_hop() {
    let up = upstream().await;
    let (_dir, gate) = start(up);
    let cases: &[(&[&str], &str)] = &[
        // The right-most hop, with a port or bracketed, is the client; the forged one left of it is not.
        (&["x-forwarded-for: 198.51.100.7, 203.0.113.11"], "203.0.113.11"),
        (&["x-forwarded-for: 198.51.100.7, 203.0.113.11:4711"], "203.0.113.11"),
        (&["x-forwarded-for: 198.51.100.7, [2001:db8::1]"], "2001:db8::1"),
        (&["x-forwarded-for: 198.51.100.7, [2001:db8::1]:443"], "2001:db8::1"),
        (&["x-forwarded-for: 198.51.100.7", "x-forwarded-for: 203.0.113.11:1"], "203.0.113.11"),
        // Trusted hops are skipped.
        (&["x-forwarded-for: 198.51.100.7, 127.0.0.2:80"], "198.51.100.7"),
        // A hop that does not parse ends the walk: the trusted peer itself.
        (&["x-forwarded-for: 198.51.100.7, unknown"], PROXY_PEER),
        (&["x-forwarded-for: 198.51.100.7, 203.0.113.11:junk"], PROXY_PEER),
        (&["x-forwarded-for: 198.51.100.7, "], PROXY_PEER),
        (&["forwarded: for=198.51.100.7, for=\"[2001:db8::2]:4711\""], "2001:db8::2"),
        (&["forwarded: for=198.51.100.7, for=203.0.113.12:8080;proto=https"], "203.0.113.12"),
        (&["forwarded: for=198.51.100.7, for=_hidden"], PROXY_PEER),
        (&["forwarded: for=198.51.100.7, for=unknown"], PROXY_PEER),
    ];
    for (headers, want) in cases {
        let seen = get(&gate, Some(PROXY_PEER), "/up/xff", headers).await.seen();
        assert_eq!(seen["x-forwarded-for"], *want, "{headers:?}");
    }
    // From an untrusted peer, none of it counts.
    let seen = get(&gate, None, "/up/xff", &["x-forwarded-for: 203.0.113.11"]).await.seen();
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert!(gate.terminate().success());
}

/// Sends an upgrade request for `path` and returns the response and the connection.
async fn upgrade(gate: &Gate, path: &str, headers: &[&str]) -> (Raw, BufReader<tokio::net::TcpStream>) {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let mut s = BufReader::new(connect(gate, None).await);
    s.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nhost: gate.test\r\n{extra}\r\n").as_bytes()).await.unwrap();
    let r = read_response(&mut s).await;
    (r, s)
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_well_formed_websocket_upgrade_is_tunnelled() {
    let up = upstream().await;
    let (_dir, gate) = start(up);
    let ws = ["connection: Upgrade", "upgrade: websocket", "sec-websocket-version: 13"];
    let key = format!("sec-websocket-key: {WS_KEY}");

    // An upstream that answers 101 to anything: h2c or a made-up protocol is never tunnelled.
    for asks in [
        &["connection: Upgrade, HTTP2-Settings", "upgrade: h2c", "http2-settings: AAMAAABkAAQCAAAAAAIAAAAA"][..],
        &["connection: upgrade", "upgrade: foo"],
        &["connection: upgrade", "upgrade: websocket"],
        &["connection: upgrade", "upgrade: websocket, foo", "sec-websocket-version: 13", key.as_str()],
        &[ws[0], ws[1], ws[2], "sec-websocket-key: c2hvcnQ="],
        &[ws[0], ws[1], "sec-websocket-version: 8", key.as_str()],
    ] {
        let (r, mut s) = upgrade(&gate, "/up/force101", asks).await;
        assert_eq!(r.status, 502, "{asks:?}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        // Nothing is tunnelled: bytes after the answer are not echoed back as a tunnel would.
        let _ = s.get_mut().write_all(b"GET /api/admin/users HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
        assert!(!String::from_utf8_lossy(&rest).contains("GET /api/admin"), "tunnelled: {asks:?}");
    }

    // Asked of an ordinary upstream, a malformed upgrade is forwarded without its upgrade headers.
    for asks in [
        &["connection: upgrade", "upgrade: h2c"][..],
        &[ws[0], ws[1], ws[2], "sec-websocket-key: not base64!"],
        &[ws[0], ws[1], ws[2]],
        // A handshake with a body: its tunnel's place would be held while the body trickles.
        &[ws[0], ws[1], ws[2], key.as_str(), "content-length: 5"],
        &[ws[0], ws[1], ws[2], key.as_str(), "transfer-encoding: chunked"],
    ] {
        let (r, _) = upgrade(&gate, "/up/wsgood", asks).await;
        let seen = r.seen();
        assert!(seen.get("upgrade").is_none(), "{asks:?}: {seen}");
        assert_ne!(seen.get("connection").and_then(Value::as_str).map(str::to_ascii_lowercase), Some("upgrade".into()));
    }

    // A WebSocket 101 with the wrong Sec-WebSocket-Accept: 502, nothing tunnelled.
    let (r, _) = upgrade(&gate, "/up/wsbad", &[ws[0], ws[1], ws[2], &key]).await;
    assert_eq!(r.status, 502, "{r:?}");

    // A well-formed WebSocket handshake answered correctly goes through both ways.
    let (r, mut s) = upgrade(&gate, "/up/wsgood", &[ws[0], "upgrade: WebSocket", ws[2], &key]).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some(ws_accept(WS_KEY).as_str()));
    assert_eq!(r.all("set-cookie"), ["ws=1"], "an upstream's 101 cannot set the gate's cookies either");
    assert!(r.header("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    s.get_mut().write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(&echoed, b"ping");

    // POST and HTTP/1.0 do not upgrade.
    let r = raw(
        &gate,
        None,
        &format!(
            "POST /up/force101 HTTP/1.1\r\nhost: gate.test\r\ncontent-length: 0\r\n{}\r\n{}\r\n{}\r\n{key}\r\n\r\n",
            ws[0], ws[1], ws[2]
        ),
    )
    .await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_client_body_is_the_clients_400_not_a_502() {
    let up = upstream().await;
    // At debug the gate logs how it classified each failure, so the test can wait for them.
    let (_dir, gate) = start_logging(up, "info,miauflix_gate=debug");
    for body in ["zz\r\n", "ffffffffffffffffffff\r\n", "5\r\nabcdefgh\r\n"] {
        let r = raw(
            &gate,
            None,
            &format!("POST /up/hold HTTP/1.1\r\nhost: gate.test\r\ntransfer-encoding: chunked\r\n\r\n{body}"),
        )
        .await;
        assert_eq!(r.status, 400, "{body:?}: {r:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.json()["type"], "urn:miauflix-gate:problem/bad-request");
    }
    // HTTP/2: a body shorter than its content-length.
    let tcp = connect(&gate, None).await;
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("http://gate.test/up/hold")
        .header("content-length", "10")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"abc")))
        .unwrap();
    let resp = h2.send_request(req).await;
    // The h2 layer resets the stream itself (PROTOCOL_ERROR) and drops the request's handling:
    // never a 502 answer, nor an upstream blamed.
    assert_eq!(resp.map(|r| r.status().as_u16()).unwrap_or(400), 400);
    let classified = |log: &str| log.matches("client request body unreadable").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while classified(&gate.log_text()) < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Three chunked ones; the h2 one too when its handling ran before the reset.
    assert!(classified(&gate.log_text()) >= 3, "{}", gate.log_text());
    // The gate is still fine, and never blamed the upstream.
    assert_eq!(get(&gate, None, "/up/after", &[]).await.status, 200);
    assert!(!gate.log_text().contains("upstream unreachable"), "{}", gate.log_text());
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_cannot_set_the_gates_cookies() {
    let up = upstream().await;
    let (_dir, gate) = start(up);
    let r = get(&gate, None, "/up/cookies", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.all("set-cookie"), ["a=1; Path=/", "b=2", "__Host-kept=3; Path=/; Secure"], "{r:?}");
    assert!(gate.terminate().success());
}

/// HTTP/2 streams multiplexed on one client connection (which the connection caps count
/// once) each used to open an upstream socket of their own, so a few connections could use
/// up the gate's descriptors: requests through the shared pool are capped by
/// `http.max_upstream_requests` (503 `upstream-busy` beyond it, nothing queued), their places
/// come back when they end, and an HTTP/1 connection's own upstream connection is not counted.
#[tokio::test(flavor = "multi_thread")]
async fn multiplexed_streams_cannot_hold_more_upstream_sockets_than_the_cap() {
    use http_body_util::BodyExt;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\nmode = \"off\"\n[http]\nmax_upstream_requests = 4\n\
             [[routes]]\nprefix = \"/up\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\ntimeout_secs = 120\n"
        ),
    )
    .unwrap();
    let gate = Gate::start(&dir.path().join("data"), &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    let get = |path: &str| {
        hyper::Request::get(format!("http://gate.test{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // Thirty streams to an upstream that never answers, on one connection.
    let (h2, conn) = h2_conn(&gate).await;
    let mut holds = Vec::new();
    for _ in 0..30 {
        let mut h2 = h2.clone();
        let req = get("/up/hold");
        holds.push(tokio::spawn(async move { h2.send_request(req).await.map(|r| r.status().as_u16()) }));
    }
    // Four of them hold the pool's places; the rest are turned away at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while holds.iter().filter(|h| h.is_finished()).count() < 26 {
        assert!(std::time::Instant::now() < deadline, "the streams over the cap were not turned away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (done, waiting): (Vec<_>, Vec<_>) = holds.into_iter().partition(|h| h.is_finished());
    for h in done {
        assert_eq!(h.await.unwrap().unwrap(), 503, "only the cap's worth wait for the upstream");
    }
    assert_eq!(waiting.len(), 4, "4 streams hold upstream sockets, 26 are refused");
    let holds = waiting;
    let mut h2b = h2.clone();
    let resp = h2b.send_request(get("/up/x")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let problem: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(problem["type"], "urn:miauflix-gate:problem/upstream-busy", "{problem}");
    // An HTTP/1 client connection has its own upstream connection: not counted.
    assert_eq!(get_h1(&gate, "/up/x").await, 200);
    // The client goes away: its streams end and their places come back.
    drop(h2);
    drop(h2b);
    conn.abort();
    for h in holds {
        h.abort();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (mut h2, conn) = h2_conn(&gate).await;
        let status = h2.send_request(get("/up/x")).await.unwrap().status().as_u16();
        conn.abort();
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(std::time::Instant::now() < deadline, "the places of ended streams never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gate.terminate().success());
}

/// An h2c (prior knowledge) connection to the gate, driven by its own task.
async fn h2_conn(
    gate: &Gate,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let (h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    (h2, tokio::spawn(conn))
}

async fn get_h1(gate: &Gate, path: &str) -> u16 {
    get(gate, None, path, &[]).await.status
}

/// A WebSocket handshake for `/up/wsgood` on a new connection from `from`, naming `xff` as the
/// client when it comes through the trusted proxy.
async fn tunnel(gate: &Gate, from: Option<&str>, xff: Option<&str>) -> (Raw, BufReader<tokio::net::TcpStream>) {
    let mut s = BufReader::new(connect(gate, from).await);
    let xff = xff.map(|a| format!("x-forwarded-for: {a}\r\n")).unwrap_or_default();
    let head = format!(
        "GET /up/wsgood HTTP/1.1\r\nhost: gate.test\r\n{xff}connection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: {WS_KEY}\r\n\r\n"
    );
    s.get_mut().write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut s).await;
    (r, s)
}

/// One round trip through an open tunnel.
async fn echoes(s: &mut BufReader<tokio::net::TcpStream>) -> bool {
    if s.get_mut().write_all(b"ping").await.is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await, Ok(Ok(_))) && &back == b"ping"
}

/// Upgraded connections leave the listener's connection caps and idle timeout, so before
/// tunnels had a budget of their own, a few WebSocket connections held the shared pool's
/// places for as long as their client liked and every proxied HTTP/2 request got 503. Now a
/// tunnel takes a tunnel's place (per client address and in total), never the pool's, and a
/// quiet one is closed.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_tunnels_have_their_own_budget_and_cannot_starve_the_pool() {
    use http_body_util::BodyExt;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tls]\nmode = \"off\"\n[http]\nmax_upstream_requests = 2\nmax_tunnels = 5\nmax_tunnels_per_address = 3\n\
             tunnel_idle_timeout_secs = 2\ntrusted_proxies = [\"{PROXY_PEER}/32\"]\n\
             [[routes]]\nprefix = \"/up\"\nupstream = \"http://{up}\"\nmin_role = \"public\"\ntimeout_secs = 5\n"
        ),
    )
    .unwrap();
    let token = dir.path().join("metrics-token");
    std::fs::write(&token, format!("{METRICS_TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let gate = Gate::start(
        &dir.path().join("data"),
        &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_METRICS__TOKEN_FILE", token.to_str().unwrap())],
    );

    // Three tunnels from one address (more than the pool's two places) open and carry bytes.
    let mut mine = Vec::new();
    for _ in 0..3 {
        let (r, mut s) = tunnel(&gate, None, None).await;
        assert_eq!(r.status, 101, "{r:?}");
        assert!(echoes(&mut s).await);
        mine.push(s);
    }
    // A fourth from the same address is turned away with the pool's problem and a retry time.
    let (r, _) = tunnel(&gate, None, None).await;
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(r.json()["type"], "urn:miauflix-gate:problem/upstream-busy");
    // Behind the trusted proxy each client address has its own count, under the total.
    let (r, mut other) = tunnel(&gate, Some(PROXY_PEER), Some("198.51.100.7")).await;
    assert_eq!(r.status, 101, "{r:?}");
    let (r, _other2) = tunnel(&gate, Some(PROXY_PEER), Some("198.51.100.8")).await;
    assert_eq!(r.status, 101, "{r:?}");
    let (r, _) = tunnel(&gate, Some(PROXY_PEER), Some("198.51.100.9")).await;
    assert_eq!(r.status, 503, "the sixth tunnel is over the total of five: {r:?}");

    // With five tunnels open, HTTP/2 streams still have both of the pool's places.
    let (mut h2, conn) = h2_conn(&gate).await;
    for _ in 0..2 {
        let req =
            hyper::Request::get("http://gate.test/up/x").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        let resp = h2.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "tunnels took the pool's places");
        let _ = resp.into_body().collect().await;
    }
    conn.abort();

    // A tunnel kept busy outlives the idle timeout; quiet ones are closed after it.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(echoes(&mut other).await, "a busy tunnel was closed");
    }
    for s in &mut mine {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "an idle tunnel stayed open past the idle timeout");
    }
    // Their places came back: the address can open a tunnel again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (r, mut s) = tunnel(&gate, None, None).await;
        if r.status == 101 {
            assert!(echoes(&mut s).await);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the places of closed tunnels never came back: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = String::from_utf8_lossy(
        &get(&gate, None, "/metrics", &[&format!("authorization: Bearer {METRICS_TOKEN}")]).await.body,
    )
    .into_owned();
    assert!(metrics.contains("proxy_tunnels_refused_total{reason=\"per_address\"} 1"), "{metrics}");
    assert!(metrics.contains("proxy_tunnels_refused_total{reason=\"total\"} 1"), "{metrics}");
    assert!(metrics.contains("proxy_tunnels_idle_closed_total"), "{metrics}");
    assert!(gate.terminate().success());
}
