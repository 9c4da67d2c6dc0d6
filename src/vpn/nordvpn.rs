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

/// Turns NordVPN's answer into servers; entries without a WireGuard key are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<VpnServer>, String> {
    let servers: Vec<Server> = serde_json::from_slice(body).map_err(|e| format!("unexpected answer: {e}"))?;
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
pub async fn fetch(cfg: &NordVpnConfig) -> Result<Vec<VpnServer>, String> {
    let body = tokio::time::timeout(TIMEOUT, get(&url(cfg)))
        .await
        .map_err(|_| format!("no answer from {} within {} s", cfg.api_base, TIMEOUT.as_secs()))??;
    parse(&body)
}

async fn get(url: &str) -> Result<Vec<u8>, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("URL without host")?.to_string();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("URL must be http or https".into()),
    };
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("{host}: {e}"))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, &host)
        .header(hyper::header::USER_AGENT, concat!("miauflix-gate/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    if tls {
        let config = crate::tls::client_config(&[]).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        send(TokioIo::new(stream), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<S>(io: S, req: hyper::Request<Empty<bytes::Bytes>>) -> Result<Vec<u8>, String>
where
    S: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY).collect().await.map_err(|e| e.to_string())?;
    Ok(body.to_bytes().to_vec())
}
