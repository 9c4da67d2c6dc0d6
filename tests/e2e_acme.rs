//! ACME end to end against Debian's Pebble and pebble-challtestsrv (feature `e2e`): a
//! certificate by TLS-ALPN-01 and by HTTP-01, renewal without a restart, and the cached
//! certificate served after a restart while the CA is down.
#![cfg(feature = "e2e")]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gate, client_config, https_request, run_cli};

const DOMAIN: &str = "gate.example.test";

/// `N` distinct free ports: the listeners are held until all are chosen, so the kernel
/// cannot hand the same port out twice.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

fn need(tool: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false);
    assert!(found, "{tool} is not installed; run `apt-get install -y pebble openssl` (the e2e feature needs it)");
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

struct Pebble {
    children: Vec<Child>,
    dir: PathBuf,
    acme: u16,
    mgmt: u16,
    /// Where Pebble validates: HTTP-01 and TLS-ALPN-01 ports on 127.0.0.1.
    http_port: u16,
    tls_port: u16,
}

impl Pebble {
    /// Pebble with a throw-away CA for its own API, resolving every name to 127.0.0.1.
    fn start(dir: &Path, validity_secs: u64) -> Pebble {
        need("pebble");
        need("pebble-challtestsrv");
        need("openssl");
        let d = dir.join("pebble");
        std::fs::create_dir_all(&d).unwrap();
        run(Command::new("openssl").current_dir(&d).args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=pebble api test ca",
        ]));
        run(Command::new("openssl").current_dir(&d).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "csr.pem",
            "-subj",
            "/CN=localhost",
        ]));
        std::fs::write(d.join("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        run(Command::new("openssl").current_dir(&d).args([
            "x509",
            "-req",
            "-in",
            "csr.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
        let [acme, mgmt, dns, chall_mgmt, http_port, tls_port] = free_ports::<6>();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": d.join("cert.pem"),
            "privateKey": d.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity_secs,
        }});
        std::fs::write(d.join("pebble.json"), config.to_string()).unwrap();
        let chall = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}"), "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let pebble = Command::new("pebble")
            .args(["-config", d.join("pebble.json").to_str().unwrap(), "-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble");
        let p = Pebble { children: vec![chall, pebble], dir: d, acme, mgmt, http_port, tls_port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", p.mgmt)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme)
    }

    fn api_ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Pebble's issuing root (regenerated at each start), saved as PEM.
    async fn issuing_root(&self, out: &Path) -> PathBuf {
        let cfg = client_config(&self.api_ca(), &[&rustls::version::TLS13, &rustls::version::TLS12]);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.mgmt).parse().unwrap();
        let r = https_request(addr, "localhost", cfg, "GET", "/roots/0", None).await.unwrap();
        assert_eq!(r.status, 200);
        std::fs::write(out, &r.body).unwrap();
        out.to_path_buf()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Handshakes with SNI `DOMAIN`, trusting only `root`; returns the served leaf's serial (hex).
async fn served_serial(addr: SocketAddr, root: &Path) -> Result<String, String> {
    let cfg = client_config(root, &[&rustls::version::TLS13, &rustls::version::TLS12]);
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?.clone();
    let facts = miauflix_gate::tls::status::CertFacts::from_der(&leaf).map_err(|e| e.to_string())?;
    assert!(facts.names.iter().any(|n| n == DOMAIN), "{:?}", facts.names);
    Ok(facts.serial)
}

async fn wait_for_cert(addr: SocketAddr, root: &Path, not: Option<&str>, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last;
    loop {
        match served_serial(addr, root).await {
            Ok(serial) if Some(serial.as_str()) != not => return serial,
            Ok(s) => last = format!("still serial {s}"),
            Err(e) => last = e,
        }
        assert!(Instant::now() < deadline, "no (new) ACME certificate within {secs} s: {last}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn gate_env(p: &Pebble, challenge: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MIAUFLIX_TLS", "acme".into()),
        ("MIAUFLIX_LISTEN", format!("127.0.0.1:{}", p.tls_port)),
        ("MIAUFLIX_HTTP_LISTEN", format!("127.0.0.1:{}", p.http_port)),
        ("MIAUFLIX_TLS__ACME__DOMAINS", format!("[\"{DOMAIN}\"]")),
        ("MIAUFLIX_TLS__ACME__DIRECTORY", p.directory()),
        ("MIAUFLIX_TLS__ACME__CONTACT", "mailto:admin@example.test".into()),
        ("MIAUFLIX_TLS__ACME__CHALLENGE", challenge.into()),
        ("MIAUFLIX_TLS__ACME__CA_ROOTS", format!("[\"{}\"]", p.api_ca().display())),
    ]
}

fn start_gate(data: &Path, env: &[(&'static str, String)]) -> Gate {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Gate::start(data, &env)
}

fn audit_types(data: &Path) -> Vec<String> {
    let (code, out, err) = run_cli(&["audit", "export"], &[("MIAUFLIX_DATA_DIR", data.to_str().unwrap())]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_and_the_cache_across_a_restart_without_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pebble = Pebble::start(dir.path(), 3600);
    let root = pebble.issuing_root(&dir.path().join("pebble-root.pem")).await;
    let env = gate_env(&pebble, "tls-alpn-01");
    let gate = start_gate(&data, &env);
    // The gate starts at once on its self-signed stand-in and says so.
    assert!(gate.wait_for_line(&["ACME enabled", "self-signed"]).is_some(), "{}", gate.log_text());
    let serial = wait_for_cert(gate.addr, &root, None, 60).await;
    assert!(gate.terminate().success());
    drop(pebble);

    // The CA is gone; after a restart the cached certificate is served at once.
    let gate = start_gate(&data, &env);
    let again = served_serial(gate.addr, &root).await.expect("cached certificate served without the CA");
    assert_eq!(again, serial);
    assert!(gate.wait_for_line(&["serving the cached ACME certificate"]).is_some());
    assert!(gate.terminate().success());
    let types = audit_types(&data);
    assert!(types.iter().any(|t| t == "certificate_issued"), "{types:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_certificate_and_the_redirect_listener() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pebble = Pebble::start(dir.path(), 3600);
    let root = pebble.issuing_root(&dir.path().join("pebble-root.pem")).await;
    let gate = start_gate(&data, &gate_env(&pebble, "http-01"));
    wait_for_cert(gate.addr, &root, None, 60).await;
    // Everything else on plain HTTP is a 308 to https.
    let http: SocketAddr = format!("127.0.0.1:{}", pebble.http_port).parse().unwrap();
    let r = common::http_request(http, "GET", "/api/me?x=1", None, &[]).await.unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], format!("https://gate.test:{}/api/me?x=1", pebble.tls_port).as_str());
    let r = common::http_request(http, "GET", "/.well-known/acme-challenge/unknown-token", None, &[]).await.unwrap();
    assert_eq!(r.status, 404);
    assert!(gate.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 30 s certificates: renewal is due when 10 s remain.
    let pebble = Pebble::start(dir.path(), 30);
    let root = pebble.issuing_root(&dir.path().join("pebble-root.pem")).await;
    let gate = start_gate(&data, &gate_env(&pebble, "tls-alpn-01"));
    let first = wait_for_cert(gate.addr, &root, None, 60).await;
    let second = wait_for_cert(gate.addr, &root, Some(&first), 90).await;
    assert_ne!(first, second);
    assert!(gate.terminate().success());
    let types = audit_types(&data);
    assert!(types.iter().any(|t| t == "certificate_renewed"), "{types:?}");
}
