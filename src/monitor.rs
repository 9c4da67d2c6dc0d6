//! Monitoring: the Prometheus recorder behind `/metrics`, and the short in-memory windows
//! (last hour of sign-ins, last five minutes of requests) behind `/api/system/status`.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Upper bounds (seconds) of the request-duration histogram buckets.
pub const LATENCY_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process-wide Prometheus recorder, installed on first use. Every `metrics::` macro in
/// the gate records into it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full("http_request_duration_seconds".into()), &LATENCY_BUCKETS)
            .expect("static, non-empty bucket list");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding program); then ours only renders what we set.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("http_requests_total", "Requests answered, by route class and status");
    describe_histogram!("http_request_duration_seconds", metrics::Unit::Seconds, "Time to the response head");
    describe_counter!("auth_logins_total", "Sign-in attempts by result");
    describe_counter!("auth_refresh_total", "Refresh-token uses by result");
    describe_gauge!("auth_active_sessions", "Sessions that are neither expired nor revoked");
    describe_counter!("rate_limited_total", "Requests refused by a rate limit, by class");
    describe_counter!("account_lockouts_total", "Accounts locked after failed sign-ins");
    describe_counter!("audit_events_total", "Audit records written, by type");
    describe_gauge!("audit_chain_length", "Records currently in the audit chain");
    describe_gauge!("tls_certificate_expiry_seconds", metrics::Unit::Seconds, "Time left on the served certificate");
    describe_gauge!("process_resident_memory_bytes", metrics::Unit::Bytes, "Resident set size");
    describe_gauge!("vpn_up", "1 while the tunnel is up (routes that require it are open)");
    describe_gauge!("vpn_state", "0 disabled, 1 unavailable, 2 connecting, 3 up, 4 degraded, 5 down, 6 reconnecting");
    describe_gauge!("vpn_handshake_age_seconds", metrics::Unit::Seconds, "Age of the latest WireGuard handshake");
    describe_gauge!("vpn_rx_bytes", metrics::Unit::Bytes, "Bytes received through the tunnel");
    describe_gauge!("vpn_tx_bytes", metrics::Unit::Bytes, "Bytes sent through the tunnel");
    describe_counter!("vpn_reconnects_total", "Tunnel reconnect attempts");
    describe_gauge!("vpn_uptime_ratio", "Share of the last 24 hours the tunnel was up");
}

/// Renders every metric in the Prometheus text format, refreshing the sampled gauges first.
pub fn render(active_sessions: usize, tls_expires_in: Option<i64>) -> String {
    let handle = prometheus();
    metrics::gauge!("auth_active_sessions").set(active_sessions as f64);
    if let Some(secs) = tls_expires_in {
        metrics::gauge!("tls_certificate_expiry_seconds").set(secs as f64);
    }
    if let Some(rss) = resident_memory_bytes() {
        metrics::gauge!("process_resident_memory_bytes").set(rss as f64);
    }
    handle.run_upkeep();
    handle.render()
}

/// Resident set size from `/proc/self/statm` (Linux); `None` elsewhere. Read by hand: the
/// `metrics-process` crate would pull in a whole procfs parser for this one number.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// One minute of counts.
#[derive(Clone, Copy, Default)]
struct Bucket {
    minute: u64,
    logins_ok: u64,
    logins_failed: u64,
    lockouts: u64,
    requests: u64,
    errors: u64,
    latency: [u64; LATENCY_BUCKETS.len() + 1],
}

/// Rolling per-minute counters for the dashboard summary.
pub struct Monitor {
    started: Instant,
    ring: Mutex<[Bucket; 60]>,
    /// (route class, status label) → its request counter and duration histogram, registered
    /// once: the macros would look the series up in the registry on every request.
    series: std::sync::RwLock<std::collections::HashMap<(&'static str, &'static str), RequestSeries>>,
}

#[derive(Clone)]
struct RequestSeries {
    count: metrics::Counter,
    duration: metrics::Histogram,
}

/// The dashboard's numbers.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub logins_succeeded_1h: u64,
    pub logins_failed_1h: u64,
    pub lockouts_1h: u64,
    /// Succeeded / all sign-ins in the last hour; `None` without any.
    pub login_success_rate_1h: Option<f64>,
    pub requests_5m: u64,
    pub requests_per_sec_5m: f64,
    /// 5xx answers / all answers in the last five minutes.
    pub error_rate_5m: Option<f64>,
    /// Upper bound of the bucket holding the 95th percentile, in milliseconds.
    pub p95_latency_ms_5m: Option<f64>,
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new()
    }
}

impl Monitor {
    pub fn new() -> Monitor {
        Monitor { started: Instant::now(), ring: Mutex::new([Bucket::default(); 60]), series: Default::default() }
    }

    fn minute(&self) -> u64 {
        // +1 so minute 0 is never confused with an unused bucket.
        self.started.elapsed().as_secs() / 60 + 1
    }

    fn with_bucket(&self, f: impl FnOnce(&mut Bucket)) {
        let minute = self.minute();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let b = &mut ring[(minute % 60) as usize];
        if b.minute != minute {
            *b = Bucket { minute, ..Bucket::default() };
        }
        f(b);
    }

