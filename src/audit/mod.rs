//! The tamper-evident audit log: every [`SecurityEvent`] becomes a record in a SHA-256
//! hash chain kept in the store, committed through the group-commit writer.
//!
//! Record `n` is stored as `hash(32 bytes) ‖ canonical JSON`, where
//! `hash = SHA-256(hash of record n-1 ‖ canonical JSON)`. The chain starts from an
//! anchor (all zeros, or the hash of the last pruned record once retention has pruned),
//! so what remains still verifies after pruning.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

pub mod config;
pub mod event;

use crate::monitor::Monitor;
use crate::store::{Store, StoreError, tables};
pub use event::{ClientInfo, EventKind, SecurityEvent, Severity};

/// Longest user agent kept.
const MAX_USER_AGENT: usize = 200;
/// Most records examined by one query before it returns a cursor to continue.
const MAX_SCAN: usize = 200_000;
/// Records pruned per transaction.
const PRUNE_CHUNK: usize = 5_000;

/// One audit record, as stored (its canonical JSON) and as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Milliseconds since the Unix epoch; never decreases along the chain.
    pub ts_ms: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: String,
    /// User id of who acted; `None` for anonymous.
    pub actor: Option<String>,
    /// What was acted on: user id, email, session or route.
    pub target: Option<String>,
    pub ip: String,
    pub user_agent: String,
    pub request_id: String,
    pub detail: BTreeMap<String, String>,
}

impl AuditRecord {
    /// Values under which this record is found by `user=`: actor, target and `detail.user`.
    fn subjects(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in [self.actor.as_deref(), self.target.as_deref(), self.detail.get("user").map(String::as_str)]
            .into_iter()
            .flatten()
        {
            if !s.is_empty() && !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

/// The end of the chain, or its anchor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Link {
    seq: u64,
    ts_ms: i64,
    hash: [u8; 32],
}

impl Link {
    fn encode(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.ts_ms.to_be_bytes());
        out[16..].copy_from_slice(&self.hash);
        out
    }

    fn decode(b: &[u8]) -> Result<Link, StoreError> {
        if b.len() != 48 {
            return Err(StoreError::Codec("audit chain link is malformed".into()));
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[16..]);
        Ok(Link {
            seq: u64::from_be_bytes(b[..8].try_into().unwrap_or_default()),
            ts_ms: i64::from_be_bytes(b[8..16].try_into().unwrap_or_default()),
            hash,
        })
    }
}

const HEAD: &str = "head";
const ANCHOR: &str = "anchor";

fn link(meta: &impl ReadableTable<&'static str, &'static [u8]>, name: &str) -> Result<Link, StoreError> {
    match meta.get(name)? {
        Some(v) => Link::decode(v.value()),
        None => Ok(Link::default()),
    }
}

fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(32 + canonical.len());
    buf.extend_from_slice(prev);
    buf.extend_from_slice(canonical);
    crate::crypto::sha256(&buf)
}

fn split_stored(v: &[u8]) -> Option<([u8; 32], &[u8])> {
    if v.len() < 32 {
        return None;
    }
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&v[..32]);
    Some((hash, &v[32..]))
}

fn decode(v: &[u8]) -> Result<AuditRecord, StoreError> {
    let (_, json) = split_stored(v).ok_or_else(|| StoreError::Codec("audit record is truncated".into()))?;
    Ok(serde_json::from_slice(json)?)
}

