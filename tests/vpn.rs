//! The VPN supervisor without privileges or tools: configuration checks, the kill-switch
//! ruleset as nftables JSON, NordVPN's list from a loopback server in NordVPN's format, and
//! a gate that cannot run WireGuard (no tools on its PATH) staying up with `unavailable` and
//! its `requires_vpn` routes closed. The tunnel itself is tested in `e2e_vpn.rs`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{Gate, http_request};
use miauflix_gate::config::{Config, KillswitchScope, NordVpnConfig, VpnConfig, VpnServer};
use serde_json::{Value, json};

const KEY_A: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
const KEY_B: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn vpn_config() -> VpnConfig {
    VpnConfig {
        enabled: true,
        address: vec!["10.5.0.2/32".parse().unwrap()],
        dns: vec!["10.5.0.1".parse().unwrap()],
        servers: vec![VpnServer {
            name: "se-1".into(),
            endpoint: "198.51.100.1:51820".into(),
            public_key: KEY_A.into(),
            allowed_ips: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        }],
        ..Default::default()
    }
}

fn check(vpn: VpnConfig) -> Result<(), String> {
    Config { vpn, ..Default::default() }.validate().map_err(|e| e.to_string())
}

#[test]
fn vpn_configuration_is_checked_with_one_line_naming_the_key() {
    let mut ok = vpn_config();
    ok.killswitch.uids = vec![1500];
    check(ok.clone()).unwrap();
    type Edit = Box<dyn Fn(&mut VpnConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("vpn.address", Box::new(|c| c.address.clear())),
        ("vpn.servers", Box::new(|c| c.servers.clear())),
        ("vpn.servers[0]", Box::new(|c| c.servers[0].public_key = "short".into())),
        ("vpn.servers[0]", Box::new(|c| c.servers[0].endpoint = "no-port".into())),
        ("vpn.interface", Box::new(|c| c.interface = "a-very-long-interface-name".into())),
        ("vpn.backend", Box::new(|c| c.backend = miauflix_gate::config::VpnBackend::Kernel)),
        ("vpn.killswitch.uids", Box::new(|c| c.killswitch.uids.clear())),
        ("vpn.killswitch.uids", Box::new(|c| c.killswitch.uids = vec![0])),
        ("vpn.killswitch.scope", Box::new(|c| c.killswitch.scope = KillswitchScope::Cgroup)),
        ("vpn.health.probe", Box::new(|c| c.health.probe = Some("http://x".into()))),
        ("vpn.reconnect.backoff_base_secs", Box::new(|c| c.reconnect.backoff_max_secs = 0)),
    ];
    for (key, edit) in cases {
        let mut c = ok.clone();
        edit(&mut c);
        let err = check(c).unwrap_err();
        assert!(err.contains(&format!("`{key}`")), "expected an error naming {key}: {err}");
        assert_eq!(err.lines().count(), 1);
    }
    // A disabled VPN is not checked (the defaults have no servers).
    check(VpnConfig::default()).unwrap();
}

