//! `provider = "nordvpn"`: the server list from NordVPN's recommendation API
//! (`/v1/servers/recommendations`, WireGuard servers only): name, station address (UDP port
//! 51820) and the NordLynx public key from the `wireguard_udp` technology's metadata.
//! A small hyper + rustls GET (the gate's TLS client configuration): the gate has no general HTTP client crate and
//! needs none for one JSON request a day.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use super::config::{NordVpnConfig, VpnServer};

const MAX_BODY: usize = 4 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(20);
const NORDLYNX_PORT: u16 = 51820;

#[derive(Deserialize)]
struct Server {
    #[serde(default)]
    name: String,
    #[serde(default)]
    hostname: String,
    station: String,
    #[serde(default)]
    technologies: Vec<Technology>,
}

#[derive(Deserialize)]
struct Technology {
    identifier: String,
    #[serde(default)]
    metadata: Vec<Metadata>,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    value: String,
}

/// The recommendation URL for `cfg`.
pub fn url(cfg: &NordVpnConfig) -> String {
    let mut u = format!(
        "{}/v1/servers/recommendations?filters%5Bservers_technologies%5D%5Bidentifier%5D=wireguard_udp&limit={}",
        cfg.api_base.trim_end_matches('/'),
        cfg.limit
    );
    if let Some(c) = cfg.country_id {
        u.push_str(&format!("&filters%5Bcountry_id%5D={c}"));
    }
    u
}

/// Why the server list could not be fetched; the supervisor logs it and keeps the last list.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL: {0}")]
    Url(#[from] hyper::http::uri::InvalidUri),
    #[error("URL must be http(s)://host/…")]
    UrlShape,
    #[error("no answer from {0} within {1} s")]
    Timeout(String, u64),
    #[error("{host}: {source}")]
    Connect { host: String, source: std::io::Error },
    #[error("TLS with {host}: {source}")]
    Tls { host: String, source: std::io::Error },
    #[error("TLS client: {0}")]
    ClientConfig(String),
    #[error("not a TLS server name: {0}")]
    Name(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP {0}")]
    Status(hyper::StatusCode),
    #[error("answer body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("unexpected answer: {0}")]
    Answer(#[from] serde_json::Error),
}

/// Turns NordVPN's answer into servers; entries without a WireGuard key are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<VpnServer>, FetchError> {
    let servers: Vec<Server> = serde_json::from_slice(body)?;
    let mut out = Vec::new();
    for s in servers {
        let Some(key) = s
            .technologies
            .iter()
            .filter(|t| t.identifier == "wireguard_udp")
            .flat_map(|t| t.metadata.iter())
            .find(|m| m.name == "public_key")
            .map(|m| m.value.clone())
        else {
            continue;
        };
        let Ok(ip) = s.station.parse::<std::net::IpAddr>() else { continue };
        let name = if !s.hostname.is_empty() { s.hostname } else { s.name };
        let server = VpnServer {
            name: name.chars().take(64).collect(),
            endpoint: std::net::SocketAddr::new(ip, NORDLYNX_PORT).to_string(),
            public_key: key,
            allowed_ips: vec!["0.0.0.0/0".parse().expect("static CIDR")],
        };
        if server.check().is_ok() {
            out.push(server);
        }
    }
    Ok(out)
}

/// Fetches and parses the list.
pub async fn fetch(cfg: &NordVpnConfig) -> Result<Vec<VpnServer>, FetchError> {
    let body = tokio::time::timeout(TIMEOUT, get(&url(cfg)))
        .await
        .map_err(|_| FetchError::Timeout(cfg.api_base.clone(), TIMEOUT.as_secs()))??;
    parse(&body)
}

async fn get(url: &str) -> Result<Vec<u8>, FetchError> {
    let uri: hyper::Uri = url.parse()?;
    let host = uri.host().ok_or(FetchError::UrlShape)?.to_string();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(FetchError::UrlShape),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| FetchError::Connect { host: host.clone(), source })?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, &host)
        .header(hyper::header::USER_AGENT, concat!("miauflix-gate/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())?;
    if tls {
        let config = crate::tls::client_config(&[]).map_err(|e| FetchError::ClientConfig(format!("{e:#}")))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|source| FetchError::Tls { host: host.clone(), source })?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<S>(io: S, req: hyper::Request<Empty<bytes::Bytes>>) -> Result<Vec<u8>, FetchError>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(FetchError::Body)?;
    Ok(body.to_bytes().to_vec())
}