/// Appends one record at the head of the chain, inside the caller's transaction.
/// Returns the record as written (with its sequence number and timestamp).
pub fn append(txn: &WriteTransaction, mut rec: AuditRecord) -> Result<AuditRecord, StoreError> {
    let mut meta = txn.open_table(tables::AUDIT_META)?;
    let head = link(&meta, HEAD)?;
    let head = if head.seq == 0 { link(&meta, ANCHOR)? } else { head };
    rec.seq = head.seq + 1;
    rec.ts_ms = rec.ts_ms.max(head.ts_ms);
    let canonical = serde_json::to_vec(&rec)?;
    let hash = chain_hash(&head.hash, &canonical);
    let mut value = Vec::with_capacity(32 + canonical.len());
    value.extend_from_slice(&hash);
    value.extend_from_slice(&canonical);
    txn.open_table(tables::AUDIT)?.insert(rec.seq, value.as_slice())?;
    {
        let mut idx = txn.open_table(tables::AUDIT_BY_SUBJECT)?;
        for s in rec.subjects() {
            idx.insert((s, rec.seq), ())?;
        }
    }
    meta.insert(HEAD, Link { seq: rec.seq, ts_ms: rec.ts_ms, hash }.encode().as_slice())?;
    Ok(rec)
}

/// Turns an event into a record (sequence and time are set by [`append`]).
pub fn to_record(ev: &SecurityEvent) -> AuditRecord {
    use event::sanitize;
    AuditRecord {
        seq: 0,
        ts_ms: crate::clock::now_ms(),
        kind: ev.kind.as_str().to_string(),
        severity: ev.severity.as_str().to_string(),
        actor: ev.actor.as_deref().map(|a| sanitize(a, 128)),
        target: ev.target.clone(),
        ip: sanitize(&ev.client.ip, 64),
        user_agent: sanitize(&ev.client.user_agent, MAX_USER_AGENT),
        request_id: sanitize(&ev.client.request_id, 64),
        detail: ev.detail.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

/// Filters of a query; every one given must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub severity: Option<String>,
    /// User id or email: matches actor, target or `detail.user`.
    pub user: Option<String>,
    pub ip: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        self.kind.as_deref().is_none_or(|k| r.kind == k)
            && self.severity.as_deref().is_none_or(|s| r.severity == s)
            && self.ip.as_deref().is_none_or(|ip| r.ip == ip)
            && self.since_ms.is_none_or(|t| r.ts_ms >= t)
            && self.until_ms.is_none_or(|t| r.ts_ms <= t)
    }
}

/// One page of a query, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass back as `cursor` for older records; `None` when there are none.
    pub next_cursor: Option<u64>,
}

/// The outcome of checking the chain (also `audit verify`'s admin reply, camelCase JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub ok: bool,
    /// First and last sequence numbers checked (`first > last` when the log is empty).
    pub first: u64,
    pub last: u64,
    pub checked: u64,
    /// First record that fails, and why.
    pub first_bad: Option<u64>,
    pub reason: Option<String>,
}

/// Chain status without a full verification, for dashboards.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChainInfo {
    pub first: u64,
    pub last: u64,
    pub length: u64,
}

/// Handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    monitor: Arc<Monitor>,
    last_verify: Arc<std::sync::Mutex<Option<(i64, VerifyReport)>>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

impl Audit {
    pub fn new(store: Store, monitor: Arc<Monitor>) -> Audit {
        Audit { store, monitor, last_verify: Default::default() }
    }

    /// The last full verification and when it ran (ms since the epoch).
    pub fn last_verify(&self) -> Option<(i64, VerifyReport)> {
        self.last_verify.lock().ok().and_then(|v| v.clone())
    }

    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    /// Commits the event (group-committed with concurrent writes) and returns once it is
    /// durable. Also mirrors it to the structured log and counts it in the metrics. A
    /// failed commit is logged loudly; the caller's action has already happened.
    pub async fn record(&self, ev: SecurityEvent) -> Option<u64> {
        self.observe(&ev);
        ev.log();
        let rec = to_record(&ev);
        match self.store.write(move |txn| append(txn, rec.clone())).await {
            Ok(r) => {
                metrics::gauge!("audit_chain_length").increment(1.0);
                Some(r.seq)
            }
            Err(e) => {
                metrics::counter!("audit_write_failures_total").increment(1);
                tracing::error!(error = %e, event = ev.kind.as_str(), "audit record could not be committed");
                None
            }
        }
    }

