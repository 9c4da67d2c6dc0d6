//! Static files as a route kind (`static_dir`): a built single-page app served from a
//! directory, after the same edge steps as a proxied route (role, rate limits, headers).
//!
//! Written here rather than with poem's `StaticFilesEndpoint`/`StaticFileRequest` or
//! tower-http's `ServeDir` because all of them open the file by its name, following symlinks,
//! after any check one could make: containment can only be checked on the file actually
//! opened. So the file is resolved (`canonicalize`, per request, so a swapped release symlink
//! or a symlink planted later is seen), opened `O_NOFOLLOW` and checked again through
//! `/proc/self/fd`, then served from that descriptor. Neither serves precompressed siblings
//! with ETags and a 416 for an unsatisfiable range (poem answers 200), nor the SPA rule; the
//! parts that are decisions (ranges, `If-None-Match`, `Accept-Encoding`, hashed names) are pure
//! functions with unit tests below.

use std::fs::{File, Metadata};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use http_body_util::BodyExt;
use poem::http::header::{self, HeaderMap, HeaderValue};
use poem::http::{Method, StatusCode};

use super::{ProxiedBody, ProxyBody};
use crate::http::problem::ApiError;

/// The index file of a directory, and the SPA's shell.
const INDEX: &str = "index.html";
/// For hashed asset names: the name changes whenever the content does.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const IMMUTABLE_PRIVATE: &str = "private, max-age=31536000, immutable";

/// A route's directory.
pub struct StaticDir {
    root: PathBuf,
    spa_fallback: bool,
    /// A route above `public`: answers are `private` to shared caches.
    private: bool,
}

/// A file resolved inside the root and opened.
struct Opened {
    file: File,
    meta: Metadata,
    /// The name the content type is guessed from (without a `.br`/`.gz` sibling's suffix).
    name: String,
    encoding: Option<&'static str>,
}

/// What resolving a path found.
enum Found {
    File(Box<Opened>),
    Missing,
    /// Outside the root (a symlink out of it), not a regular file, or unreadable.
    Refused,
}

impl StaticDir {
    pub fn new(root: PathBuf, spa_fallback: bool, private: bool) -> StaticDir {
        StaticDir { root, spa_fallback, private }
    }

