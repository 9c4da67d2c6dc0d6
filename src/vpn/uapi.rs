//! The WireGuard cross-platform UAPI (`/var/run/wireguard/<if>.sock`), spoken by
//! `wireguard-go`: `get=1` reads the device, `set=1` configures it. The private key travels
//! only over this socket (hex, as the protocol wants), never through argv, env or a file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use zeroize::Zeroizing;

/// Where `wireguard-go` puts the control socket of `iface`.
pub fn socket_path(iface: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{iface}.sock"))
}

/// One peer as the device reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub public_key: [u8; 32],
    pub endpoint: Option<String>,
    /// Unix seconds of the latest handshake; `None` before the first.
    pub last_handshake: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The device as the UAPI reports it (the private key is read and dropped at once).
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub listen_port: u16,
    pub fwmark: u32,
    pub has_private_key: bool,
    pub peers: Vec<Peer>,
}

/// What to apply.
pub struct Settings<'a> {
    pub private_key: &'a [u8; 32],
    pub fwmark: u32,
    pub peer_public_key: [u8; 32],
    /// Remove every other peer (a different server is being applied).
    pub replace_peers: bool,
    pub endpoint: std::net::SocketAddr,
    pub allowed_ips: &'a [ipnet::IpNet],
    pub keepalive_secs: u16,
}

const IO_TIMEOUT: Duration = Duration::from_secs(3);

async fn exchange(path: &Path, request: &str) -> std::io::Result<Vec<String>> {
    let run = async {
        let mut stream = UnixStream::connect(path).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                break;
            }
            let line = line.trim_end_matches('\n').to_string();
            if line.is_empty() {
                break;
            }
            lines.push(line);
        }
        Ok(lines)
    };
    tokio::time::timeout(IO_TIMEOUT, run)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "UAPI socket did not answer"))?
}

fn errno(lines: &[String]) -> std::io::Result<()> {
    match lines.iter().rev().find_map(|l| l.strip_prefix("errno=")) {
        Some("0") => Ok(()),
        Some(n) => Err(std::io::Error::other(format!("wireguard refused the configuration (errno {n})"))),
        None => Err(std::io::Error::other("wireguard closed the UAPI socket without an answer")),
    }
}

/// Reads the device.
pub async fn get(path: &Path) -> std::io::Result<Device> {
    let mut lines = exchange(path, "get=1\n\n").await?;
    errno(&lines)?;
    let mut dev = Device::default();
    for line in lines.iter_mut() {
        let line = Zeroizing::new(std::mem::take(line));
        let Some((k, v)) = line.split_once('=') else { continue };
        match k {
            "private_key" => dev.has_private_key = v.bytes().any(|b| b != b'0'),
            "listen_port" => dev.listen_port = v.parse().unwrap_or(0),
            "fwmark" => dev.fwmark = v.parse().unwrap_or(0),
            "public_key" => {
                let mut key = [0u8; 32];
                if hex::decode_to_slice(v, &mut key).is_ok() {
                    dev.peers.push(Peer { public_key: key, ..Default::default() });
                }
            }
            _ => {
                let Some(p) = dev.peers.last_mut() else { continue };
                match k {
                    "endpoint" => p.endpoint = Some(v.to_string()),
                    "last_handshake_time_sec" => p.last_handshake = v.parse().ok().filter(|s| *s > 0),
                    "rx_bytes" => p.rx_bytes = v.parse().unwrap_or(0),
                    "tx_bytes" => p.tx_bytes = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    Ok(dev)
}

/// Applies the key and one peer.
pub async fn set(path: &Path, s: &Settings<'_>) -> std::io::Result<()> {
    use std::fmt::Write;
    let mut req = Zeroizing::new(String::with_capacity(512));
    let _ = write!(
        req,
        "set=1\nprivate_key={}\nfwmark={}\n",
        Zeroizing::new(hex::encode(s.private_key)).as_str(),
        s.fwmark
    );
    if s.replace_peers {
        req.push_str("replace_peers=true\n");
    }
    let _ = write!(
        req,
        "public_key={}\nendpoint={}\npersistent_keepalive_interval={}\nreplace_allowed_ips=true\n",
        hex::encode(s.peer_public_key),
        s.endpoint,
        s.keepalive_secs
    );
    for ip in s.allowed_ips {
        let _ = writeln!(req, "allowed_ip={ip}");
    }
    req.push('\n');
    let lines = exchange(path, &req).await?;
    errno(&lines)
}
