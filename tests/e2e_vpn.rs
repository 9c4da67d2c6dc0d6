//! The WireGuard supervisor end to end (feature `e2e`, root): the real gate binary supervises
//! a real `wireguard-go` tunnel in network namespaces, following
//! ../shared/notes/wireguard-testing.md.
//!
//! The outer test re-runs this binary under `unshare --mount --net --propagation private`
//! with a tmpfs on /run, so no namespace, UAPI socket, nftables table or policy rule outlives
//! it. Inside, the test's own network namespace is the "client": the gate runs there. Two
//! "server" namespaces (`srv1`, `srv2`), each joined to the client by a veth, each hold a
//! WireGuard server (own key) and the same "public" address 203.0.113.10 with a TCP service
//! that records the caller's address. The client's default route goes through srv1's veth:
//! that is the leak path. A connection from the torrent uid that arrives from 10.66.0.2 went
//! through the tunnel; one from 198.51.10x.2 leaked.
#![cfg(feature = "e2e")]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gate, http_request, run_cli, run_cli_stdin};
use serde_json::{Value, json};

const INNER: &str = "MIAUFLIX_VPN_E2E_INNER";
const TORRENT_UID: &str = "1500";
const PUBLIC: &str = "203.0.113.10";
const TUNNEL_ADDR: &str = "10.66.0.2";
const ADMIN: &str = "admin@example.com";
const PW: &str = "a-very-long-passphrase";

fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// One lab at a time: both use the same addresses inside their own namespaces, but their
/// health checks have time limits, and two at once on a small machine only adds noise.
static SERIAL: Mutex<()> = Mutex::new(());

/// Re-runs the ignored test `inner` in its own mount and network namespaces.
fn run_in_namespaces(inner: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (tool, pkg) in [
        ("unshare", "util-linux"),
        ("setpriv", "util-linux"),
        ("ip", "iproute2"),
        ("wg", "wireguard-tools"),
        ("wireguard-go", "wireguard-go"),
        ("nft", "nftables"),
        ("timeout", "coreutils"),
        ("bash", "bash"),
    ] {
        assert!(have(tool), "e2e_vpn needs `{tool}`: apt-get install -y {pkg}");
    }
    let uid = Command::new("id").arg("-u").output().expect("run id");
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "0", "e2e_vpn must run as root (namespaces, nftables)");
    assert!(Path::new("/dev/net/tun").exists(), "e2e_vpn needs /dev/net/tun for wireguard-go");
    let status = Command::new("unshare")
        .args(["--mount", "--net", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", inner, "--ignored", "--nocapture", "--test-threads=1"])
        .env(INNER, "1")
        .status()
        .expect("run unshare");
    assert!(status.success(), "the VPN lab {inner} failed (see its output above)");
}

#[test]
fn vpn_supervisor_in_network_namespaces() {
    run_in_namespaces("inner_vpn_lab");
}

#[test]
fn vpn_scope_all_in_network_namespaces() {
    run_in_namespaces("inner_vpn_lab_scope_all");
}

#[test]
fn vpn_nordvpn_list_in_network_namespaces() {
    run_in_namespaces("inner_vpn_lab_nordvpn");
}

fn sh(script: &str) -> String {
    let out = Command::new("bash").args(["-euo", "pipefail", "-c", script]).output().expect("bash");
    assert!(
        out.status.success(),
        "`{script}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills what the lab started, even when an assertion fails half-way.
struct Lab {
    servers: Vec<Child>,
    client_if: &'static str,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("pkill").args(["-KILL", "-f", &format!("wireguard-go -f {}", self.client_if)]).status();
    }
}

/// The public service of one server namespace: records (namespace, caller) and answers with
/// the caller's address. Runs on a thread that has entered that namespace.
fn public_service(ns: &'static str, seen: Arc<Mutex<Vec<(&'static str, IpAddr)>>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let listener = TcpListener::bind((PUBLIC, 8080)).expect("bind public service");
        tx.send(()).unwrap();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let Ok(peer) = s.peer_addr() else { continue };
            seen.lock().unwrap().push((ns, peer.ip()));
            let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes());
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("public service started");
}

/// A plain upstream for the `requires_vpn` route, in the client namespace.
fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\ntorrent");
        }
    });
    addr
}

/// A connection from the torrent engine's uid to the public service; the address the
/// service saw, or `None` when nothing got through.
fn torrent_connect() -> Option<String> {
    connect_as(Some(TORRENT_UID))
}