    /// Answers a request whose canonical path below the route's prefix is `rest`.
    pub async fn serve(
        &self,
        method: &Method,
        headers: &HeaderMap,
        rest: &str,
    ) -> Result<hyper::Response<ProxiedBody>, ApiError> {
        if *method != Method::GET && *method != Method::HEAD {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "Only GET and HEAD are allowed here.",
            )
            .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        }
        let segments = segments(rest).ok_or_else(ApiError::not_found)?;
        let last_has_ext = segments.last().is_some_and(|s| s.contains('.'));
        let encodings = accepted_encodings(headers);
        let root = self.root.clone();
        let fallback = self.spa_fallback && !last_has_ext && accepts_html(headers);
        let found = tokio::task::spawn_blocking(move || {
            let root = std::fs::canonicalize(&root)?;
            let mut path = root.clone();
            path.extend(&segments);
            match open_in(&root, &path, encodings)? {
                // A path refused (a symlink out of the directory) answers as a missing one does,
                // so the fallback tells nothing of what exists outside.
                Found::Missing | Found::Refused if fallback => {
                    Ok::<_, io::Error>((open_in(&root, &root.join(INDEX), encodings)?, true))
                }
                found => Ok((found, false)),
            }
        })
        .await
        .map_err(|_| ApiError::internal())?;
        let (opened, shell) = match found {
            Ok((Found::File(f), shell)) => (f, shell),
            Ok((Found::Missing, _)) => return Err(ApiError::not_found()),
            Ok((Found::Refused, _)) => {
                tracing::debug!(path = rest, "static file refused (outside the directory or not a regular file)");
                return Err(ApiError::not_found());
            }
            Err(e) => {
                tracing::warn!(error = %e, "static directory unreadable");
                return Err(ApiError::not_found());
            }
        };
        self.answer(method, headers, opened, shell)
    }

    fn answer(
        &self,
        method: &Method,
        headers: &HeaderMap,
        opened: Box<Opened>,
        shell: bool,
    ) -> Result<hyper::Response<ProxiedBody>, ApiError> {
        let Opened { mut file, meta, name, encoding } = *opened;
        let len = meta.len();
        let etag = etag_of(&meta, encoding);
        // A route above `public` answers for one user: never stored by a shared cache.
        let revalidate = if self.private { "private, no-cache" } else { "no-cache" };
        let cache = if shell || name == INDEX {
            revalidate
        } else if is_hashed_name(&name) {
            if self.private { IMMUTABLE_PRIVATE } else { IMMUTABLE }
        } else {
            revalidate
        };
        let mut resp = hyper::Response::builder()
            .header(header::ETAG, &etag)
            .header(header::CACHE_CONTROL, cache)
            .header(header::VARY, "Accept-Encoding");
        let not_modified = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| etag_matches(v, &etag));
        if not_modified {
            return resp.status(StatusCode::NOT_MODIFIED).body(empty()).map_err(|_| ApiError::internal());
        }
        resp = resp.header(header::CONTENT_TYPE, content_type(&name)).header(header::ACCEPT_RANGES, "bytes");
        if let Some(enc) = encoding {
            resp = resp.header(header::CONTENT_ENCODING, enc);
        }
        // A range applies unless `If-Range` names another version.
        let if_range_ok = headers.get(header::IF_RANGE).is_none_or(|v| v.to_str().is_ok_and(|v| v == etag));
        let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
            Some(spec) if if_range_ok => byte_range(spec, len),
            _ => RangeAnswer::Whole,
        };
        let (start, count) = match range {
            RangeAnswer::Whole => (0, len),
            RangeAnswer::Part(a, b) => {
                resp = resp
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{len}"));
                (a, b - a + 1)
            }
            RangeAnswer::Unsatisfiable => {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range-not-satisfiable",
                    "Range not satisfiable",
                    "The requested range is outside the file.",
                )
                .with_header(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).unwrap_or(HeaderValue::from_static("bytes */0")),
                ));
            }
        };
        resp = resp.header(header::CONTENT_LENGTH, count);
        if *method == Method::HEAD {
            return resp.body(empty()).map_err(|_| ApiError::internal());
        }
        file.seek(SeekFrom::Start(start)).map_err(|_| ApiError::internal())?;
        let reader = tokio::io::AsyncReadExt::take(tokio::fs::File::from_std(file), count);
        let body: ProxyBody = poem::Body::from_async_read(reader).into();
        resp.body(ProxiedBody::Right(body)).map_err(|_| ApiError::internal())
    }
}

fn empty() -> ProxiedBody {
    ProxiedBody::Right(http_body_util::Empty::new().map_err(|never| match never {}).boxed())
}

/// The path's segments, percent-decoded, or `None` for a name the directory never serves:
/// a dot file or dot segment (`.env`, `.git`, `..`), an encoded `/`, `\` or NUL, non-UTF-8.
/// (The path is canonical already; this holds on its own too.)
fn segments(rest: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        let bytes = decode(seg)?;
        let seg = String::from_utf8(bytes).ok()?;
        if seg.starts_with('.') || seg.contains(['/', '\\', '\0']) {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn decode(seg: &str) -> Option<Vec<u8>> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Resolves `path` (a directory: its index file) inside `root` (canonical), with the
/// precompressed sibling the client accepts when there is one.
fn open_in(root: &Path, path: &Path, encodings: Encodings) -> io::Result<Found> {
    let path = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => path.join(INDEX),
        Ok(_) => path.to_path_buf(),
        Err(e) if is_missing(&e) => return Ok(Found::Missing),
        // A symlink loop, a permission problem: not served.
        Err(_) => return Ok(Found::Refused),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    for (enc, suffix, accepted) in [("br", ".br", encodings.br), ("gzip", ".gz", encodings.gzip)] {
        if !accepted {
            continue;
        }
        let mut sibling = path.clone().into_os_string();
        sibling.push(suffix);
        if let Found::File(mut f) = open_contained(root, Path::new(&sibling))? {
            f.name = name;
            f.encoding = Some(enc);
            return Ok(Found::File(f));
        }
    }
    open_contained(root, &path)
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// Opens `path` if it is a regular file whose real location is inside `root`: canonicalized
/// and checked, opened without following a final symlink and without blocking (a FIFO), and
/// where the kernel says the opened descriptor is, checked again (an intermediate directory
/// swapped for a symlink in between).
fn open_contained(root: &Path, path: &Path) -> io::Result<Found> {
    use std::os::unix::fs::OpenOptionsExt;
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if is_missing(&e) => return Ok(Found::Missing),
        Err(_) => return Ok(Found::Refused),
    };
    if !real.starts_with(root) {
        return Ok(Found::Refused);
    }
    let file =
        match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(&real) {
            Ok(f) => f,
            Err(e) if is_missing(&e) => return Ok(Found::Missing),
            Err(_) => return Ok(Found::Refused),
        };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(Found::Refused);
    }
    // Where the kernel says the descriptor is; refused when it cannot say (no /proc): the
    // check must fail closed, or a directory swapped for a symlink would be served.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        Ok(opened) if opened.starts_with(root) => {}
        _ => return Ok(Found::Refused),
    }
    // The name asked for, not the link's target: a `current.js` alias of a hashed asset is
    // not cached for a year, and the type is the one the URL says.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    Ok(Found::File(Box::new(Opened { file, meta, name, encoding: None })))
}

