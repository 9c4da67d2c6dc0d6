//! The property each fuzz target checks, shared by the AFL++ binary (`fuzz/src/bin/fuzz.rs`)
//! and by the regression test that replays the committed corpora (`tests/fuzz_corpus.rs`).
//! Every check panics on a violated property; a panic is a crash to AFL++ and a failure to
//! the test.

use std::path::PathBuf;
use std::sync::Arc;

use miauflix_gate::admin::AdminCommand;
use miauflix_gate::auth::stream_keys::StreamKeys;
use miauflix_gate::auth::tokens::SigningKeys;
use miauflix_gate::config::{Config, Overrides};
use miauflix_gate::crypto::keyring::{FieldContext, Keyring};
use miauflix_gate::http::credentials::cookies;
use miauflix_gate::http::middleware::{forwarded_for, parse_node};
use miauflix_gate::http::proxy::{STREAM_KEY_PARAM, stream_key_of, strip_stream_key};
use miauflix_gate::paths::canonical_path;
use miauflix_gate::store::Store;
use poem::http::{HeaderMap, HeaderValue, header};

/// Every target, by the name the fuzz binary and the corpus directories use.
pub const TARGETS: &[&str] =
    &["canonical", "cookies", "forwarded", "jwt", "sealed", "admin_line", "config", "nordvpn", "stream_key", "restore"];

/// What the targets that need keys share: a store in a temporary directory, a keyring, the
/// token signing keys and the stream-key secret. Made once per process.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    keyring: Keyring,
    signing: SigningKeys,
    streams: StreamKeys,
    store: Store,
}

impl Harness {
    pub fn new() -> Arc<Harness> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let keyring = Keyring::from_keys(vec![(1, [7; 32]), (2, [9; 32])]);
        let store = Store::open(&dir.path().join("keys.redb")).unwrap();
        let (signing, streams) = rt.block_on(async {
            let signing = SigningKeys::load_or_init(&store, &keyring, "miauflix-gate", "miauflix", 900).await.unwrap();
            let streams = StreamKeys::load_or_init(&store, &keyring).await.unwrap();
            (signing, streams)
        });
        Arc::new(Harness { rt, dir, keyring, signing, streams, store })
    }

    fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.rt.block_on(self.store.close());
    }
}

