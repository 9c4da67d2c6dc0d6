//! Log injection: client-controlled text (user agent, email) in a security event never forges a
//! field nor starts a new line, in the text and the JSON log format (issue 15 item 12).

mod common;

use std::path::Path;

use common::{Gate, http_request};
use serde_json::json;

const FORGED: &str = "\" event=\"login_succeeded\" actor=\"admin";

fn start_text(data: &Path) -> Gate {
    Gate::start(
        data,
        &[("MIAUFLIX_TLS", "off"), ("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}")],
    )
}

/// `Gate::start` reads the address from a text line; a JSON-format gate is started here.
fn start_json(data: &Path) -> Gate {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_miauflix-gate"))
        .env_clear()
        .env("MIAUFLIX_DATA_DIR", data)
        .env("MIAUFLIX_LISTEN", "127.0.0.1:0")
        .env("MIAUFLIX_LOG", "info")
        .env("MIAUFLIX_LOG_FORMAT", "json")
        .env("MIAUFLIX_TLS", "off")
        .env("MIAUFLIX_RATE_LIMITS__AUTH", "{per_minute = 100000, burst = 10000}")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"].as_str().is_some_and(|m| m.contains("listening"))
                && let Some(a) = v["addr"].as_str()
            {
                let _ = tx.send(a.to_string());
            }
            log2.lock().unwrap().push(line);
        }
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("gate did not start").parse().unwrap();
    Gate { child, addr, log }
}

/// Failed logins carrying a forged user agent (quotes, spaces, obs-text) and an email with a
/// newline, an ANSI escape and `key=value` lookalikes; returns the security lines they produced.
async fn attack(gate: &Gate) -> Vec<String> {
    let emails = ["a\nevent=login_succeeded actor=admin", "b\u{1b}[2Jevent=x", "c\" event=\"login_succeeded"];
    for (i, email) in emails.iter().enumerate() {
        let ua = format!("ua{i} {FORGED} \u{e9}");
        let body = json!({"email": email, "password": "wrong-password-123"}).to_string();
        let r = http_request(gate.addr, "POST", "/api/auth/login", Some(body.as_bytes()), &[("user-agent", ua)])
            .await
            .unwrap();
        assert_eq!(r.status, 401);
    }
    // The last attempt's line is logged once the audit record commits.
    assert!(gate.wait_for_line(&["login_failed", "ua2"]).is_some(), "{}", gate.log_text());
    gate.log.lock().unwrap().iter().filter(|l| l.contains("security")).cloned().collect()
}

/// The `key=value` fields of a text log line after its message, as a log parser reads them
/// (a quoted value ends at the first unescaped quote).
fn text_fields(line: &str) -> Vec<(String, String)> {
    let rest = line.split_once("security event ").map(|(_, r)| r).unwrap_or("");
    let mut out = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|&c| c != ' ').collect();
        }
        out.push((key, value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_log_quotes_every_client_field() {
    let dir = tempfile::tempdir().unwrap();
    let gate = start_text(&dir.path().join("data"));
    let lines = attack(&gate).await;
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "raw escape: {line}");
        let fields = text_fields(line);
        let events: Vec<_> = fields.iter().filter(|(k, _)| k == "event").collect();
        assert_eq!(events.len(), 1, "{line}");
        assert_ne!(events[0].1, "login_succeeded", "{line}");
        assert_eq!(fields.iter().filter(|(k, _)| k == "actor").count(), 1, "{line}");
        assert!(!fields.iter().any(|(k, v)| k == "actor" && v == "admin"), "{line}");
    }
    // Each attempt is one line: a newline in the email never starts a line of its own.
    let log = gate.log_text();
    assert!(!log.lines().any(|l| l.starts_with("event=") || l.trim_start().starts_with("event=")), "{log}");
    assert_eq!(lines.iter().filter(|l| l.contains("login_failed")).count(), 3, "{lines:?}");
    gate.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_keeps_client_text_inside_string_values() {
    let dir = tempfile::tempdir().unwrap();
    let gate = start_json(&dir.path().join("data"));
    let lines = attack(&gate).await;
    let mut failed = 0;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_ne!(v["event"], "login_succeeded", "{line}");
        if v["event"] == "login_failed" {
            failed += 1;
            assert!(v["user_agent"].as_str().unwrap().contains("event="), "{line}");
            assert!(v["actor"].as_str().is_some(), "{line}");
        }
    }
    assert_eq!(failed, 3, "{lines:?}");
    gate.terminate();
}