    /// Records an event that no request waits for (VPN, certificates): committed in the
    /// background by the next group commit, well within a second.
    pub fn record_background(&self, ev: SecurityEvent) {
        let audit = self.clone();
        tokio::spawn(async move {
            audit.record(ev).await;
        });
    }

    /// Feeds the dashboard's monitor. The auth counters (`auth_logins_total`,
    /// `account_lockouts_total`, `auth_refresh_total`) are set by `auth` where it decides,
    /// not read back from events here.
    fn observe(&self, ev: &SecurityEvent) {
        metrics::counter!("audit_events_total", "type" => ev.kind.as_str()).increment(1);
        match ev.kind {
            EventKind::LoginSucceeded => self.monitor.login(true),
            EventKind::LoginFailed => self.monitor.login(false),
            EventKind::AccountLocked => self.monitor.lockout(),
            _ => {}
        }
    }

    /// Head, anchor and length of the chain.
    pub fn info(&self) -> Result<ChainInfo, StoreError> {
        self.store.read(|txn| {
            let meta = txn.open_table(tables::AUDIT_META)?;
            let anchor = link(&meta, ANCHOR)?;
            let head = link(&meta, HEAD)?;
            let last = head.seq.max(anchor.seq);
            Ok(ChainInfo { first: anchor.seq + 1, last, length: last - anchor.seq })
        })
    }

    /// Newest-first records matching `filter`, older than `cursor` when given.
    pub fn query(&self, filter: &AuditFilter, limit: usize, cursor: Option<u64>) -> Result<AuditPage, StoreError> {
        self.store.read(|txn| query(txn, filter, limit.clamp(1, 1000), cursor))
    }

