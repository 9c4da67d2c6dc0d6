//! The gate in process: the real `server::open` on a data directory of its own (plain HTTP on
//! loopback), driven through poem's test client, or served over real TCP by the gate's own
//! connection loop (`http::serve::run`, the edge policy included) when a test needs real
//! client addresses or connections.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use miauflix_gate::config::{Config, Overrides};
use miauflix_gate::http::{AppState, build_app};
use poem::endpoint::BoxEndpoint;
use poem::test::TestClient;

/// The poem test client over the whole application.
pub type Client = TestClient<BoxEndpoint<'static>>;

/// An opened gate and the directory it keeps its data in (removed on drop).
pub struct App {
    pub state: Arc<AppState>,
    pub dir: tempfile::TempDir,
}

/// The state of a gate whose data lives in `<dir>/data`: optional TOML (written to
/// `<dir>/gate.toml`), then `env` (`MIAUFLIX_*` pairs), TLS off, listening on loopback.
pub async fn open_in(dir: &Path, toml: Option<&str>, env: &[(&str, &str)]) -> Arc<AppState> {
    let file = toml.map(|t| {
        let file = dir.join("gate.toml");
        std::fs::write(&file, t).unwrap();
        file
    });
    let flags =
        Overrides { data_dir: Some(dir.join("data")), listen: Some("127.0.0.1:0".into()), tls: Some("off".into()) };
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let config = Config::load(file.as_deref(), env, &flags).unwrap();
    miauflix_gate::server::open(config).await.unwrap().state
}

impl App {
    /// A gate on a fresh data directory (see [`open_in`]).
    pub async fn open(toml: Option<&str>, env: &[(&str, &str)]) -> App {
        let dir = tempfile::tempdir().unwrap();
        let state = open_in(dir.path(), toml, env).await;
        App { state, dir }
    }

    /// The test client, with `Host: gate.test`.
    pub fn client(&self) -> Client {
        client(&self.state)
    }

    /// Serves the application on a free loopback port with the gate's own connection loop.
    pub async fn serve(&self) -> SocketAddr {
        serve(self.state.clone()).await
    }
}

/// The test client over `state`, with `Host: gate.test`.
pub fn client(state: &Arc<AppState>) -> Client {
    TestClient::new(poem::EndpointExt::boxed(build_app(state.clone()))).default_header("host", "gate.test")
}

/// Serves `state` on a free loopback port with `http::serve::run`, as `serve` does.
pub async fn serve(state: Arc<AppState>) -> SocketAddr {
    use miauflix_gate::http::{middleware::EdgePolicy, serve::ConnectionCaps};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = poem::listener::TcpAcceptor::from_tokio(listener).unwrap();
    let http = &state.config.http;
    let caps = ConnectionCaps::new(http.max_connections, http.max_connections_per_ip, http.trusted_proxies.clone());
    let idle = Duration::from_secs(http.idle_timeout_secs);
    let edge = Arc::new(EdgePolicy::new(state.clone()));
    let app = build_app(state);
    tokio::spawn(miauflix_gate::http::serve::run(acceptor, caps, Some(edge), app, idle, std::future::pending(), None));
    addr
}