#[test]
fn kill_switch_ruleset_is_one_atomic_nft_json_transaction() {
    let mut cfg = vpn_config();
    cfg.killswitch.uids = vec![1500, 1501];
    cfg.killswitch.allow_lan = vec!["192.168.0.0/16".parse().unwrap(), "fd00::/8".parse().unwrap()];
    let endpoints = ["198.51.100.1:51820".parse().unwrap(), "[2001:db8::1]:51820".parse().unwrap()];
    let doc = serde_json::to_value(miauflix_gate::vpn::killswitch::ruleset(&cfg, &endpoints)).unwrap();
    let cmds = doc["nftables"].as_array().unwrap();
    // add table, delete table, add table: the rebuild never leaves a gap.
    assert!(cmds[0]["add"]["table"]["name"] == "miauflix_gate" && cmds[1]["delete"]["table"].is_object());
    assert_eq!(cmds[2]["add"]["table"]["family"], "inet", "one inet table covers IPv4 and IPv6");
    let rules: Vec<&Value> = cmds.iter().filter_map(|c| c["add"].get("rule")).collect();
    let text = |r: &Value| r["expr"].to_string();
    let output: Vec<_> = rules.iter().filter(|r| r["chain"] == "output").collect();
    assert_eq!(output.len(), 1);
    assert!(text(output[0]).contains("skuid") && text(output[0]).contains("1501") && text(output[0]).contains("jump"));
    let guard: Vec<String> = rules.iter().filter(|r| r["chain"] == "guard").map(|r| text(r)).collect();
    // DNS only to vpn.dns through the tunnel, then every other DNS dropped, before anything is accepted.
    assert!(guard[0].contains("10.5.0.1") && guard[0].contains("\"wg0\"") && guard[0].contains("53"));
    assert!(guard[1].contains("53") && guard[1].contains("drop"));
    assert!(guard.iter().any(|r| r.contains("198.51.100.1") && r.contains("51820") && r.contains("udp")));
    assert!(guard.iter().any(|r| r.contains("2001:db8::1") && r.contains("ip6")));
    assert!(guard.iter().any(|r| r.contains("192.168.0.0") && r.contains("16")));
    assert!(guard.iter().any(|r| r.contains("fd00::") && r.contains("ip6")));
    assert!(guard.last().unwrap().contains("drop") && guard.last().unwrap().contains("counter"));
    assert!(!guard.iter().any(|r| r.contains("direction")), "uid scope must not let replies leak out the veth");

    cfg.killswitch.scope = KillswitchScope::All;
    let doc = serde_json::to_value(miauflix_gate::vpn::killswitch::ruleset(&cfg, &endpoints)).unwrap();
    let all = doc.to_string();
    assert!(
        all.contains("\"direction\"") && !all.contains("skuid"),
        "scope all: every socket, answers to inbound allowed"
    );
}

/// A loopback server answering in NordVPN's recommendation format; records request paths.
fn fake_nordvpn() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = paths.clone();
    let body = json!([
        {"id": 1, "name": "Sweden #301", "hostname": "se301.nordvpn.com", "station": "203.0.113.31", "load": 12,
         "technologies": [
            {"id": 3, "identifier": "openvpn_udp", "metadata": []},
            {"id": 35, "identifier": "wireguard_udp", "metadata": [{"name": "public_key", "value": KEY_A}]}]},
        {"id": 2, "name": "Sweden #302", "hostname": "se302.nordvpn.com", "station": "203.0.113.32", "load": 20,
         "technologies": [{"id": 35, "identifier": "wireguard_udp", "metadata": [{"name": "public_key", "value": KEY_B}]}]},
        {"id": 3, "name": "OpenVPN only", "hostname": "se303.nordvpn.com", "station": "203.0.113.33",
         "technologies": [{"id": 3, "identifier": "openvpn_udp", "metadata": []}]}
    ])
    .to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut line = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            seen.lock().unwrap().push(line.split_whitespace().nth(1).unwrap_or_default().to_string());
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (base, paths)
}