    /// Records with `since ≤ ts ≤ until`, oldest first, in chunks of at most `chunk`,
    /// starting after sequence `after`. Used by export.
    pub fn range(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        after: u64,
        chunk: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        self.store.read(|txn| {
            let audit = txn.open_table(tables::AUDIT)?;
            let mut out = Vec::new();
            let start = match since_ms {
                Some(t) if after == 0 => first_at_or_after(txn, t)?,
                _ => after + 1,
            };
            for row in audit.range(start..)? {
                let (_, v) = row?;
                let r = decode(v.value())?;
                if until_ms.is_some_and(|u| r.ts_ms > u) {
                    break;
                }
                out.push(r);
                if out.len() >= chunk {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Recomputes the whole chain from its anchor.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let report = self.store.read(verify)?;
        if !report.ok {
            tracing::error!(first_bad = ?report.first_bad, reason = ?report.reason, "audit chain does not verify");
        }
        if let Ok(mut v) = self.last_verify.lock() {
            *v = Some((crate::clock::now_ms(), report.clone()));
        }
        Ok(report)
    }

    /// Prunes by age and count; returns how many records went.
    pub async fn prune(&self, retention_days: u64, max_events: u64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let cutoff = if retention_days == 0 {
                i64::MIN
            } else {
                crate::clock::now_ms() - retention_days as i64 * 86_400_000
            };
            let n = self.store.write(move |txn| prune_chunk(txn, cutoff, max_events)).await?;
            total += n;
            if n < PRUNE_CHUNK as u64 {
                break;
            }
        }
        if total > 0 {
            tracing::info!(pruned = total, "audit retention pruned old records");
        }
        self.publish_length();
        Ok(total)
    }

    /// Sets the chain-length gauge (after startup and after pruning).
    pub fn publish_length(&self) {
        if let Ok(info) = self.info() {
            metrics::gauge!("audit_chain_length").set(info.length as f64);
        }
    }
}

/// First sequence number whose timestamp is ≥ `t` (binary search; timestamps never decrease).
fn first_at_or_after(txn: &ReadTransaction, t: i64) -> Result<u64, StoreError> {
    let meta = txn.open_table(tables::AUDIT_META)?;
    let audit = txn.open_table(tables::AUDIT)?;
    let (mut lo, mut hi) = (link(&meta, ANCHOR)?.seq + 1, link(&meta, HEAD)?.seq + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let ts = match audit.get(mid)? {
            Some(v) => decode(v.value())?.ts_ms,
            None => i64::MIN,
        };
        if ts < t { lo = mid + 1 } else { hi = mid }
    }
    Ok(lo)
}

fn query(txn: &ReadTransaction, f: &AuditFilter, limit: usize, cursor: Option<u64>) -> Result<AuditPage, StoreError> {
    let audit = txn.open_table(tables::AUDIT)?;
    let mut upper = cursor.unwrap_or(u64::MAX);
    if let Some(until) = f.until_ms
        && until < i64::MAX
    {
        upper = upper.min(first_at_or_after(txn, until + 1)?);
    }
    let mut page = AuditPage::default();
    let mut scanned = 0usize;
    let mut visit = |seq: u64, r: AuditRecord, page: &mut AuditPage| -> bool {
        scanned += 1;
        if f.since_ms.is_some_and(|s| r.ts_ms < s) {
            return false;
        }
        if f.matches(&r) {
            page.records.push(r);
            if page.records.len() >= limit {
                page.next_cursor = Some(seq);
                return false;
            }
        }
        if scanned >= MAX_SCAN {
            page.next_cursor = Some(seq);
            return false;
        }
        true
    };
    match &f.user {
        Some(user) => {
            let idx = txn.open_table(tables::AUDIT_BY_SUBJECT)?;
            for row in idx.range((user.as_str(), 0)..(user.as_str(), upper))?.rev() {
                let (k, _) = row?;
                let seq = k.value().1;
                let Some(v) = audit.get(seq)? else { continue };
                if !visit(seq, decode(v.value())?, &mut page) {
                    break;
                }
            }
        }
        None => {
            for row in audit.range(..upper)?.rev() {
                let (k, v) = row?;
                if !visit(k.value(), decode(v.value())?, &mut page) {
                    break;
                }
            }
        }
    }
    // A cursor at the oldest record leads nowhere.
    if let Some(c) = page.next_cursor
        && audit.range(..c)?.next().is_none()
    {
        page.next_cursor = None;
    }
    Ok(page)
}

fn verify(txn: &ReadTransaction) -> Result<VerifyReport, StoreError> {
    let meta = txn.open_table(tables::AUDIT_META)?;
    let audit = txn.open_table(tables::AUDIT)?;
    let anchor = link(&meta, ANCHOR)?;
    let head = link(&meta, HEAD)?;
    let last = head.seq.max(anchor.seq);
    let mut report = VerifyReport { ok: true, first: anchor.seq + 1, last, ..Default::default() };
    let fail = |report: &mut VerifyReport, seq: u64, reason: &str| {
        report.ok = false;
        report.first_bad = Some(seq);
        report.reason = Some(reason.to_string());
    };
    let mut prev = anchor.hash;
    let mut expected = anchor.seq + 1;
    let mut prev_ts = i64::MIN;
    for row in audit.range(anchor.seq + 1..)? {
        let (k, v) = row?;
        let seq = k.value();
        if seq != expected {
            fail(&mut report, expected, "record missing");
            return Ok(report);
        }
        let Some((stored, json)) = split_stored(v.value()) else {
            fail(&mut report, seq, "record truncated");
            return Ok(report);
        };
        let computed = chain_hash(&prev, json);
        if !crate::crypto::constant_time_eq(&computed, &stored) {
            fail(&mut report, seq, "hash mismatch");
            return Ok(report);
        }
        match serde_json::from_slice::<AuditRecord>(json) {
            Ok(r) if r.seq == seq && r.ts_ms >= prev_ts => prev_ts = r.ts_ms,
            Ok(_) => {
                fail(&mut report, seq, "sequence or time out of order");
                return Ok(report);
            }
            Err(_) => {
                fail(&mut report, seq, "record unreadable");
                return Ok(report);
            }
        }
        prev = computed;
        report.checked += 1;
        expected += 1;
    }
    if expected != last + 1 {
        fail(&mut report, expected, "record missing");
    } else if last > anchor.seq && prev != head.hash {
        fail(&mut report, last, "head does not match the last record");
    }
    if audit.len()? != report.checked && report.ok {
        fail(&mut report, anchor.seq, "records before the anchor");
    }
    Ok(report)
}

fn prune_chunk(txn: &WriteTransaction, cutoff_ms: i64, max_events: u64) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(tables::AUDIT_META)?;
    let mut anchor = link(&meta, ANCHOR)?;
    let head = link(&meta, HEAD)?;
    if head.seq <= anchor.seq {
        return Ok(0);
    }
    let len = head.seq - anchor.seq;
    let mut excess = if max_events == 0 { 0 } else { len.saturating_sub(max_events) };
    let mut audit = txn.open_table(tables::AUDIT)?;
    let mut idx = txn.open_table(tables::AUDIT_BY_SUBJECT)?;
    let mut doomed = Vec::new();
    for row in audit.range(anchor.seq + 1..)? {
        let (k, v) = row?;
        let Some((hash, json)) = split_stored(v.value()) else { break };
        let r: AuditRecord = serde_json::from_slice(json)?;
        if excess == 0 && r.ts_ms >= cutoff_ms {
            break;
        }
        excess = excess.saturating_sub(1);
        let subjects: Vec<String> = r.subjects().into_iter().map(str::to_string).collect();
        doomed.push((k.value(), r.ts_ms, hash, subjects));
        if doomed.len() >= PRUNE_CHUNK {
            break;
        }
    }
    for (seq, ts_ms, hash, subjects) in &doomed {
        audit.remove(*seq)?;
        for s in subjects {
            idx.remove((s.as_str(), *seq))?;
        }
        anchor = Link { seq: *seq, ts_ms: *ts_ms, hash: *hash };
    }
    if !doomed.is_empty() {
        meta.insert(ANCHOR, anchor.encode().as_slice())?;
    }
    Ok(doomed.len() as u64)
}

/// Formats milliseconds since the epoch as RFC 3339.
pub fn rfc3339_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_rfc3339_ms(v: &str) -> Option<i64> {
    time::OffsetDateTime::parse(v.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// One exported line: the record with an RFC 3339 time added.
#[derive(Serialize)]
struct ExportLine {
    time: String,
    #[serde(flatten)]
    record: AuditRecord,
}

impl Audit {
    /// The next chunk of the export after sequence `after`, as JSON Lines: the bytes, the
    /// number of records and the last sequence; `None` when nothing is left.
    pub fn export_chunk(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        after: u64,
    ) -> Result<Option<(Vec<u8>, u64, u64)>, StoreError> {
        let chunk = self.range(since_ms, until_ms, after, 1000)?;
        let Some(last) = chunk.last().map(|r| r.seq) else { return Ok(None) };
        let n = chunk.len() as u64;
        let mut out = Vec::with_capacity(chunk.len() * 256);
        for record in chunk {
            serde_json::to_writer(&mut out, &ExportLine { time: rfc3339_ms(record.ts_ms), record })?;
            out.push(b'\n');
        }
        Ok(Some((out, n, last)))
    }

    /// Writes every record in `[since, until]` as JSON Lines, oldest first; returns the count.
    pub fn export_to(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        out: &mut impl std::io::Write,
    ) -> Result<u64, ExportError> {
        let (mut after, mut total) = (0, 0);
        while let Some((bytes, n, last)) = self.export_chunk(since_ms, until_ms, after)? {
            out.write_all(&bytes)?;
            total += n;
            after = last;
        }
        out.flush()?;
        Ok(total)
    }
}

/// Why an export stopped: reading the log or writing the file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Severity names accepted by filters.
pub fn valid_severity(s: &str) -> bool {
    Severity::parse(s).is_some()
}