/// Runs `target`'s property on `data`.
pub fn check(h: &Harness, target: &str, data: &[u8]) {
    match target {
        "canonical" => canonical(data),
        "cookies" => cookie_header(data),
        "forwarded" => forwarded(data),
        "jwt" => jwt(h, data),
        "sealed" => sealed(h, data),
        "admin_line" => admin_line(data),
        "config" => config(h, data),
        "nordvpn" => nordvpn(data),
        "stream_key" => stream_key(h, data),
        "restore" => restore(h, data),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// The canonical path is idempotent, and what it refuses stays refused in any spelling it
/// produces: no `//`, no dot segment, no `;`, no `\`, no raw non-ASCII.
fn canonical(data: &[u8]) {
    let Some(path) = text(data) else { return };
    let Some(c) = canonical_path(path) else { return };
    assert_eq!(canonical_path(&c).as_deref(), Some(&*c), "not idempotent for {path:?}");
    assert!(c.starts_with('/'));
    assert!(c.is_ascii() && !c.contains(';') && !c.contains('\\'), "{path:?} -> {c:?}");
    let inner = c.strip_suffix('/').unwrap_or(&c);
    for seg in inner.split('/').skip(1) {
        assert!(!seg.is_empty() || inner.is_empty(), "empty segment in {c:?}");
        assert!(seg != "." && seg != "..", "dot segment in {c:?}");
    }
}

/// Printing the parsed pairs as one `Cookie` header and parsing again gives the same pairs,
/// and the bounds hold.
fn cookie_header(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, value);
    let pairs = cookies(&headers);
    assert!(pairs.len() <= 64);
    for (name, value) in &pairs {
        assert!(!name.contains(['=', ';']) && !value.contains(';') && value.len() <= 4096, "{name:?}={value:?}");
    }
    let printed = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join(";");
    let mut again = HeaderMap::new();
    again.insert(header::COOKIE, HeaderValue::from_str(&printed).unwrap());
    assert_eq!(cookies(&again), pairs, "{printed:?}");
}

/// A node that parses prints back to itself (bare, and IPv6 in brackets with a port); the
/// `for=` of a `Forwarded` element agrees with parsing its value.
fn forwarded(data: &[u8]) {
    let Some(hop) = text(data) else { return };
    if let Some(ip) = parse_node(hop) {
        assert_eq!(parse_node(&ip.to_string()), Some(ip), "{hop:?}");
        let with_port = match ip {
            std::net::IpAddr::V4(v4) => format!("{v4}:8080"),
            std::net::IpAddr::V6(v6) => format!("[{v6}]:8080"),
        };
        assert_eq!(parse_node(&with_port), Some(ip));
        assert_eq!(forwarded_for(&format!("for=\"{with_port}\";proto=https")), Some(ip));
    }
    let _ = forwarded_for(hop);
}

/// Arbitrary text never verifies; a token the gate signed verifies to its claims, and any
/// one changed byte in it makes it fail.
fn jwt(h: &Harness, data: &[u8]) {
    if let Some(t) = text(data) {
        assert!(h.signing.verify(t).is_err(), "a fuzzed token verified: {t:?}");
    }
    let (Some(&pos), Some(&flip)) = (data.first(), data.get(1)) else { return };
    let sub: String = data.iter().skip(2).take(40).map(|b| char::from(b'a' + b % 26)).collect();
    let claims = h.signing.claims(&sub, "00112233445566778899aabbccddeeff", "user", miauflix_gate::clock::now());
    let token = h.signing.sign(&claims).unwrap();
    let back = h.signing.verify(&token).expect("its own token verifies");
    assert_eq!((back.sub, back.sid, back.role), (claims.sub, claims.sid, claims.role));
    let mut bytes = token.into_bytes();
    let i = pos as usize % bytes.len();
    bytes[i] ^= flip.max(1);
    if let Ok(t) = String::from_utf8(bytes) {
        assert!(h.signing.verify(&t).is_err(), "a changed byte at {i} still verifies");
    }
}

/// Arbitrary bytes never open; open(seal(x)) = x; a changed byte never opens; the same
/// ciphertext never opens under another field's context.
fn sealed(h: &Harness, data: &[u8]) {
    let ctx = FieldContext::new("users", "totp", "0123");
    if h.keyring.decrypt(&ctx, data).is_ok() {
        panic!("fuzzed bytes opened");
    }
    let sealed = h.keyring.encrypt(&ctx, data).unwrap();
    assert_eq!(&h.keyring.decrypt(&ctx, &sealed).unwrap()[..], data);
    assert!(h.keyring.decrypt(&FieldContext::new("users", "totp", "0124"), &sealed).is_err());
    let (Some(&pos), Some(&flip)) = (data.first(), data.get(1)) else { return };
    let mut tampered = sealed.clone();
    let i = pos as usize % tampered.len();
    tampered[i] ^= flip.max(1);
    assert!(h.keyring.decrypt(&ctx, &tampered).is_err(), "a changed byte at {i} still opens");
}

/// The admin socket's one request line: a command, or one clear line of error (never a
/// panic); a command prints as one line and reads back to the same command.
fn admin_line(data: &[u8]) {
    let cmd = match AdminCommand::from_line(data) {
        Ok(cmd) => cmd,
        Err(e) => {
            assert!(!e.is_empty() && !e.contains(['\n', '\r']), "one line of error: {e:?}");
            assert!(e.len() <= 2048, "a bounded error: {} bytes", e.len());
            return;
        }
    };
    let printed = serde_json::to_string(&cmd).unwrap();
    assert!(!printed.contains('\n'), "one request is one line");
    let again = AdminCommand::from_line(printed.as_bytes()).unwrap();
    assert_eq!(serde_json::to_string(&again).unwrap(), printed);
}

/// A TOML file is loaded and validated or refused with an error that names a key; never a
/// panic.
fn config(h: &Harness, data: &[u8]) {
    let path = h.scratch("gate.toml");
    std::fs::write(&path, data).unwrap();
    let flags = Overrides { data_dir: Some(h.scratch("data")), ..Default::default() };
    if let Err(e) = Config::load(Some(&path), Vec::new(), &flags) {
        assert!(!e.to_string().is_empty());
    }
}

/// NordVPN's answer: every server taken has a name and a WireGuard key.
fn nordvpn(data: &[u8]) {
    if let Ok(servers) = miauflix_gate::vpn::nordvpn::parse(data) {
        for s in servers {
            assert!(!s.name.is_empty() && !s.public_key.is_empty(), "{s:?}");
        }
    }
}

/// Stream keys: a fuzzed key never verifies; a signed one parses to its claims and verifies
/// for paths under its prefix only; a changed byte fails; the query parameter is found, and
/// gone after stripping.
fn stream_key(h: &Harness, data: &[u8]) {
    let now = 1_700_000_000;
    let Some(t) = text(data) else { return };
    assert!(h.streams.verify(t, "u1", "/media/a", now).is_none(), "a fuzzed key verified: {t:?}");
    let _ = StreamKeys::parse(t);
    // The query string as an attacker sends it: the key is never left in what goes upstream.
    let stripped = strip_stream_key(t);
    assert_eq!(stream_key_of(&stripped), None, "{t:?} -> {stripped:?}");
    if let Some(key) = stream_key_of(t) {
        assert!(t.split('&').any(|p| p == format!("{STREAM_KEY_PARAM}={key}")));
    }
    // A signed key for a prefix taken from the input.
    let name: String = t.chars().filter(|c| c.is_ascii_alphanumeric()).take(20).collect();
    let prefix = format!("/media/a{name}");
    let token = h.streams.sign("u1", "00112233445566778899aabbccddeeff", &prefix, now + 60);
    let claims = StreamKeys::parse(&token).unwrap();
    assert_eq!((claims.prefix.as_str(), claims.expires_at), (prefix.as_str(), now + 60));
    assert!(h.streams.verify(&token, "u1", &format!("{prefix}/x"), now).is_some());
    assert!(h.streams.verify(&token, "u2", &format!("{prefix}/x"), now).is_none(), "another user's key");
    assert!(h.streams.verify(&token, "u1", &format!("{prefix}x"), now).is_none(), "a sibling of the prefix");
    assert!(h.streams.verify(&token, "u1", &format!("{prefix}/x"), now + 61).is_none(), "expired");
    let (Some(&pos), Some(&flip)) = (data.first(), data.get(1)) else { return };
    let mut bytes = token.into_bytes();
    let i = pos as usize % bytes.len();
    bytes[i] ^= flip.max(1);
    if let Ok(changed) = String::from_utf8(bytes) {
        assert!(h.streams.verify(&changed, "u1", &format!("{prefix}/x"), now).is_none(), "byte {i} changed");
    }
}

/// A backup given to `restore`: the data file check (redb's integrity check, the schema
/// version) refuses garbage with an error, never a panic.
fn restore(h: &Harness, data: &[u8]) {
    let path = h.scratch("restore.redb");
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, data).unwrap();
    if let Ok(store) = Store::open(&path) {
        h.rt.block_on(store.close());
    }
}
