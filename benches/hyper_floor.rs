//! The floor under `just bench-proxy`: the cheapest reverse proxy the gate's stack can be — a
//! hyper HTTP/1.1 server on tokio forwarding every request down one upstream connection per
//! client connection (the gate's own layout), with no edge work at all: no auth, no rate
//! limits, no headers, no routing, no timeout. `benches/proxy.sh` runs it beside nginx and the
//! gate so the same run shows what hyper + tokio alone cost per request.
//!
//! Usage: `hyper_floor LISTEN UPSTREAM` (both `host:port`); runs until killed.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

type Sender = hyper::client::conn::http1::SendRequest<Incoming>;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
    let upstream: Arc<str> = upstream.into();
    loop {
        let Ok((socket, _)) = listener.accept().await else { continue };
        let _ = socket.set_nodelay(true);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // One upstream connection per client connection, dialled on first use.
            let slot: Arc<tokio::sync::Mutex<Option<Sender>>> = Default::default();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                let (slot, upstream) = (slot.clone(), upstream.clone());
                async move {
                    let mut slot = slot.lock().await;
                    if slot.as_ref().is_none_or(|s| s.is_closed()) {
                        let stream = tokio::net::TcpStream::connect(&*upstream).await.expect("connect upstream");
                        let _ = stream.set_nodelay(true);
                        let (sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
                        tokio::spawn(conn);
                        *slot = Some(sender);
                    }
                    let sender = slot.as_mut().expect("dialled above");
                    sender.ready().await.expect("upstream ready");
                    let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
                    *req.uri_mut() = pq.parse().expect("origin form");
                    let resp = sender.send_request(req).await.expect("upstream answer");
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service).await;
        });
    }
}
