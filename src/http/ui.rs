//! The admin web UI at `/admin/`: plain HTML, CSS and ES modules from `assets/ui/`, embedded
//! in the binary at build time. Every file has a strong ETag (its SHA-256) and answers
//! `If-None-Match` with 304; any other path under `/admin/` gets `index.html` (the UI routes
//! in the browser). Nothing is loaded from elsewhere, and the gate's strict CSP applies.

use poem::http::{StatusCode, header};
use poem::{Request, Response, handler};

#[derive(rust_embed::RustEmbed)]
#[folder = "assets/ui/"]
struct Assets;

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Total size of the embedded UI, for the size budget test.
pub fn total_bytes() -> usize {
    Assets::iter().filter_map(|p| Assets::get(&p)).map(|f| f.data.len()).sum()
}

#[handler]
pub fn admin(req: &Request) -> Response {
    let path = req.uri().path().strip_prefix("/admin").unwrap_or("").trim_start_matches('/');
    // A file when one exists (never a directory walk: rust-embed serves only what it holds);
    // else the app shell.
    let (name, file) = match Assets::get(path).filter(|_| !path.is_empty()) {
        Some(f) => (path.to_string(), f),
        None => match Assets::get("index.html") {
            Some(f) => ("index.html".to_string(), f),
            None => return Response::builder().status(StatusCode::NOT_FOUND).finish(),
        },
    };
    let etag = format!("\"{}\"", hex::encode(file.metadata.sha256_hash()));
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let builder = Response::builder()
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::VARY, "Accept-Encoding");
    if matches {
        return builder.status(StatusCode::NOT_MODIFIED).finish();
    }
    builder.header(header::CONTENT_TYPE, content_type(&name)).body(file.data.into_owned())
}
