//! The signed stream key in a query string (`mf_sk=`): read for the check, removed before the
//! query goes upstream.

/// Query-string parameter that carries a signed stream key.
pub const STREAM_KEY_PARAM: &str = "mf_sk";

/// The stream key of a query string: the value of its first `mf_sk=` parameter.
pub fn stream_key_of(query: &str) -> Option<&str> {
    query.split('&').find_map(|p| p.strip_prefix(STREAM_KEY_PARAM).and_then(|rest| rest.strip_prefix('=')))
}

/// Removes the stream key from a query string before it goes upstream.
pub fn strip_stream_key(query: &str) -> String {
    query.split('&').filter(|p| !p.starts_with(&format!("{STREAM_KEY_PARAM}="))).collect::<Vec<_>>().join("&")
}
