//! `just bench-auth`: login, refresh and authenticated-request throughput of the real
//! binary over TLS on loopback, and authenticated latency during a wrong-password flood.
//! Prints figures; asserts nothing about timing. Bounded: a few seconds per phase.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Gate, client_config};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

const PW: &str = "bench-password-long-enough";
const PHASE: Duration = Duration::from_secs(8);

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr, pem: &Path) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let cfg = client_config(pem, &[&rustls::version::TLS13]);
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    async fn call(&mut self, method: &str, path: &str, body: Option<Value>, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut b = hyper::Request::builder().method(method).uri(path).header("host", "localhost");
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(body.map(|v| v.to_string()).unwrap_or_default()))).unwrap();
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn wrk_available() -> bool {
    Command::new("sh").arg("-c").arg("command -v wrk").output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs wrk against GET /api/auth/session with the session's headers; returns its report.
fn wrk_session(addr: SocketAddr, sid: &str, cookie: &str, secs: u64) -> String {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{secs}s"), "--latency"])
        .args(["-H", &format!("X-Session-Id: {sid}"), "-H", &format!("Cookie: {cookie}")])
        .arg(format!("https://{addr}/api/auth/session"))
        .output()
        .expect("run wrk");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wrk_summary(report: &str) -> String {
    let pick = |prefix: &str| {
        report
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    format!(
        "{} | p50 {} | p99 {} | {}",
        pick("Requests/sec"),
        pick("50%"),
        pick("99%"),
        pick("Non-2xx").if_empty("all 2xx")
    )
}

trait IfEmpty {
    fn if_empty(self, other: &str) -> String;
}
impl IfEmpty for String {
    fn if_empty(self, other: &str) -> String {
        if self.is_empty() { other.to_string() } else { self }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gate = Gate::start(
        &data,
        &[
            ("MIAUFLIX_LOG", "warn,miauflix_gate::server=info"),
            ("MIAUFLIX_AUTH__MAX_SESSIONS_PER_USER", "100"),
            // The benchmark measures the auth path, not the rate limiter in front of it.
            ("MIAUFLIX_RATE_LIMITS__AUTH__PER_MINUTE", "100000000"),
            ("MIAUFLIX_RATE_LIMITS__AUTH__BURST", "10000000"),
            ("MIAUFLIX_RATE_LIMITS__API__PER_MINUTE", "100000000"),
            ("MIAUFLIX_RATE_LIMITS__API__BURST", "10000000"),
            ("MIAUFLIX_RATE_LIMITS__GLOBAL__PER_MINUTE", "100000000"),
            ("MIAUFLIX_RATE_LIMITS__GLOBAL__BURST", "10000000"),
        ],
    );
    let pem = data.join("self-signed.pem");
    let addr = gate.addr;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    println!("miauflix-gate auth benchmark — {cores} cores, gate at {addr}, TLS 1.3, keep-alive connections");

    let mut c = Conn::open(addr, &pem).await;
    let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let (s, _) = c
        .call(
            "POST",
            "/api/auth/setup",
            Some(json!({"email": "bench@example.com", "password": PW, "setupToken": token.trim()})),
            &[],
        )
        .await;
    assert_eq!(s, 201);
    let login = json!({"email": "bench@example.com", "password": PW});

    // One hash's time: sequential logins.
    let mut one = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let (s, _) = c.call("POST", "/api/auth/token", Some(login.clone()), &[]).await;
        assert_eq!(s, 200);
        one.push(t.elapsed());
    }
    one.sort();
    let hash_time = one[2];
    println!("single login latency (≈ one argon2id hash, m=19456 t=2 p=1): {:.1} ms", hash_time.as_secs_f64() * 1000.0);

    // Logins per second.
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cores * 2 {
        let (done, pem, login) = (done.clone(), pem.clone(), login.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, &pem).await;
            while start.elapsed() < PHASE {
                let (s, _) = c.call("POST", "/api/auth/token", Some(login.clone()), &[]).await;
                if s == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let logins = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("logins/s: {logins:.1} (cores ÷ hash time = {:.1})", cores as f64 / hash_time.as_secs_f64());

    // Refreshes per second: each worker follows its own token chain.
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // The sessions are opened one after another: parallel sign-ins of one account would
    // meet the lockout's reservations for checks in flight.
    let mut chains = Vec::new();
    for _ in 0..8 {
        let (s, b) = c.call("POST", "/api/auth/token", Some(login.clone()), &[]).await;
        assert_eq!(s, 200, "{b}");
        chains.push(b["refresh_token"].as_str().unwrap().to_string());
    }
    let start = Instant::now();
    for mut refresh in chains {
        let (done, pem) = (done.clone(), pem.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, &pem).await;
            let begin = Instant::now();
            while begin.elapsed() < PHASE {
                let (s, b) =
                    c.call("POST", "/api/auth/token/refresh", Some(json!({"refresh_token": refresh})), &[]).await;
                assert_eq!(s, 200, "{b}");
                refresh = b["refresh_token"].as_str().unwrap().to_string();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "refreshes/s: {:.1} (8 clients, each rotating its own token; one durable commit per batch)",
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    );

    // Authenticated GET /api/auth/session.
    let (sid, cookie) = {
        let mut c = Conn::open(addr, &pem).await;
        let req = hyper::Request::builder()
            .method("POST")
            .uri("/api/auth/login")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(login.to_string())))
            .unwrap();
        c.sender.ready().await.unwrap();
        let resp = c.sender.send_request(req).await.unwrap();
        let cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        (body["session"].as_str().unwrap().to_string(), cookie)
    };
    let use_wrk = wrk_available();
    if use_wrk {
        println!("GET /api/auth/session (wrk -t2 -c32 8s): {}", wrk_summary(&wrk_session(addr, &sid, &cookie, 8)));
    } else {
        println!("wrk not found (just bench-auth installs it); measuring with the built-in client");
    }
    let measure = |secs: Duration| {
        let (pem, sid, cookie) = (pem.clone(), sid.clone(), cookie.clone());
        async move {
            let mut tasks = Vec::new();
            let start = Instant::now();
            for _ in 0..16 {
                let (pem, sid, cookie) = (pem.clone(), sid.clone(), cookie.clone());
                tasks.push(tokio::spawn(async move {
                    let mut c = Conn::open(addr, &pem).await;
                    let mut lat = Vec::new();
                    while start.elapsed() < secs {
                        let t = Instant::now();
                        let (s, _) = c
                            .call("GET", "/api/auth/session", None, &[("x-session-id", &sid), ("cookie", &cookie)])
                            .await;
                        assert_eq!(s, 200);
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all.sort();
            (all.len() as f64 / start.elapsed().as_secs_f64(), pct(&all, 0.5), pct(&all, 0.99))
        }
    };
    let (rps, p50, p99) = measure(PHASE).await;
    println!(
        "GET /api/auth/session (built-in client, 16 conns): {rps:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );

    // The same while 200 clients hammer login with wrong passwords.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for _ in 0..200 {
        let (stop, failed, pem) = (stop.clone(), failed.clone(), pem.clone());
        flood.push(tokio::spawn(async move {
            let mut c = Conn::open(addr, &pem).await;
            while !stop.load(Ordering::Relaxed) {
                let (s, _) = c
                    .call(
                        "POST",
                        "/api/auth/login",
                        Some(json!({"email": "bench@example.com", "password": "wrong-password-123"})),
                        &[],
                    )
                    .await;
                if s == 401 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    if use_wrk {
        println!("under flood, GET /api/auth/session (wrk): {}", wrk_summary(&wrk_session(addr, &sid, &cookie, 8)));
    }
    let (rps, p50, p99) = measure(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    println!(
        "under a 200-client wrong-password flood: GET /api/auth/session {rps:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; {} failed logins answered",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        failed.load(Ordering::Relaxed)
    );
    drop(gate);
}
