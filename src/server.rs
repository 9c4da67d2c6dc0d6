//! `serve`: opens everything in order, binds the listeners, runs until SIGTERM/SIGINT,
//! then drains in-flight requests, flushes the writer and closes the store.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use poem::listener::TcpAcceptor;

use crate::audit::Audit;
use crate::auth::setup::{SetupState, ensure_setup_token};
use crate::config::{Config, TlsMode};
use crate::core::{Core, Opening};
use crate::crypto::Keyring;
use crate::http::{AppState, build_app};
use crate::store::Store;
use crate::tls::self_signed::{self, CertSlot};
use crate::tls::status::TlsStatus;

/// Everything opened before the listeners start.
pub struct Opened {
    pub state: Arc<AppState>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With ACME: the HTTP-01 answers and the TLS-ALPN-01 configuration.
    pub acme: Option<crate::tls::acme::AcmeParts>,
}

type TlsOpened = (Option<Arc<rustls::ServerConfig>>, Arc<TlsStatus>, Option<crate::tls::acme::AcmeParts>);

/// The main listener's TLS: the certificate source for the mode, its status, and (for
/// ACME and manual) the background tasks that renew, reload and warn.
async fn open_tls(config: &Config, store: &Store, keyring: &Arc<Keyring>, audit: &Audit) -> anyhow::Result<TlsOpened> {
    let mode = config.tls.mode;
    if mode == TlsMode::Off {
        return Ok((None, Arc::new(TlsStatus::new("off", "off", None)), None));
    }
    if mode == TlsMode::Manual {
        let (cert_file, key_file) = match (&config.tls.manual.cert_file, &config.tls.manual.key_file) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => anyhow::bail!("tls.manual.cert_file and tls.manual.key_file are required"),
        };
        let (certified, facts) = crate::tls::manual::load_pair(&cert_file, &key_file).map_err(anyhow::Error::msg)?;
        tracing::info!(serial = %facts.serial, names = %facts.names.join(","), sha256 = %facts.fingerprint, "serving the manual certificate");
        let status = Arc::new(TlsStatus::new("manual", "manual", Some(facts)));
        let slot = CertSlot::new(certified);
        crate::tls::manual::watch(cert_file, key_file, slot.clone(), status.clone(), audit.clone());
        crate::tls::manual::expiry_watch(status.clone(), audit.clone());
        let tls = crate::tls::server_config(slot).context("building the TLS configuration")?;
        return Ok((Some(Arc::new(tls)), status, None));
    }
    // Self-signed, and ACME's stand-in until its first certificate arrives.
    let mut extra = config.tls.names.clone();
    if mode == TlsMode::Acme {
        extra.extend(config.tls.acme.domains.iter().cloned());
    }
    let names = self_signed::default_names(config.listen.ip(), &extra);
    let cert = self_signed::load_or_create(store, keyring, names).await?;
    let fp = crate::tls::fingerprint(&cert.cert_der);
    let pem_path = config.data_dir.join("self-signed.pem");
    // A new file renamed into place: a symlink planted at the name is replaced, not followed.
    crate::store::files::Replacement::new(&pem_path, 0o644)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, cert.cert_pem().as_bytes())?;
            f.commit()
        })
        .with_context(|| format!("cannot write {}", pem_path.display()))?;
    let facts = crate::tls::status::CertFacts::from_der(&cert.cert_der).ok();
    let slot = CertSlot::new(cert.certified.clone());
    let tls = Arc::new(crate::tls::server_config(slot.clone()).context("building the TLS configuration")?);
    if mode == TlsMode::SelfSigned {
        tracing::info!(
            sha256 = %fp,
            names = %cert.names.join(","),
            new = cert.created,
            pem = %pem_path.display(),
            "serving a self-signed certificate; browsers will warn until you trust it or switch to acme"
        );
        return Ok((Some(tls), Arc::new(TlsStatus::new("self-signed", "self-signed", facts)), None));
    }
    let status = Arc::new(TlsStatus::new("acme", "acme-pending", facts));
    let parts =
        crate::tls::acme::start(&config.tls.acme, store.clone(), keyring.clone(), slot, status.clone(), audit.clone())?;
    crate::tls::manual::expiry_watch(status.clone(), audit.clone());
    Ok((Some(tls), status, Some(parts)))
}