/// A strong validator from the file's identity, size and modification time (and the coding of
/// a precompressed sibling, a different representation).
fn etag_of(meta: &Metadata, encoding: Option<&str>) -> String {
    use std::os::unix::fs::MetadataExt;
    let suffix = encoding.map(|e| format!("-{e}")).unwrap_or_default();
    // Hashed, so the tag does not show the file's inode and exact times.
    let identity = format!("{:x}-{:x}-{:x}.{:x}", meta.ino(), meta.len(), meta.mtime(), meta.mtime_nsec());
    let digest = crate::crypto::sha256(identity.as_bytes());
    format!("\"{}{suffix}\"", hex::encode(&digest[..12]))
}

/// Whether an `If-None-Match` value (`*` or a list of tags, weak or not) matches `etag`
/// (the weak comparison RFC 9110 §13.1.2 prescribes).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAnswer {
    /// No usable range (absent, malformed, several ranges, another unit): the whole file.
    Whole,
    /// Bytes `a..=b`.
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range (RFC 9110 §14.1.2): `a-b`, `a-`, `-suffix`. A malformed header or a
/// multi-range request is answered with the whole file, as the RFC allows.
fn byte_range(spec: &str, len: u64) -> RangeAnswer {
    let Some(spec) = spec.trim().strip_prefix("bytes=") else { return RangeAnswer::Whole };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeAnswer::Whole };
    let num =
        |s: &str| (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then(|| s.parse::<u64>().ok()).flatten();
    match (a.trim(), b.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if len == 0 => RangeAnswer::Unsatisfiable,
            Some(n) => RangeAnswer::Part(len.saturating_sub(n), len - 1),
            None => RangeAnswer::Whole,
        },
        (a, "") => match num(a) {
            Some(a) if a < len => RangeAnswer::Part(a, len - 1),
            Some(_) => RangeAnswer::Unsatisfiable,
            None => RangeAnswer::Whole,
        },
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a > b => RangeAnswer::Whole,
            (Some(a), Some(_)) if a >= len => RangeAnswer::Unsatisfiable,
            (Some(a), Some(b)) => RangeAnswer::Part(a, b.min(len - 1)),
            _ => RangeAnswer::Whole,
        },
    }
}

/// The precompressed codings a client takes (`Accept-Encoding`, `q=0` refusing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Encodings {
    br: bool,
    gzip: bool,
}

fn accepted_encodings(headers: &HeaderMap) -> Encodings {
    let mut br = None;
    let mut gzip = None;
    let mut any = None;
    for v in headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()) {
        for item in v.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .next()
                .unwrap_or(1.0);
            let slot = match coding.as_str() {
                "br" => &mut br,
                "gzip" | "x-gzip" => &mut gzip,
                "*" => &mut any,
                _ => continue,
            };
            *slot = Some(q > 0.0);
        }
    }
    let any = any.unwrap_or(false);
    Encodings { br: br.unwrap_or(any), gzip: gzip.unwrap_or(any) }
}

/// Whether the client asks for HTML (a browser navigating: `Accept: text/html,…`, not `q=0`).
fn accepts_html(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let mut parts = item.split(';');
        parts.next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/html"))
            && !parts.any(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()) == Some(0.0))
    })
}

/// The content type of a file name, text types in UTF-8.
fn content_type(name: &str) -> String {
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    match (mime.type_().as_str(), mime.subtype().as_str()) {
        ("text", _) | ("application", "javascript" | "json" | "manifest+json" | "xml") | ("image", "svg+xml") => {
            format!("{mime}; charset=utf-8")
        }
        _ => mime.to_string(),
    }
}

