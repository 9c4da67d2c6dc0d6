//! The wall clock, in one place: Unix seconds for tokens, sessions and certificates,
//! milliseconds for audit records, and a strictly increasing sequence for ordering uses
//! within one second.

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A process-wide strictly increasing counter seeded from the clock, to order uses within a second.
pub fn use_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let next = |cur: u64| Some(cur.max(nanos).saturating_add(1));
    match SEQ.fetch_update(Ordering::Relaxed, Ordering::Relaxed, next) {
        Ok(prev) | Err(prev) => prev.max(nanos).saturating_add(1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn use_seq_strictly_increases() {
        let a = super::use_seq();
        let b = super::use_seq();
        assert!(b > a);
    }
}