/// Opens the core, the certificate and the setup token, and builds the HTTP state.
pub async fn open(config: Config) -> anyhow::Result<Opened> {
    let core = Core::open(config, Opening::Serve).await?;
    let config = core.config.clone();
    let audit = core.audit.clone();
    let (tls, tls_status, acme) = open_tls(&config, &core.store, &core.keyring, &audit).await?;
    note_config_change(&core.store, &audit, &config).await?;
    match ensure_setup_token(!core.auth.setup_required(), &config.setup_token_path())? {
        SetupState::Pending => {
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::warn!(
                url = %format!("{scheme}://{}/api/docs", display_host(config.listen)),
                token_file = %config.setup_token_path().display(),
                "no admin account yet: create it with POST /api/auth/setup (try it from the API docs at the URL) using the one-time token in the token file"
            );
        }
        SetupState::Done => {}
    }

    let metrics_token = match &config.metrics.token_file {
        Some(path) => Some(read_metrics_token(path)?),
        None => None,
    };
    let limits = Arc::new(crate::ratelimit::RateLimits::new(&config.rate_limits));
    let vpn = core.vpn.clone().context("a serving core runs the VPN supervisor")?;
    let tunnels = crate::http::tunnel::Tunnels::new(
        config.http.max_tunnels,
        config.http.max_tunnels_per_address,
        std::time::Duration::from_secs(config.http.tunnel_idle_timeout_secs),
    );
    let proxy = crate::http::proxy::Proxy::new(
        &config.routes,
        config.http.max_upstream_requests,
        tunnels,
        core.auth.clone(),
        core.secrets.clone(),
    )?;
    let state = Arc::new(AppState {
        core,
        limits,
        proxy: Arc::new(proxy),
        vpn,
        started: Instant::now(),
        tls: tls_status,
        metrics_token,
    });
    // A full chain check in the background, so the dashboard has a status from the start.
    tokio::task::spawn_blocking(move || {
        if let Ok(r) = audit.verify() {
            tracing::info!(ok = r.ok, records = r.checked, "audit chain verified");
        }
    });
    Ok(Opened { state, tls, acme })
}

/// Reads the Prometheus scraper token; it must be a long random string in a private file.
fn read_metrics_token(path: &std::path::Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read metrics.token_file {}", path.display()))?,
    );
    let token = zeroize::Zeroizing::new(text.trim().to_string());
    if token.len() < 32 || token.chars().any(char::is_whitespace) {
        anyhow::bail!("metrics.token_file {} must hold one token of at least 32 characters", path.display());
    }
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o007 != 0
    {
        anyhow::bail!("metrics.token_file {} is readable by others; chmod 640 it", path.display());
    }
    Ok(token)
}

/// Records `config_changed` when the effective configuration differs from the last run's,
/// naming the sections that changed (values are not logged: they may name secret files).
async fn note_config_change(store: &Store, audit: &crate::audit::Audit, config: &Config) -> anyhow::Result<()> {
    const KEY: &str = "effective_config";
    let current = serde_json::to_value(config).context("encoding the configuration")?;
    let previous: Option<serde_json::Value> =
        store.get_meta(KEY).context("reading the last configuration")?.and_then(|v| serde_json::from_slice(&v).ok());
    if previous.as_ref() == Some(&current) {
        return Ok(());
    }
    if let (Some(serde_json::Value::Object(old)), serde_json::Value::Object(new)) = (&previous, &current) {
        let mut changed: Vec<&str> =
            new.iter().filter(|(k, v)| old.get(k.as_str()) != Some(*v)).map(|(k, _)| k.as_str()).collect();
        changed.extend(old.keys().filter(|k| !new.contains_key(k.as_str())).map(String::as_str));
        let client = crate::audit::ClientInfo { ip: "local".into(), ..Default::default() };
        crate::audit::SecurityEvent::new(crate::audit::EventKind::ConfigChanged, crate::audit::Severity::Info, &client)
            .actor("system")
            .detail("sections", changed.join(","))
            .record(audit)
            .await;
    }
    let bytes = serde_json::to_vec(&current).context("encoding the configuration")?;
    store.put_meta(KEY, Some(bytes)).await.context("saving the configuration fingerprint")?;
    Ok(())
}