    /// A sign-in attempt's outcome.
    pub fn login(&self, ok: bool) {
        self.with_bucket(|b| if ok { b.logins_ok += 1 } else { b.logins_failed += 1 });
    }

    /// An account was locked.
    pub fn lockout(&self) {
        self.with_bucket(|b| b.lockouts += 1);
    }

    /// A request was answered: Prometheus counters and the five-minute window.
    pub fn request(&self, route_class: &'static str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let series = self.request_series(route_class, status_label(status));
        series.count.increment(1);
        series.duration.record(secs);
        let slot = LATENCY_BUCKETS.iter().position(|&le| secs <= le).unwrap_or(LATENCY_BUCKETS.len());
        self.with_bucket(|b| {
            b.requests += 1;
            if status >= 500 {
                b.errors += 1;
            }
            b.latency[slot] += 1;
        });
    }

    fn request_series(&self, route_class: &'static str, status: &'static str) -> RequestSeries {
        let key = (route_class, status);
        if let Some(s) = self.series.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return s.clone();
        }
        // The recorder first, so the handles kept are its and not no-ops.
        prometheus();
        let s = RequestSeries {
            count: metrics::counter!("http_requests_total", "route_class" => route_class, "status" => status),
            duration: metrics::histogram!("http_request_duration_seconds", "route_class" => route_class),
        };
        self.series.write().unwrap_or_else(|e| e.into_inner()).insert(key, s.clone());
        s
    }

    /// Sums the last `minutes` buckets (the current one included).
    fn sum(&self, minutes: u64) -> Bucket {
        let now = self.minute();
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = Bucket::default();
        for b in ring.iter().filter(|b| b.minute != 0 && b.minute + minutes > now) {
            total.logins_ok += b.logins_ok;
            total.logins_failed += b.logins_failed;
            total.lockouts += b.lockouts;
            total.requests += b.requests;
            total.errors += b.errors;
            for (t, v) in total.latency.iter_mut().zip(b.latency.iter()) {
                *t += v;
            }
        }
        total
    }

    /// Per-minute counts for the last hour, oldest first: (minutes ago, requests, 5xx,
    /// sign-ins succeeded, sign-ins failed). Minutes without traffic are zeros.
    pub fn series(&self) -> Vec<(u64, u64, u64, u64, u64)> {
        let now = self.minute();
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (0..60u64)
            .rev()
            .map(|ago| {
                let want = now.saturating_sub(ago);
                match ring.iter().find(|b| b.minute == want && want != 0) {
                    Some(b) => (ago, b.requests, b.errors, b.logins_ok, b.logins_failed),
                    None => (ago, 0, 0, 0, 0),
                }
            })
            .collect()
    }

    pub fn summary(&self) -> Summary {
        let hour = self.sum(60);
        let five = self.sum(5);
        let logins = hour.logins_ok + hour.logins_failed;
        let window = self.started.elapsed().as_secs_f64().clamp(1.0, 300.0);
        let p95 = (five.requests > 0).then(|| {
            let need = (five.requests as f64 * 0.95).ceil() as u64;
            let mut seen = 0;
            for (i, n) in five.latency.iter().enumerate() {
                seen += n;
                if seen >= need {
                    return LATENCY_BUCKETS.get(i).map(|s| s * 1000.0).unwrap_or(f64::INFINITY);
                }
            }
            f64::INFINITY
        });
        Summary {
            logins_succeeded_1h: hour.logins_ok,
            logins_failed_1h: hour.logins_failed,
            lockouts_1h: hour.lockouts,
            login_success_rate_1h: (logins > 0).then(|| hour.logins_ok as f64 / logins as f64),
            requests_5m: five.requests,
            requests_per_sec_5m: five.requests as f64 / window,
            error_rate_5m: (five.requests > 0).then(|| five.errors as f64 / five.requests as f64),
            p95_latency_ms_5m: p95.filter(|v| v.is_finite()),
        }
    }
}

fn status_label(status: u16) -> &'static str {
    // A fixed set of label values keeps the series count bounded.
    match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        301 => "301",
        302 => "302",
        303 => "303",
        304 => "304",
        307 => "307",
        308 => "308",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_the_window_and_finds_p95() {
        let m = Monitor::new();
        for _ in 0..95 {
            m.request("api", 200, Duration::from_micros(800));
        }
        for _ in 0..5 {
            m.request("api", 502, Duration::from_millis(300));
        }
        m.login(true);
        m.login(false);
        m.login(false);
        m.login(true);
        m.lockout();
        let s = m.summary();
        assert_eq!(s.requests_5m, 100);
        assert_eq!(s.error_rate_5m, Some(0.05));
        assert_eq!(s.p95_latency_ms_5m, Some(1.0));
        assert_eq!((s.logins_succeeded_1h, s.logins_failed_1h, s.lockouts_1h), (2, 2, 1));
        assert_eq!(s.login_success_rate_1h, Some(0.5));
    }

    #[test]
    fn an_empty_window_reports_no_rates() {
        let s = Monitor::new().summary();
        assert_eq!(s.login_success_rate_1h, None);
        assert_eq!(s.error_rate_5m, None);
        assert_eq!(s.p95_latency_ms_5m, None);
    }
}
