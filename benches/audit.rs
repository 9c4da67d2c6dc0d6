//! `just bench-audit`: audit events/s with group commit versus one commit per event, and
//! the latency of the newest-100 query over 1,000,000 stored events. Prints figures;
//! asserts nothing about timing. Works on a temporary redb file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use miauflix_gate::audit::{Audit, AuditFilter, AuditRecord};
use miauflix_gate::audit::{ClientInfo, EventKind, SecurityEvent, Severity};
use miauflix_gate::store::Store;

const PHASE: Duration = Duration::from_secs(5);
const TARGET: u64 = 1_000_000;

fn event(i: u64) -> SecurityEvent {
    let client = ClientInfo {
        ip: format!("192.0.2.{}", i % 250),
        user_agent: "Mozilla/5.0 (X11; Linux x86_64) bench".into(),
        request_id: format!("{i:032x}"),
    };
    SecurityEvent::new(EventKind::LoginFailed, Severity::Warning, &client)
        .target(format!("user{}@example.com", i % 1000))
        .detail("reason", "bad credentials")
}

async fn group_commit(audit: &Audit, writers: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (audit, stop, done) = (audit.clone(), stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w as u64 * 1_000_000_000;
            while !stop.load(Ordering::Relaxed) {
                audit.record(event(i)).await;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(PHASE).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    // Keep the per-event log mirror out of the figures.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.redb")).unwrap();
    let audit = Audit::new(store.clone(), Default::default());

    let commits0 = store.stats().commits.load(Ordering::Relaxed);
    let single = group_commit(&audit, 1).await;
    let commits1 = store.stats().commits.load(Ordering::Relaxed);
    println!("one commit per event (1 writer):    {single:>9.0} events/s  ({} commits)", commits1 - commits0);
    for writers in [16, 64, 256] {
        let before = store.stats().commits.load(Ordering::Relaxed);
        let w0 = store.stats().writes.load(Ordering::Relaxed);
        let rate = group_commit(&audit, writers).await;
        let commits = store.stats().commits.load(Ordering::Relaxed) - before;
        let writes = store.stats().writes.load(Ordering::Relaxed) - w0;
        println!(
            "group commit ({writers:>3} writers):       {rate:>9.0} events/s  ({commits} commits, {:.1} events/commit, {:.1}x)",
            writes as f64 / commits.max(1) as f64,
            rate / single
        );
    }

    // Fill to a million records in bulk transactions.
    let have = audit.info().unwrap().length;
    let fill = Instant::now();
    let mut next = have;
    while next < TARGET {
        let n = (TARGET - next).min(20_000);
        let first = next;
        store
            .write(move |txn| {
                for i in first..first + n {
                    let rec: AuditRecord = miauflix_gate::audit::to_record(&event(i));
                    miauflix_gate::audit::append(txn, rec)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        next += n;
    }
    let size = std::fs::metadata(dir.path().join("bench.redb")).unwrap().len();
    println!(
        "filled to {} records in {:.1} s; data file {:.0} MiB",
        audit.info().unwrap().length,
        fill.elapsed().as_secs_f64(),
        size as f64 / 1048576.0
    );

    for (name, filter) in [
        ("newest 100, no filter", AuditFilter::default()),
        (
            "newest 100, user=user7@example.com",
            AuditFilter { user: Some("user7@example.com".into()), ..Default::default() },
        ),
        ("newest 100, ip=192.0.2.7 (scan)", AuditFilter { ip: Some("192.0.2.7".into()), ..Default::default() }),
    ] {
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            let page = audit.query(&filter, 100, None).unwrap();
            times.push(t.elapsed());
            assert_eq!(page.records.len(), 100);
        }
        times.sort();
        println!(
            "query {name:<38} p50 {:>7.2} ms  p99 {:>7.2} ms",
            percentile(&times, 0.5).as_secs_f64() * 1000.0,
            percentile(&times, 0.99).as_secs_f64() * 1000.0
        );
    }
    let t = Instant::now();
    let report = audit.verify().unwrap();
    println!("verify {} records: {:.2} s (ok = {})", report.checked, t.elapsed().as_secs_f64(), report.ok);
    store.close().await;
}