#[tokio::test]
async fn nordvpn_recommendations_become_wireguard_servers() {
    let (base, paths) = fake_nordvpn();
    let cfg = NordVpnConfig { api_base: base, country_id: Some(208), limit: 3, refresh_secs: 86_400 };
    let servers = miauflix_gate::vpn::nordvpn::fetch(&cfg).await.unwrap();
    assert_eq!(servers.len(), 2, "the OpenVPN-only server is skipped: {servers:?}");
    assert_eq!(servers[0].name, "se301.nordvpn.com");
    assert_eq!(servers[0].endpoint, "203.0.113.31:51820");
    assert_eq!(servers[0].public_key, KEY_A);
    assert_eq!(servers[1].public_key, KEY_B);
    let path = paths.lock().unwrap()[0].clone();
    assert!(path.starts_with("/v1/servers/recommendations?"), "{path}");
    assert!(path.contains("filters%5Bservers_technologies%5D%5Bidentifier%5D=wireguard_udp"), "{path}");
    assert!(path.contains("limit=3") && path.contains("filters%5Bcountry_id%5D=208"), "{path}");
    // A non-JSON answer is an error, not an empty list.
    assert!(miauflix_gate::vpn::nordvpn::parse(b"<html>").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wireguard_the_gate_starts_unavailable_and_vpn_routes_stay_closed() {
    let (base, _) = fake_nordvpn();
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("gate.toml");
    let empty = dir.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(
        &cfg,
        format!(
            r#"
[[routes]]
prefix = "/torrents"
upstream = "http://{}"
min_role = "public"
requires_vpn = true
[vpn]
enabled = true
address = ["10.5.0.2/32"]
provider = "nordvpn"
[vpn.nordvpn]
api_base = "{base}"
[vpn.killswitch]
uids = [1500]
"#,
            upstream.local_addr().unwrap()
        ),
    )
    .unwrap();
    // No `ip`, `nft` or `wireguard-go` on PATH (and, unless root, no CAP_NET_ADMIN).
    let gate = Gate::start(
        &data,
        &[("MIAUFLIX_CONFIG", cfg.to_str().unwrap()), ("MIAUFLIX_TLS", "off"), ("PATH", empty.to_str().unwrap())],
    );
    assert!(gate.wait_for_line(&["vpn unavailable"]).is_some(), "{}", gate.log_text());
    let r = http_request(gate.addr, "GET", "/torrents/file", None, &[]).await.unwrap();
    assert_eq!(r.status, 503);
    let problem: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(problem["type"], "urn:miauflix-gate:problem/vpn-down");

    let token = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let body = json!({"email": "a@example.com", "password": "a-very-long-passphrase", "setupToken": token.trim()});
    let r = http_request(gate.addr, "POST", "/api/auth/setup", Some(body.to_string().as_bytes()), &[]).await.unwrap();
    assert_eq!(r.status, 201);
    let body = json!({"email": "a@example.com", "password": "a-very-long-passphrase"});
    let r = http_request(gate.addr, "POST", "/api/auth/token", Some(body.to_string().as_bytes()), &[]).await.unwrap();
    let tok: Value = serde_json::from_slice(&r.body).unwrap();
    let auth = [("authorization", format!("Bearer {}", tok["access_token"].as_str().unwrap()))];

    let r = http_request(gate.addr, "GET", "/api/vpn", None, &auth).await.unwrap();
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["state"], "unavailable", "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("CAP_NET_ADMIN") || reason.contains("not installed"), "{reason}");
    assert!(v["publicKey"].is_null() && v["killswitch"]["installed"] == false, "{v}");

    // The provider's list is there even though the tunnel cannot run.
    let r = http_request(gate.addr, "GET", "/api/vpn/servers", None, &auth).await.unwrap();
    let list: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list["servers"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(list["servers"][0]["endpoint"], "203.0.113.31:51820");

    // Commands refuse with a problem, and a bad key is a 400 that stores nothing.
    let r = http_request(gate.addr, "POST", "/api/vpn/reconnect", None, &auth).await.unwrap();
    assert_eq!(r.status, 409);
    let bad = json!({"privateKey": "x".repeat(44)}).to_string();
    let r = http_request(gate.addr, "PUT", "/api/vpn/key", Some(bad.as_bytes()), &auth).await.unwrap();
    assert_eq!(r.status, 400);

    let r = http_request(gate.addr, "GET", "/metrics", None, &auth).await.unwrap();
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.lines().any(|l| l == "vpn_state 1"), "vpn_state must say unavailable:\n{text}");
    assert!(text.lines().any(|l| l == "vpn_up 0"));

    // A guest is not allowed anywhere under /api/vpn.
    let r = http_request(gate.addr, "GET", "/api/vpn", None, &[]).await.unwrap();
    assert_eq!(r.status, 401);
}