/// The same from `uid`, or from root (the test itself) with `None`.
fn connect_as(uid: Option<&str>) -> Option<String> {
    let mut cmd = Command::new("timeout");
    cmd.arg("3");
    if let Some(uid) = uid {
        cmd.args(["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--"]);
    }
    let out = cmd
        .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{PUBLIC}/8080 && head -n1 <&3")])
        .stderr(Stdio::null())
        .output()
        .expect("run setpriv");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn leaks(seen: &Mutex<Vec<(&'static str, IpAddr)>>) -> usize {
    seen.lock().unwrap().iter().filter(|(_, ip)| ip.to_string().starts_with("198.51.10")).count()
}

struct Api {
    addr: SocketAddr,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        let r = http_request(
            self.addr,
            method,
            path,
            body.as_deref(),
            &[("authorization", format!("Bearer {}", self.token))],
        )
        .await
        .expect("request");
        (r.status, serde_json::from_slice(&r.body).unwrap_or(Value::String(String::from_utf8_lossy(&r.body).into())))
    }

    async fn vpn(&self) -> Value {
        let (status, v) = self.call("GET", "/api/vpn", None).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls `/api/vpn` until `pred` holds; returns the snapshot and the time it took.
    async fn wait(&self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let v = self.vpn().await;
            if pred(&v) {
                return (v, start.elapsed());
            }
            assert!(start.elapsed() < limit, "{what} not reached within {limit:?}; last /api/vpn: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn route_status(&self) -> u16 {
        http_request(self.addr, "GET", "/torrents/x", None, &[]).await.unwrap().status
    }

    async fn metric(&self, name: &str) -> f64 {
        let (status, body) = self.call("GET", "/metrics", None).await;
        assert_eq!(status, 200);
        let text = body.as_str().unwrap_or_default().to_string();
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
    }
}

async fn sign_in(gate: &Gate, data: &Path, first: bool) -> Api {
    if first {
        let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
        let body = json!({"email": ADMIN, "password": PW, "setupToken": token.trim()}).to_string();
        let r = http_request(gate.addr, "POST", "/api/auth/setup", Some(body.as_bytes()), &[]).await.unwrap();
        assert_eq!(r.status, 201);
    }
    let body = json!({"email": ADMIN, "password": PW}).to_string();
    let r = http_request(gate.addr, "POST", "/api/auth/token", Some(body.as_bytes()), &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    Api { addr: gate.addr, token: v["access_token"].as_str().unwrap().to_string() }
}

fn start_gate(data: &Path, cfg: &Path) -> Gate {
    Gate::start(data, &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_TLS", "off")])
}

fn table_present() -> bool {
    Command::new("nft").args(["list", "table", "inet", "miauflix_gate"]).output().unwrap().status.success()
}

fn kill_pid(pid: u64) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
}

#[test]
#[ignore = "run by vpn_supervisor_in_network_namespaces inside its own namespaces"]
fn inner_vpn_lab() {
    assert!(std::env::var_os(INNER).is_some(), "run through vpn_supervisor_in_network_namespaces");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(lab());
}

#[test]
#[ignore = "run by vpn_scope_all_in_network_namespaces inside its own namespaces"]
fn inner_vpn_lab_scope_all() {
    assert!(std::env::var_os(INNER).is_some(), "run through vpn_scope_all_in_network_namespaces");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(lab_scope_all());
}

#[test]
#[ignore = "run by vpn_nordvpn_list_in_network_namespaces inside its own namespaces"]
fn inner_vpn_lab_nordvpn() {
    assert!(std::env::var_os(INNER).is_some(), "run through vpn_nordvpn_list_in_network_namespaces");
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap().block_on(lab_nordvpn());
}

type Seen = Arc<Mutex<Vec<(&'static str, IpAddr)>>>;

/// The two server namespaces, their WireGuard servers and public services, and the leak
/// path; returns the lab guard, the servers' public keys and the public services' record.
fn topology(d: &str, client_if: &'static str) -> (Lab, Vec<String>, Seen) {
    // Private /run: named namespaces and /run/wireguard/*.sock vanish with the test.
    sh("mount -t tmpfs tmpfs /run && mkdir -p /run/netns && ip link set lo up");
    sh(&format!("umask 077; wg genkey > {d}/c.key; wg pubkey < {d}/c.key > {d}/c.pub"));
    let mut lab = Lab { servers: Vec::new(), client_if };
    let mut pubs = Vec::new();
    for n in 1..=2 {
        let net = 99 + n; // 198.51.100.0/24 and 198.51.101.0/24
        sh(&format!(
            "ip netns add srv{n}
             ip link add vc{n} type veth peer name vs{n}
             ip link set vs{n} netns srv{n}
             ip addr add 198.51.{net}.2/24 dev vc{n}; ip link set vc{n} up
             S='ip netns exec srv{n}'
             $S ip link set lo up
             $S ip addr add 198.51.{net}.1/24 dev vs{n}; $S ip link set vs{n} up
             $S ip addr add {PUBLIC}/32 dev lo
             umask 077; wg genkey > {d}/s{n}.key; wg pubkey < {d}/s{n}.key > {d}/s{n}.pub"
        ));
        let child = Command::new("ip")
            .args(["netns", "exec", &format!("srv{n}"), "wireguard-go", "-f", &format!("wgs{n}")])
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        lab.servers.push(child);
        let sock = format!("/run/wireguard/wgs{n}.sock");
        let t = Instant::now();
        while !Path::new(&sock).exists() {
            assert!(t.elapsed() < Duration::from_secs(5), "server wireguard-go {n} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        sh(&format!(
            "S='ip netns exec srv{n}'
             $S wg set wgs{n} listen-port 51820 private-key {d}/s{n}.key peer $(cat {d}/c.pub) allowed-ips {TUNNEL_ADDR}/32
             $S ip addr add 10.66.0.1/24 dev wgs{n}; $S ip link set wgs{n} up"
        ));
        pubs.push(std::fs::read_to_string(format!("{d}/s{n}.pub")).unwrap().trim().to_string());
    }
    // The leak path: without the tunnel, traffic to the public address goes out through srv1.
    sh("ip route add default via 198.51.100.1");
    let seen = Arc::new(Mutex::new(Vec::new()));
    public_service("srv1", seen.clone());
    public_service("srv2", seen.clone());
    assert_eq!(torrent_connect().as_deref(), Some("198.51.100.2"), "the lab's leak path must work without the gate");
    seen.lock().unwrap().clear();
    (lab, pubs, seen)
}

/// The lab's two servers as `[[vpn.servers]]`.
fn lab_servers(pubs: &[String]) -> String {
    format!(
        r#"
[[vpn.servers]]
name = "srv1"
endpoint = "198.51.100.1:51820"
public_key = "{}"
[[vpn.servers]]
name = "srv2"
endpoint = "198.51.101.1:51820"
public_key = "{}"
"#,
        pubs[0], pubs[1]
    )
}

/// The gate's configuration for the lab: `servers` is TOML inside `[vpn]` (server tables or
/// a provider), `killswitch` the `[vpn.killswitch]` body.
fn lab_config(up: SocketAddr, client_if: &str, servers: &str, killswitch: &str) -> String {
    format!(
        r#"
[rate_limits.api]
per_minute = 100000
burst = 10000
[rate_limits.global]
per_minute = 100000
burst = 10000
[[routes]]
prefix = "/torrents"
upstream = "http://{up}"
min_role = "public"
requires_vpn = true
[vpn]
enabled = true
interface = "{client_if}"
address = ["{TUNNEL_ADDR}/32"]
dns = ["10.66.0.1"]
{servers}
[vpn.health]
interval_secs = 2
probe = "tcp://{PUBLIC}:8080"
failures_to_down = 2
successes_to_up = 2
[vpn.reconnect]
backoff_base_secs = 1
backoff_max_secs = 8
rotate_after_failures = 2
[vpn.killswitch]
{killswitch}
"#
    )
}

async fn lab() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (lab, pubs, seen) = topology(&d, "wgc0");
    let up = upstream();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    let ks = format!("scope = \"uid\"\nuids = [{TORRENT_UID}]\nallow_lan = [\"192.168.0.0/16\"]");
    std::fs::write(&cfg, lab_config(up, "wgc0", &lab_servers(&pubs), &ks)).unwrap();
    let env = [("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];

    // 1. No key yet: unavailable, yet the kill switch is in place before any tunnel exists.
    let gate = start_gate(&data, &cfg);
    let api = sign_in(&gate, &data, true).await;
    let (v, _) = api.wait("unavailable (no key)", Duration::from_secs(10), |v| v["state"] == "unavailable").await;
    assert!(v["reason"].as_str().unwrap().contains("private key"), "{v}");
    assert!(table_present(), "the kill switch must be installed before the tunnel");
    assert_eq!(api.route_status().await, 503);
    assert_eq!(torrent_connect(), None, "no tunnel yet: the torrent uid must get nothing through");
    assert_eq!(leaks(&seen), 0);

    // 2. The key arrives on stdin (never argv); the tunnel comes up.
    let client_key = std::fs::read_to_string(format!("{d}/c.key")).unwrap();
    let (code, out, err) = run_cli_stdin(&["vpn", "set-key"], &env, &client_key);
    assert_eq!(code, 0, "{err}");
    let client_pub = std::fs::read_to_string(format!("{d}/c.pub")).unwrap();
    assert!(out.contains(client_pub.trim()), "set-key names the public key: {out}");
    let (v, took) = api.wait("up", Duration::from_secs(30), |v| v["state"] == "up").await;
    eprintln!("vpn: up {took:?} after set-key, server {}", v["server"]);
    assert!(!v.to_string().contains(client_key.trim()), "GET /api/vpn must never show the private key");
    assert_eq!(v["publicKey"].as_str(), Some(client_pub.trim()));
    assert_eq!(v["killswitch"]["installed"], true);
    assert!(v["killswitch"]["rules"].as_u64().unwrap() >= 8, "{v}");
    assert!(v["handshakeAgeSecs"].as_u64().is_some(), "{v}");
    let first = v["server"].as_str().unwrap().to_string();
    assert_eq!(torrent_connect().as_deref(), Some(TUNNEL_ADDR), "torrent traffic must use the tunnel");
    assert!(seen.lock().unwrap().iter().any(|(ns, ip)| *ns == first && ip.to_string() == TUNNEL_ADDR));
    assert_eq!(api.route_status().await, 200);
    assert_eq!(api.metric("vpn_up").await, 1.0);
    assert_eq!(api.metric("vpn_state").await, 3.0);
    assert!(api.metric("vpn_rx_bytes").await > 0.0);
    // DNS may only go to vpn.dns through the tunnel: a query to another resolver is dropped
    // (and counted) by the kill switch.
    sh(&format!(
        "timeout 2 setpriv --reuid {TORRENT_UID} --regid {TORRENT_UID} --clear-groups -- \
         bash -c 'echo q > /dev/udp/198.51.100.1/53' 2>/dev/null || true"
    ));
    let dns_rule = sh("nft list chain inet miauflix_gate guard | grep 'dport 53 counter'");
    assert!(!dns_rule.contains("packets 0 "), "the DNS leak must hit the DNS drop rule: {dns_rule}");
    let (code, out, _) = run_cli(&["vpn", "status"], &env);
    assert_eq!(code, 0);
    assert!(out.starts_with("vpn: up via"), "{out}");

    // 3. The current server stops answering: down within 15 s, route closed at that moment,
    //    the torrent uid gets nothing through and nothing leaks.
    let first_ns = first.clone();
    sh(&format!(
        "ip netns exec {first_ns} nft add table inet cut
         ip netns exec {first_ns} nft add chain inet cut in '{{ type filter hook input priority 0; }}'
         ip netns exec {first_ns} nft add rule inet cut in udp dport 51820 drop"
    ));
    let (v, detect) = api
        .wait("down", Duration::from_secs(15), |v| matches!(v["state"].as_str(), Some("down" | "reconnecting")))
        .await;
    eprintln!("vpn: outage detected after {detect:?} (state {})", v["state"]);
    assert_eq!(api.route_status().await, 503, "requires_vpn route must close when the tunnel is down");
    assert_eq!(api.metric("vpn_up").await, 0.0);
    let before = leaks(&seen);
    assert_eq!(torrent_connect(), None, "while down the torrent uid must get nothing through");
    assert_eq!(leaks(&seen), before);
    assert_eq!(before, 0);

    // 4. Rotation to the other server; the route opens again.
    let (v, recover) = api
        .wait("up on the other server", Duration::from_secs(60), |v| v["state"] == "up" && v["server"] != first)
        .await;
    eprintln!("vpn: up again on {} {recover:?} after detection ({:?} after the cut)", v["server"], detect + recover);
    let second = v["server"].as_str().unwrap().to_string();
    assert_eq!(api.route_status().await, 200);
    assert_eq!(torrent_connect().as_deref(), Some(TUNNEL_ADDR));
    assert!(seen.lock().unwrap().iter().any(|(ns, ip)| *ns == second && ip.to_string() == TUNNEL_ADDR));
    assert!(api.metric("vpn_reconnects_total").await >= 1.0);

    // 5. wireguard-go killed: the gate restarts it.
    let pid = v["wireguardPid"].as_u64().expect("wireguard pid");
    kill_pid(pid);
    let (v, took) = api
        .wait("up with a new wireguard-go", Duration::from_secs(30), |v| {
            v["state"] == "up" && v["wireguardPid"].as_u64().is_some_and(|p| p != pid)
        })
        .await;
    eprintln!("vpn: wireguard-go {pid} killed, new one {} and up after {took:?}", v["wireguardPid"]);
    assert!(gate.log_text().contains("wireguard-go exited"), "the exit must be noticed");

    // 6. The gate itself is SIGKILLed: the kill switch stays, nothing leaks; a restart
    //    adopts the table and the running tunnel.
    let wg_pid = v["wireguardPid"].as_u64().unwrap();
    drop(api);
    drop(gate); // SIGKILL
    assert!(table_present(), "the kill switch must survive a crash of the gate");
    let before = leaks(&seen);
    let via = torrent_connect();
    assert!(via.is_none() || via.as_deref() == Some(TUNNEL_ADDR), "gate dead: {via:?}");
    assert_eq!(leaks(&seen), before);
    let gate = start_gate(&data, &cfg);
    let api = sign_in(&gate, &data, false).await;
    let (v, took) = api.wait("up after restart", Duration::from_secs(30), |v| v["state"] == "up").await;
    eprintln!("vpn: gate restarted, up after {took:?}");
    assert_eq!(v["wireguardPid"].as_u64(), Some(wg_pid), "the running wireguard-go must be adopted");
    assert!(gate.log_text().contains("kill switch already in place"), "the table must be adopted");
    assert_eq!(v["server"].as_str(), Some(second.as_str()), "the rotation position persists");

    // 7. Crash again, and this time the tunnel dies and the policy rules go too: the
    //    nftables table alone must hold.
    drop(api);
    drop(gate);
    kill_pid(wg_pid);
    std::thread::sleep(Duration::from_millis(300));
    sh("while ip rule del pref 10100 2>/dev/null; do :; done; while ip rule del pref 10090 2>/dev/null; do :; done");
    let before = leaks(&seen);
    assert_eq!(torrent_connect(), None, "gate and tunnel dead: the kill switch alone must stop the torrent uid");
    assert_eq!(leaks(&seen), before, "nothing may arrive from the veth address");
    assert_eq!(before, 0, "no connection ever arrived from the veth address");
    let dropped = sh("nft list table inet miauflix_gate | grep -c 'counter packets [1-9]' || true");
    assert!(dropped.trim() != "0", "the final drop rule must have counted the attempt");
    let gate = start_gate(&data, &cfg);
    let api = sign_in(&gate, &data, false).await;
    api.wait("up after the second restart", Duration::from_secs(30), |v| v["state"] == "up").await;
    assert_eq!(torrent_connect().as_deref(), Some(TUNNEL_ADDR));

    // 8. The audit log has the story; the store holds no plaintext key.
    let (status, events) = api.call("GET", "/api/audit?limit=500", None).await;
    assert_eq!(status, 200);
    let types: Vec<String> =
        events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    for t in ["vpn_up", "vpn_down", "vpn_reconnecting", "vpn_server_rotated", "killswitch_engaged"] {
        assert!(types.iter().any(|x| x == t), "no {t} event in {types:?}");
    }
    let (status, servers) = api.call("GET", "/api/vpn/servers", None).await;
    assert_eq!(status, 200);
    assert_eq!(servers["servers"].as_array().unwrap().len(), 2);
    let bad = json!({"privateKey": "not-a-key-not-a-key-not-a-key-not-a-key-xx"});
    let (status, problem) = api.call("PUT", "/api/vpn/key", Some(bad)).await;
    assert_eq!(status, 400, "{problem}");

    // 9. `vpn disable` is the only way out: tunnel and table removed, event recorded.
    let (code, out, err) = run_cli(&["vpn", "disable"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed"), "{out}");
    assert!(!table_present());
    let (_, v) = api.call("GET", "/api/vpn", None).await;
    assert_eq!(v["state"], "disabled");
    assert_eq!(api.route_status().await, 503);
    let (_, events) = api.call("GET", "/api/audit?type=killswitch_released", None).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
    gate.terminate();

    let store = std::fs::read(data.join("gate.redb")).unwrap();
    let raw = client_key.trim();
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, raw).unwrap();
    assert!(!contains(&store, raw.as_bytes()), "the store holds the base64 private key");
    assert!(!contains(&store, &bytes), "the store holds the raw private key");
    assert!(!contains(&store, hex::encode(&bytes).as_bytes()), "the store holds the hex private key");
    drop(lab);
}

/// `scope = "all"`: every local socket is confined, whoever owns it; answers to inbound
/// connections (the gate's own listeners) still leave.
async fn lab_scope_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (lab, pubs, seen) = topology(&d, "wga0");
    let up = upstream();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    std::fs::write(&cfg, lab_config(up, "wga0", &lab_servers(&pubs), "scope = \"all\"")).unwrap();
    let env = [("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];

    let gate = start_gate(&data, &cfg);
    let api = sign_in(&gate, &data, true).await;
    // Before the key: root itself gets nothing out, not even through the leak path.
    assert_eq!(connect_as(None), None, "scope all: without a tunnel nothing may leave");
    assert_eq!(leaks(&seen), 0);
    let key = std::fs::read_to_string(format!("{d}/c.key")).unwrap();
    let (code, _, err) = run_cli_stdin(&["vpn", "set-key"], &env, &key);
    assert_eq!(code, 0, "{err}");
    let (v, took) = api.wait("up", Duration::from_secs(30), |v| v["state"] == "up").await;
    eprintln!("vpn (scope all): up {took:?} after set-key on {}", v["server"]);
    assert_eq!(v["killswitch"]["scope"], "all");
    // Root and any other user now leave through the tunnel; the gate's API still answers.
    assert_eq!(connect_as(None).as_deref(), Some(TUNNEL_ADDR));
    assert_eq!(connect_as(Some("1234")).as_deref(), Some(TUNNEL_ADDR));
    assert_eq!(api.route_status().await, 200);
    let ip_rules = sh("ip rule");
    assert!(ip_rules.contains("not from all fwmark 0x4d47 lookup 19783"), "{ip_rules}");

    // Gate SIGKILLed and its wireguard-go killed: everything stays shut.
    let pid = v["wireguardPid"].as_u64().unwrap();
    drop(api);
    drop(gate);
    kill_pid(pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(table_present());
    assert_eq!(connect_as(None), None, "scope all: gate and tunnel dead, root must get nothing out");
    assert_eq!(connect_as(Some("1234")), None);
    assert_eq!(leaks(&seen), 0, "nothing may arrive from the veth address");

    // Restart: up again; then `vpn disable` opens the host again.
    let gate = start_gate(&data, &cfg);
    let api = sign_in(&gate, &data, false).await;
    api.wait("up after restart", Duration::from_secs(30), |v| v["state"] == "up").await;
    assert_eq!(connect_as(None).as_deref(), Some(TUNNEL_ADDR));
    let (code, _, err) = run_cli(&["vpn", "disable"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(!table_present());
    assert_eq!(connect_as(None).as_deref(), Some("198.51.100.2"), "after disable the host routes as before");
    gate.terminate();
    drop(lab);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A stand-in for NordVPN's recommendation API on loopback: answers 503 while `failing`
/// is above zero (counting it down), then the lab's two servers in NordVPN's format.
/// Returns its base URL and the number of requests it has seen.
fn fake_nordvpn(pubs: &[String], failing: Arc<Mutex<i32>>) -> (String, Arc<Mutex<u32>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(0u32));
    let list = json!([
        {"name": "Sweden #1", "hostname": "se1.nordvpn.example", "station": "198.51.100.1",
         "technologies": [{"identifier": "wireguard_udp", "metadata": [{"name": "public_key", "value": pubs[0]}]}]},
        {"name": "Sweden #2", "hostname": "se2.nordvpn.example", "station": "198.51.101.1",
         "technologies": [{"identifier": "wireguard_udp", "metadata": [{"name": "public_key", "value": pubs[1]}]}]},
        {"name": "OpenVPN only", "hostname": "se3.nordvpn.example", "station": "198.51.102.1",
         "technologies": [{"identifier": "openvpn_udp", "metadata": []}]}
    ])
    .to_string();
    let seen = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            if !head.starts_with("GET /v1/servers/recommendations?") || !head.contains("wireguard_udp") {
                let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            *seen.lock().unwrap() += 1;
            let mut f = failing.lock().unwrap();
            if *f != 0 {
                *f -= 1;
                let _ =
                    s.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            } else {
                let _ = s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{list}",
                        list.len()
                    )
                    .as_bytes(),
                );
            }
        }
    });
    (base, hits)
}

/// `provider = "nordvpn"` when the first fetch fails and nothing is cached: unavailable with
/// the kill switch in place, then retried on the reconnect backoff until the list comes, and
/// up on it without a restart; after a restart with the API down for good, up on the cached list.
async fn lab_nordvpn() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (lab, pubs, seen) = topology(&d, "wgn0");
    let up = upstream();
    // The first three fetches fail: the one at start and the retries after 1 s and 2 s; the
    // next retry, 4 s later, gets the list.
    let failing = Arc::new(Mutex::new(3));
    let (api_base, hits) = fake_nordvpn(&pubs, failing.clone());
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    let provider = format!("provider = \"nordvpn\"\n[vpn.nordvpn]\napi_base = \"{api_base}\"\nlimit = 5\n");
    let ks = format!("scope = \"uid\"\nuids = [{TORRENT_UID}]");
    std::fs::write(&cfg, lab_config(up, "wgn0", &provider, &ks)).unwrap();
    let env = [("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_DATA_DIR", data.to_str().unwrap())];
    let gate = start_gate(&data, &cfg);
    let api = sign_in(&gate, &data, true).await;
    // The key arrives while the gate waits for its list: stored, no attempt yet.
    let key = std::fs::read_to_string(format!("{d}/c.key")).unwrap();
    let (status, body) = api.call("PUT", "/api/vpn/key", Some(json!({"privateKey": key.trim()}))).await;
    assert_eq!(status, 200, "{body}");
    let (v, _) = api
        .wait("unavailable (no list)", Duration::from_secs(10), |v| {
            v["state"] == "unavailable" && v["reason"].as_str().is_some_and(|r| r.contains("no VPN servers yet"))
        })
        .await;
    assert!(v["reason"].as_str().unwrap().contains("HTTP 503"), "the reason names the failure: {v}");
    assert!(table_present(), "uid scope: the kill switch is in place while the list is missing");
    assert_eq!(api.route_status().await, 503);
    assert_eq!(torrent_connect(), None, "no list, no tunnel: the torrent uid must get nothing through");
    let (status, body) = api.call("POST", "/api/vpn/reconnect", None).await;
    assert_eq!(status, 409, "nothing to reconnect to yet: {body}");

    let (v, took) = api.wait("up on the fetched list", Duration::from_secs(30), |v| v["state"] == "up").await;
    eprintln!(
        "vpn (nordvpn): up {took:?} after the failed start (three failed fetches, then the list), server {}",
        v["server"]
    );
    let fetches = *hits.lock().unwrap();
    assert!(fetches >= 4, "start-up fetch, two failed retries, then the list: {fetches} fetches");
    let (status, list) = api.call("GET", "/api/vpn/servers", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["servers"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["se1.nordvpn.example", "se2.nordvpn.example"], "WireGuard servers only: {list}");
    assert!(names.contains(&v["server"].as_str().unwrap()));
    assert_eq!(torrent_connect().as_deref(), Some(TUNNEL_ADDR), "torrent traffic must use the tunnel");
    assert_eq!(api.route_status().await, 200);
    assert_eq!(leaks(&seen), 0);

    // The API goes away for good; a restarted gate comes up on the list it cached.
    *failing.lock().unwrap() = -1;
    drop(api);
    gate.terminate();
    let gate = start_gate(&data, &cfg);
    let api = sign_in(&gate, &data, false).await;
    let (v, took) = api.wait("up on the cached list", Duration::from_secs(30), |v| v["state"] == "up").await;
    eprintln!("vpn (nordvpn): up {took:?} after a restart on the cached list, server {}", v["server"]);
    assert_eq!(torrent_connect().as_deref(), Some(TUNNEL_ADDR));
    assert_eq!(leaks(&seen), 0);
    run_cli(&["vpn", "disable"], &env);
    gate.terminate();
    drop(lab);
}