fn display_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("localhost:{}", addr.port()) } else { addr.to_string() }
}

/// Resolves when SIGTERM or SIGINT arrives. The handlers are registered when this is
/// called, not when first polled, so a signal sent right after startup is never missed.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}

/// Runs the gate until a shutdown signal.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let signal = shutdown_signal()?;
    let Opened { state, tls, acme } = open(config).await?;
    let config = state.config.clone();

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let tcp = TcpAcceptor::from_tokio(listener).context("preparing the listener")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Idle rate-limit keys are evicted so memory stays bounded.
    let limits = state.limits.clone();
    state.core.every("rate-limit eviction", Duration::from_secs(60), move || {
        limits.evict_idle();
        std::future::ready(())
    });
    // Audit retention, at startup and then every `prune_interval_secs`.
    let audit = state.core.audit.clone();
    let cfg = config.audit.clone();
    state.core.every("audit retention", Duration::from_secs(cfg.prune_interval_secs), move || {
        let audit = audit.clone();
        async move {
            if let Err(e) = audit.prune(cfg.retention_days, cfg.max_events).await {
                tracing::error!(error = %e, "audit retention failed");
            }
        }
    });
    // Admin commands from the CLI (root and the service user only).
    let admin_path = config.admin_socket_path();
    let admin = crate::admin::socket::bind(state.core.clone(), admin_path.clone())?;
    state.core.spawn("admin socket", admin);
    let grace = Some(Duration::from_secs(config.http.shutdown_grace_secs));
    let idle = Duration::from_secs(config.http.idle_timeout_secs);
    let app = build_app(state.clone());
    let edge = Arc::new(crate::http::middleware::EdgePolicy::new(state.clone()));
    // One set of connection caps for every listener: they share the descriptor limit.
    let caps = crate::http::serve::ConnectionCaps::new(
        config.http.max_connections,
        config.http.max_connections_per_ip,
        config.http.trusted_proxies.clone(),
    );

    let redirect = match config.http_listen {
        Some(addr) if tls.is_some() => {
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            let http_bound = listener.local_addr().context("reading the bound address")?;
            let acceptor = TcpAcceptor::from_tokio(listener).context("preparing the listener")?;
            tracing::info!(addr = %http_bound, "plain HTTP listener redirects to https");
            let app = crate::http::redirect::app(bound.port(), acme.as_ref().map(|a| a.resolver.clone()));
            let stop = wait_stop(stop_rx.clone());
            // The same connection loop as the main listener (idle timeout, request-head
            // deadline, graceful shutdown), without the proxy.
            Some(tokio::spawn(crate::http::serve::run(acceptor, caps.clone(), None, app, idle, stop, grace)))
        }
        _ => None,
    };

    let main = {
        let stop = wait_stop(stop_rx.clone());
        match tls {
            Some(tls) => {
                let acceptor =
                    crate::tls::TlsAcceptor::new(tcp, tls, Duration::from_secs(config.tls.handshake_timeout_secs))
                        .with_acme_challenge(acme.as_ref().map(|a| a.challenge_config.clone()));
                log_listening("https", bound, started);
                tokio::spawn(crate::http::serve::run(acceptor, caps, Some(edge), app, idle, stop, grace))
            }
            None => {
                log_listening("http", bound, started);
                tokio::spawn(crate::http::serve::run(tcp, caps, Some(edge), app, idle, stop, grace))
            }
        }
    };

    signal.await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    let main_result = main.await;
    if let Some(r) = redirect {
        let _ = r.await;
    }
    state.core.shutdown().await;
    let _ = std::fs::remove_file(&admin_path);
    tracing::info!("stopped cleanly");
    match main_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::from(e).context("server failed")),
        Err(e) => Err(anyhow::anyhow!("server task failed: {e}")),
    }
}

fn log_listening(scheme: &str, bound: SocketAddr, started: Instant) {
    tracing::info!(
        url = %format!("{scheme}://{}", display_host(bound)),
        addr = %bound,
        startup_ms = started.elapsed().as_millis() as u64,
        "miauflix-gate {} listening",
        env!("CARGO_PKG_VERSION")
    );
}
