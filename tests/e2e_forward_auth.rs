//! Forward auth behind real nginx and Caddy (feature `e2e`), configured from the README's
//! snippets: a client's spoofed `X-Original-URI` / `X-Forwarded-Uri` cannot point the check at a
//! public route, and nginx's raw `$request_uri` is judged in its canonical form. A missing tool
//! is a failure, never a silent pass.
#![cfg(feature = "e2e")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Gate;

const ADMIN: &str = "admin@example.com";
const GUEST: &str = "kid@example.com";
const PW: &str = "correct-horse-battery";

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "e2e needs `{tool}` on PATH (apt-get install -y {tool}); .ci/run installs it");
}

/// An upstream that answers every request with the request target it received, and records it.
fn echo_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let target = line.split(' ').nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                seen.lock().unwrap().push(target.clone());
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{target}",
                    target.len()
                );
            });
        }
    });
    (addr, seen)
}

/// One HTTP/1.1 request with the target sent byte for byte; (status, body).
fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.into() };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A gate with TLS off, the routes of the test and `forward_auth`; admin and guest bearer tokens.
fn gate(dir: &Path, up: SocketAddr, forward_auth: &str) -> (Gate, String, String) {
    let cfg = dir.join("gate.toml");
    let mut toml = format!("[rate_limits.auth]\nper_minute = 100000\nburst = 10000\n{forward_auth}\n");
    for (prefix, role) in
        [("/public", "public"), ("/media", "public"), ("/media/private", "admin"), ("/adminonly", "admin")]
    {
        toml.push_str(&format!(
            "[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://{up}\"\nmin_role = \"{role}\"\n"
        ));
    }
    std::fs::write(&cfg, toml).unwrap();
    let data = dir.join("data");
    let g = Gate::start(&data, &[("MIAUFLIX_TLS", "off"), ("MIAUFLIX_CONFIG", cfg.to_str().unwrap())]);
    let origin = format!("http://{}", g.addr);
    let hdr = [("Origin", origin.as_str())];
    let setup = std::fs::read_to_string(data.join("setup-token")).unwrap();
    let body = serde_json::json!({"email": ADMIN, "password": PW, "setupToken": setup.trim()}).to_string();
    let (status, text) = request(g.addr, "POST", "/api/auth/setup", &hdr, &body);
    assert!(status == 200 || status == 201, "setup: {status} {text}");
    let token = |email: &str| {
        let body = serde_json::json!({"email": email, "password": PW}).to_string();
        let (status, text) = request(g.addr, "POST", "/api/auth/token", &hdr, &body);
        assert_eq!(status, 200, "token: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["access_token"].as_str().unwrap().to_string()
    };
    let admin = token(ADMIN);
    let bearer = format!("Bearer {admin}");
    let body = serde_json::json!({"email": GUEST, "password": PW, "role": "guest"}).to_string();
    let (status, text) =
        request(g.addr, "POST", "/api/users", &[("Origin", origin.as_str()), ("Authorization", &bearer)], &body);
    assert_eq!(status, 201, "create guest: {text}");
    let guest = token(GUEST);
    (g, admin, guest)
}

/// The README's fenced block of `lang`, the first one.
fn readme_snippet(lang: &str) -> String {
    let readme = include_str!("../README.md");
    let start = readme.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("README has a {lang} snippet"));
    let rest = &readme[start + lang.len() + 4..];
    rest[..rest.find("```").unwrap()].to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(addr: SocketAddr, child: &mut Child, what: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        assert!(Instant::now() < until, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(dir: &Path, gate: SocketAddr, up: SocketAddr) -> (Proc, SocketAddr) {
    let port = free_port();
    let snippet = readme_snippet("nginx")
        .replace("https://127.0.0.1:8443", &format!("http://{gate}"))
        .replace("http://127.0.0.1:3000", &format!("http://{up}"))
        .replace("location /api/lists/ {", "location / {");
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\n\
         http {{\n access_log off;\n client_body_temp_path {dir}/body;\n proxy_temp_path {dir}/proxy;\n\
         fastcgi_temp_path {dir}/fcgi;\n uwsgi_temp_path {dir}/uwsgi;\n scgi_temp_path {dir}/scgi;\n\
         server {{\n  listen 127.0.0.1:{port};\n{snippet}\n }}\n}}\n",
        dir = dir.display()
    );
    let file = dir.join("nginx.conf");
    std::fs::write(&file, conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-p",
            dir.to_str().unwrap(),
            "-e",
            dir.join("error.log").to_str().unwrap(),
            "-c",
            file.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let mut p = Proc(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_listening(addr, &mut p.0, "nginx");
    (p, addr)
}

fn start_caddy(dir: &Path, gate: SocketAddr, up: SocketAddr) -> (Proc, SocketAddr) {
    let port = free_port();
    let mut snippet = String::new();
    let mut skip = 0;
    for line in readme_snippet("caddyfile").lines() {
        // TLS is off between Caddy and the gate here.
        if line.trim_start().starts_with("transport http {") {
            skip = 1;
            continue;
        }
        if skip > 0 {
            skip -= line.contains('}') as i32;
            continue;
        }
        snippet.push_str(line);
        snippet.push('\n');
    }
    let snippet = snippet
        .replace("media.example.com", &format!("http://127.0.0.1:{port}"))
        .replace("127.0.0.1:8443", &gate.to_string())
        .replace("127.0.0.1:3000", &up.to_string());
    let file = dir.join("Caddyfile");
    std::fs::write(&file, format!("{{\n admin off\n auto_https off\n}}\n{snippet}")).unwrap();
    let child = Command::new("caddy")
        .args(["run", "--config", file.to_str().unwrap(), "--adapter", "caddyfile"])
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("caddy.log")).unwrap())
        .spawn()
        .expect("start caddy");
    let mut p = Proc(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wait_listening(addr, &mut p.0, "caddy"))) {
        let log = std::fs::read_to_string(dir.join("caddy.log")).unwrap_or_default();
        panic!("{}; caddy log:\n{log}", e.downcast_ref::<String>().cloned().unwrap_or_default());
    }
    (p, addr)
}

/// Sends through `proxy` and checks the status and whether the upstream saw the request.
fn expect(
    proxy: SocketAddr,
    seen: &Mutex<Vec<String>>,
    target: &str,
    headers: &[(&str, &str)],
    want: &[u16],
    reaches: bool,
) {
    seen.lock().unwrap().clear();
    let (status, body) = request(proxy, "GET", target, headers, "");
    let got = seen.lock().unwrap().clone();
    assert!(want.contains(&status), "{target} {headers:?}: status {status}, want {want:?}; body {body}");
    if reaches {
        assert_eq!(got, [target], "{target} {headers:?}: the upstream gets it as sent");
    } else {
        assert!(got.is_empty(), "{target} {headers:?}: the upstream must never see it, saw {got:?}");
    }
}

#[test]
fn spoofed_uri_headers_and_path_spellings_cannot_pass_nginx_or_caddy() {
    require("nginx");
    require("caddy");
    let (up, seen) = echo_upstream();

    // nginx with the default uri_header (X-Original-URI, set by nginx itself).
    let dir = tempfile::tempdir().unwrap();
    let (gate_n, admin, guest) = gate(dir.path(), up, "");
    let nginx_dir = tempfile::tempdir().unwrap();
    let (_nginx, nginx) = start_nginx(nginx_dir.path(), gate_n.addr, up);
    let admin_h = format!("Bearer {admin}");
    let guest_h = format!("Bearer {guest}");
    let ok = &[200];
    for target in ["/public/x", "/media/x", "/media/%2570rivate"] {
        expect(nginx, &seen, target, &[], ok, true);
    }
    expect(nginx, &seen, "/adminonly/x", &[("Authorization", &admin_h)], ok, true);
    expect(nginx, &seen, "/media/%70rivate/x", &[("Authorization", &admin_h)], ok, true);
    for spoof in [("X-Original-URI", "/public/x"), ("X-Forwarded-Uri", "/public/x"), ("X-Original-URI", "/media/x")] {
        expect(nginx, &seen, "/adminonly/x", &[spoof], &[401], false);
        expect(nginx, &seen, "/adminonly/x", &[spoof, ("Authorization", &guest_h)], &[403], false);
        expect(nginx, &seen, "/media/private/x", &[spoof], &[401], false);
    }
    // nginx matches locations on the normalised URI but hands the gate (and the upstream) the
    // raw one: each spelling is judged in its canonical form or refused.
    for target in [
        "/media/%70rivate/x",
        "/media/privat%65/x",
        "/%6dedia/private/x",
        "/media/PRIVATE/x",
        "/media/%50rivate/x",
        "/media/Private",
    ] {
        expect(nginx, &seen, target, &[], &[401], false);
        expect(nginx, &seen, target, &[("Authorization", &guest_h)], &[403], false);
    }
    for target in [
        "/media//private/x",
        "/media/private;/x",
        "/media/private;jsessionid=1/x",
        "/media/%2fprivate/x",
        "/media/x%5c..%5cprivate",
        "/media/%00private",
        "/media/%c0%afprivate",
        "/media/%zz",
        "/media/x/%2e%2e/private/x",
        // nginx passes a raw `#` on in $request_uri and to the upstream; Go's file server
        // keeps it in the path and cleans `/media/x#/../private/a` to the admin path.
        "/media/x#/../private/a",
        "/media/x#/%2e%2e/private/a",
    ] {
        // 403 from the gate; nginx answers 400 itself for some raw forms.
        expect(nginx, &seen, target, &[], &[403, 400], false);
        expect(nginx, &seen, target, &[("Authorization", &guest_h)], &[403, 400], false);
    }
    gate_n.terminate();

    // Caddy with uri_header = "x-forwarded-uri" (Caddy sets it; it passes a client's
    // X-Original-URI on, which the gate refuses).
    let dir = tempfile::tempdir().unwrap();
    let fa = "[forward_auth]\nuri_header = \"x-forwarded-uri\"\nmethod_header = \"x-forwarded-method\"\n";
    let (gate_c, admin, guest) = gate(dir.path(), up, fa);
    let caddy_dir = tempfile::tempdir().unwrap();
    let (_caddy, caddy) = start_caddy(caddy_dir.path(), gate_c.addr, up);
    let admin_h = format!("Bearer {admin}");
    let guest_h = format!("Bearer {guest}");
    expect(caddy, &seen, "/public/x", &[], ok, true);
    expect(caddy, &seen, "/adminonly/x", &[("Authorization", &admin_h)], ok, true);
    expect(caddy, &seen, "/adminonly/x", &[], &[401], false);
    expect(caddy, &seen, "/adminonly/x", &[("X-Forwarded-Uri", "/public/x")], &[401], false);
    expect(
        caddy,
        &seen,
        "/adminonly/x",
        &[("X-Forwarded-Uri", "/public/x"), ("Authorization", &guest_h)],
        &[403],
        false,
    );
    expect(caddy, &seen, "/adminonly/x", &[("X-Original-URI", "/public/x")], &[400], false);
    expect(
        caddy,
        &seen,
        "/adminonly/x",
        &[("X-Original-URI", "/public/x"), ("Authorization", &guest_h)],
        &[400],
        false,
    );
    expect(caddy, &seen, "/media/%70rivate/x", &[], &[401], false);
    expect(caddy, &seen, "/media/private;/x", &[("Authorization", &guest_h)], &[403], false);
    gate_c.terminate();
}
