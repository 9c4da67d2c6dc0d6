//! Configuration layering and validation.

use std::path::Path;

use miauflix_gate::config::{Config, LogFormat, Overrides, TlsMode};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load_str(toml: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, toml).unwrap();
    Config::load(Some(&path), env(vars), &Overrides::default()).map_err(|e| e.to_string())
}

#[test]
fn defaults_match_the_contract() {
    let c = Config::load(None, env(&[]), &Overrides::default()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8443");
    assert_eq!(c.data_dir, Path::new("./data"));
    assert_eq!(c.tls.mode, TlsMode::SelfSigned);
    assert_eq!(c.http_listen, None);
    assert_eq!(c.master_key_path(), Path::new("./data/master.key"));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.http.max_body_bytes, 65536);
    assert!(c.password.memory_kib >= 19456 && c.password.iterations >= 2 && c.password.parallelism == 1);
}

#[test]
fn layers_apply_in_order_file_env_flags() {
    let toml = "listen = \"127.0.0.1:1000\"\ndata_dir = \"/file\"\n[log]\nlevel = \"debug\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.toml");
    std::fs::write(&path, toml).unwrap();
    let vars = env(&[
        ("MIAUFLIX_LISTEN", "127.0.0.1:2000"),
        ("MIAUFLIX_LOG_FORMAT", "json"),
        ("MIAUFLIX_PASSWORD__ITERATIONS", "3"),
        ("MIAUFLIX_TLS__NAMES", "[\"gate.home.arpa\", \"192.168.1.5\"]"),
        ("MIAUFLIX_CONFIG", "/ignored/by/config"),
        ("OTHER", "x"),
    ]);
    let flags = Overrides { listen: Some("127.0.0.1:3000".into()), tls: Some("off".into()), ..Default::default() };
    let c = Config::load(Some(&path), vars, &flags).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:3000", "flag beats env beats file");
    assert_eq!(c.data_dir, Path::new("/file"));
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.password.iterations, 3);
    assert_eq!(c.tls.names, vec!["gate.home.arpa", "192.168.1.5"]);
    assert_eq!(c.tls.mode, TlsMode::Off);
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let e = load_str("bogus = 1\n", &[]).unwrap_err();
    assert!(e.contains("bogus"), "{e}");
    let e = load_str("[tls]\nmod = \"off\"\n", &[]).unwrap_err();
    assert!(e.contains("tls") && e.contains("mod"), "{e}");
    let e = load_str("", &[("MIAUFLIX_LISTN", "127.0.0.1:1")]).unwrap_err();
    assert!(e.contains("listn"), "{e}");
    let e = load_str("", &[("MIAUFLIX_HTTP__MAX_BODY", "5")]).unwrap_err();
    assert!(e.contains("max_body"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn bad_values_are_errors_naming_the_key() {
    let e = load_str("listen = \"not-an-address\"\n", &[]).unwrap_err();
    assert!(e.contains("listen"), "{e}");
    let e = load_str("", &[("MIAUFLIX_LISTEN", "127.0.0.1:99999")]).unwrap_err();
    assert!(e.contains("listen"), "{e}");
    let e = load_str("[tls]\nmode = \"sometimes\"\n", &[]).unwrap_err();
    assert!(e.contains("tls.mode") && e.contains("sometimes"), "{e}");
    let e = load_str("[password]\nmemory_kib = 1024\n", &[]).unwrap_err();
    assert!(e.contains("password.memory_kib"), "{e}");
    let e = load_str("[password]\niterations = 1\n", &[]).unwrap_err();
    assert!(e.contains("password.iterations"), "{e}");
    let e = load_str("[http]\nmax_body_bytes = -5\n", &[]).unwrap_err();
    assert!(e.contains("http.max_body_bytes"), "{e}");
    let e = load_str("[log]\nlevel = \"[[[\"\n", &[]).unwrap_err();
    assert!(e.contains("log.level"), "{e}");
    let e = load_str("[tls]\nnames = [\"bad name!\"]\n", &[]).unwrap_err();
    assert!(e.contains("tls.names"), "{e}");
}

#[test]
fn tls_off_only_on_loopback() {
    assert!(load_str("listen = \"127.0.0.1:8080\"\n[tls]\nmode = \"off\"\n", &[]).is_ok());
    assert!(load_str("listen = \"[::1]:8080\"\n[tls]\nmode = \"off\"\n", &[]).is_ok());
    let e = load_str("listen = \"0.0.0.0:8080\"\n[tls]\nmode = \"off\"\n", &[]).unwrap_err();
    assert!(e.contains("loopback") && e.contains("tls.mode"), "{e}");
    let e = load_str("listen = \"192.168.1.10:8080\"\n", &[("MIAUFLIX_TLS", "off")]).unwrap_err();
    assert!(e.contains("loopback"), "{e}");
}

#[test]
fn malformed_toml_names_the_line() {
    let e = load_str("listen = \"127.0.0.1:1\"\n\n[tls\nmode = 1\n", &[]).unwrap_err();
    assert!(e.contains("line 3"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let e = Config::load(Some(Path::new("/nonexistent/gate.toml")), env(&[]), &Overrides::default()).unwrap_err();
    assert!(e.msg.contains("/nonexistent/gate.toml"), "{}", e.msg);
}

#[test]
fn acme_and_manual_settings_are_checked_with_the_key_named() {
    let e = load_str("[tls]\nmode = \"acme\"\n", &[]).unwrap_err();
    assert!(e.contains("tls.acme.domains"), "{e}");
    let e = load_str("[tls]\nmode = \"acme\"\n[tls.acme]\ndomains = [\"10.0.0.1\"]\n", &[]).unwrap_err();
    assert!(e.contains("not a public DNS name"), "{e}");
    let e =
        load_str("[tls]\nmode = \"acme\"\n[tls.acme]\ndomains = [\"a.example.org\"]\nchallenge = \"http-01\"\n", &[])
            .unwrap_err();
    assert!(e.contains("http_listen"), "{e}");
    let e = load_str("[tls]\nmode = \"acme\"\n[tls.acme]\ndomains = [\"a.example.org\"]\ncontact = \"me@x\"\n", &[])
        .unwrap_err();
    assert!(e.contains("tls.acme.contact"), "{e}");
    let c =
        load_str("[tls]\nmode = \"acme\"\n[tls.acme]\ndomains = [\"a.example.org\"]\nstaging = true\n", &[]).unwrap();
    assert_eq!(c.tls.acme.directory_url(), miauflix_gate::config::LETS_ENCRYPT_STAGING);
    let c = load_str("[tls]\nmode = \"acme\"\n[tls.acme]\ndomains = [\"a.example.org\"]\n", &[]).unwrap();
    assert_eq!(c.tls.acme.directory_url(), "https://acme-v02.api.letsencrypt.org/directory");
    let e = load_str("[tls]\nmode = \"manual\"\n", &[]).unwrap_err();
    assert!(e.contains("tls.manual.cert_file"), "{e}");
}

#[test]
fn dot_segments_are_found_also_when_encoded() {
    use miauflix_gate::paths::has_dot_segment;
    for p in [
        "/public/../api/users",
        "/public/./x",
        "/public/..",
        "/public/%2e%2e/api",
        "/public/%2E./api",
        "/public/..%2Fapi",
        "/public/..%2fapi",
        "/public/.%2e%5capi",
        "/public/..\\api",
        "/media/%2e",
        "/public/..;x=1/api",
    ] {
        assert!(has_dot_segment(p), "{p} has a dot segment");
    }
    for p in [
        "/",
        "/public/movie.2024.mkv",
        "/public/.hidden",
        "/public/...",
        "/a%20b/c",
        "/a%2",
        "/a%",
        "/x/%2e%2e%2e",
        "/a;b/c",
    ] {
        assert!(!has_dot_segment(p), "{p} has no dot segment");
    }
}

#[test]
fn route_prefixes_must_be_canonical() {
    let route = |prefix: &str| format!("[[routes]]\nprefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:3000\"\n");
    for bad in ["/m%65dia", "/media//x", "/media;x", "/media/%2fx", "/caf%c3%a9"] {
        let e = load_str(&route(bad), &[]).unwrap_err();
        assert!(e.contains("routes[0]") && e.contains("canonical"), "{bad}: {e}");
    }
    for good in ["/media", "/media/", "/caf%C3%A9", "/a+b"] {
        assert!(load_str(&route(good), &[]).is_ok(), "{good}");
    }
}

#[test]
fn forward_auth_headers_are_one_explicit_choice() {
    use miauflix_gate::config::{MethodHeader, UriHeader};
    let c = load_str("", &[]).unwrap();
    assert_eq!(c.forward_auth.uri_header, UriHeader::XOriginalUri, "nginx's snippet works as it is");
    assert_eq!(c.forward_auth.method_header, MethodHeader::XOriginalMethod);
    let c = load_str("[forward_auth]\nuri_header = \"x-forwarded-uri\"\nmethod_header = \"x-forwarded-method\"\n", &[])
        .unwrap();
    assert_eq!(c.forward_auth.uri_header, UriHeader::XForwardedUri);
    assert_eq!(c.forward_auth.method_header, MethodHeader::XForwardedMethod);
    let e = load_str("[forward_auth]\nuri_header = \"x-real-uri\"\n", &[]).unwrap_err();
    assert!(e.contains("forward_auth.uri_header"), "{e}");
}

#[test]
fn config_check_warns_about_a_stricter_route_nested_under_a_looser_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gate.toml");
    let routes = "[[routes]]\nprefix = \"/media\"\nupstream = \"http://127.0.0.1:3000\"\nmin_role = \"public\"\n\
                  [[routes]]\nprefix = \"/media/private\"\nupstream = \"http://127.0.0.1:3001\"\nmin_role = \"admin\"\n\
                  [[routes]]\nprefix = \"/media/open\"\nupstream = \"http://127.0.0.1:3001\"\nmin_role = \"public\"\n";
    std::fs::write(&cfg, routes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_miauflix-gate"))
        .env_clear()
        .args(["config", "check", "--config", cfg.to_str().unwrap()])
        .env("MIAUFLIX_DATA_DIR", dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "a warning, not an error: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "only the stricter nested route: {err}");
    assert!(warnings[0].contains("/media/private") && warnings[0].contains("admin"), "{err}");
    let config = load_str(routes, &[]).unwrap();
    assert_eq!(config.warnings().len(), 1);
}