/// Whether a file name carries a content hash, as bundlers write them (`index-3f2a9c1b.js`,
/// `app.3f2a9c1b.css`, Vite's `index-DvzGNVPr.js`): the last `-` or `.` separated part of the
/// stem is 8 to 64 of `[A-Za-z0-9_]`, with a digit, or with an upper-case letter after its
/// first character (so that `index-settings.js` or `Page-Overview.js` are not taken for hashed).
fn is_hashed_name(name: &str) -> bool {
    let stem = match name.rsplit_once('.') {
        Some((stem, _)) => stem,
        None => return false,
    };
    let Some(i) = stem.rfind(['-', '.']) else { return false };
    let part = &stem[i + 1..];
    (8..=64).contains(&part.len())
        && i > 0
        && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && (part.bytes().any(|b| b.is_ascii_digit()) || part.bytes().skip(1).any(|b| b.is_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        for (spec, want) in [
            ("bytes=0-9", Part(0, 9)),
            ("bytes=10-", Part(10, 99)),
            ("bytes=-10", Part(90, 99)),
            ("bytes=-1000", Part(0, 99)),
            ("bytes=90-1000", Part(90, 99)),
            ("bytes=99-99", Part(99, 99)),
            ("bytes=100-", Unsatisfiable),
            ("bytes=100-200", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=9-0", Whole),
            ("bytes=0-1,5-6", Whole),
            ("items=0-1", Whole),
            ("bytes=a-b", Whole),
            ("bytes=+1-2", Whole),
            ("bytes=0x1-2", Whole),
            ("bytes=", Whole),
            ("bytes=99999999999999999999999-", Whole),
        ] {
            assert_eq!(byte_range(spec, 100), want, "{spec}");
        }
        assert_eq!(byte_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(byte_range("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn if_none_match() {
        let tag = "\"a-1\"";
        for v in ["\"a-1\"", "W/\"a-1\"", "\"x\", \"a-1\"", "*"] {
            assert!(etag_matches(v, tag), "{v}");
        }
        for v in ["\"a-2\"", "a-1", "\"a-1-br\"", ""] {
            assert!(!etag_matches(v, tag), "{v}");
        }
    }

    #[test]
    fn accept_encoding() {
        let enc = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
            accepted_encodings(&h)
        };
        assert_eq!(enc("gzip, deflate, br"), Encodings { br: true, gzip: true });
        assert_eq!(enc("gzip"), Encodings { br: false, gzip: true });
        assert_eq!(enc("br;q=0, gzip;q=0.5"), Encodings { br: false, gzip: true });
        assert_eq!(enc("BR"), Encodings { br: true, gzip: false });
        assert_eq!(enc("*"), Encodings { br: true, gzip: true });
        assert_eq!(enc("*, br;q=0"), Encodings { br: false, gzip: true });
        assert_eq!(enc("identity"), Encodings::default());
        assert_eq!(accepted_encodings(&HeaderMap::new()), Encodings::default());
    }

    #[test]
    fn html_is_asked_for_explicitly() {
        let acc = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            accepts_html(&h)
        };
        assert!(acc("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"));
        assert!(acc("TEXT/HTML"));
        assert!(!acc("*/*"));
        assert!(!acc("application/json"));
        assert!(!acc("text/html;q=0"));
        assert!(!accepts_html(&HeaderMap::new()));
    }

    #[test]
    fn hashed_names() {
        for n in [
            "index-3f2a9c1b.js",
            "app.3f2a9c1b.css",
            "index-DvzGNVPr.js",
            "logo-a1b2c3d4e5.svg",
            "vendor_x-0123abcd.js",
        ] {
            assert!(is_hashed_name(n), "{n}");
        }
        for n in [
            "index.html",
            "favicon.ico",
            "index-settings.js",
            "Page-Overview.js",
            "3f2a9c1b.js",
            "app-1234567.js",
            "index-3f2a9c1b",
        ] {
            assert!(!is_hashed_name(n), "{n}");
        }
    }

    #[test]
    fn segments_never_name_dot_files_or_escape() {
        assert_eq!(segments("/assets/a%20b.js"), Some(vec!["assets".into(), "a b.js".into()]));
        assert_eq!(segments("/"), Some(vec![]));
        for bad in ["/..", "/a/../b", "/.env", "/.git/config", "/a%2Fb", "/a%5cb", "/a%00", "/%2e%2e/x", "/%ff"] {
            assert_eq!(segments(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("index-3f2a9c1b.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("a.mp4"), "video/mp4");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
