//! The one redb file: opening, schema version and migrations, and the group-commit writer.
//!
//! Reads go straight to redb. Every write is a closure sent to one writer thread, which
//! runs as many pending closures as it can in one transaction and one durable commit,
//! and acknowledges each caller only after that commit.

pub mod files;
pub mod tables;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

/// The schema this binary writes.
pub const SCHEMA_VERSION: u64 = 2;
const SCHEMA_KEY: &str = "schema_version";
/// Most closures committed together.
const MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers wait to enqueue (backpressure).
const QUEUE_DEPTH: usize = 4096;

/// A cause shared by every caller of a failed batch.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

/// Store errors. Clone, so one failed commit can be reported to every caller in the batch;
/// causes are kept behind an `Arc` for that.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data file {path} belongs to schema version {found}, newer than this binary supports ({supported}); upgrade miauflix-gate"
    )]
    SchemaTooNew { path: PathBuf, found: u64, supported: u64 },
    #[error("data file {0} is already in use by another process")]
    Locked(PathBuf),
    #[error("data file {path} is corrupt or not a miauflix-gate data file ({reason}); restore it from a backup")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot open data file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Cause,
    },
    #[error("cannot open data file {path}: cannot start writer: {source}")]
    Writer {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("storage error: {0}")]
    Db(#[source] Cause),
    #[error("storage error: write finished without a value")]
    NoValue,
    /// A record that does not read back; the message says what is wrong with it.
    #[error("record encoding error: {0}")]
    Codec(String),
    #[error("record encoding error: {0}")]
    Json(#[source] Arc<serde_json::Error>),
    #[error("the store is closed")]
    Closed,
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(Arc::new(e)) }
        }
    )*};
}
db_error!(redb::Error, redb::TableError, redb::StorageError, redb::TransactionError, redb::CommitError);

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Json(Arc::new(e))
    }
}

/// A write waiting for the writer, with its result type erased.
trait PendingWrite: Send {
    /// Runs the closure in the batch transaction. May run again in a fresh transaction
    /// when another closure of the same batch failed.
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), StoreError>;
    /// Reports the outcome to the caller once the batch is committed or has failed.
    fn finish(self: Box<Self>, result: Result<(), StoreError>);
}

struct TypedWrite<T, F> {
    f: F,
    value: Option<T>,
    ack: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> PendingWrite for TypedWrite<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> Result<(), StoreError> {
        self.value = Some((self.f)(txn)?);
        Ok(())
    }

    fn finish(self: Box<Self>, result: Result<(), StoreError>) {
        let out = match (result, self.value) {
            (Ok(()), Some(v)) => Ok(v),
            (Ok(()), None) => Err(StoreError::NoValue),
            (Err(e), _) => Err(e),
        };
        let _ = self.ack.send(out);
    }
}

enum WriterMsg {
    Write(Box<dyn PendingWrite>),
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the writer, for tests, metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Successful durable commits.
    pub commits: AtomicU64,
    /// Closures acknowledged as committed.
    pub writes: AtomicU64,
}

struct Inner {
    db: Arc<Database>,
    path: PathBuf,
    tx: mpsc::Sender<WriterMsg>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    stats: Arc<WriterStats>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.inner.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the data file, checks its integrity and schema, runs migrations,
    /// and starts the writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // Created 0600 before redb sees it (redb initialises an empty file); an existing entry
        // is opened without following a symlink, and redb gets that descriptor.
        let open_err = |e: std::io::Error| StoreError::Open { path: path.to_path_buf(), source: Arc::new(e) };
        let file = match files::open_existing(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => files::create_new(path, 0o600).map_err(open_err)?,
            Err(e) => return Err(open_err(e)),
        };
        let mut builder = Database::builder();
        builder.set_cache_size(32 * 1024 * 1024);
        // A file altered outside redb fails to open with an error instead of being trusted.
        builder.set_check_integrity_on_open(true);
        let backend = redb::backends::FileBackend::new(file).map_err(|e| classify_open_error(path, e))?;
        let db = builder.create_with_backend(backend).map_err(|e| classify_open_error(path, e))?;
        migrate(&db, path)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(WriterStats::default());
        let writer = {
            let db = db.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer_loop(db, rx, stats))
                .map_err(|e| StoreError::Writer { path: path.to_path_buf(), source: Arc::new(e) })?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                tx,
                writer: std::sync::Mutex::new(Some(writer)),
                stats,
            }),
        })
    }

    /// Runs `f` in a write transaction shared with other concurrent writes, and returns its
    /// value once the transaction is durably committed. `f` may run more than once (when
    /// another write in its batch fails), so it must only touch the transaction.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (ack, rx) = oneshot::channel();
        let job = Box::new(TypedWrite { f, value: None, ack });
        self.inner.tx.send(WriterMsg::Write(job)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` in a read transaction on the caller's thread.
    pub fn read<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let txn = self.inner.db.begin_read()?;
        f(&txn)
    }

    /// A named record of the `secrets` table (its private parts are sealed by the owner).
    pub fn get_secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(tables::SECRETS)?;
            Ok(t.get(name)?.map(|v| v.value().to_vec()))
        })
    }

    /// Writes a named record of the `secrets` table (durably, through the writer).
    pub async fn put_secret(&self, name: impl Into<String>, bytes: Vec<u8>) -> Result<(), StoreError> {
        let name = name.into();
        self.write(move |txn| {
            let mut t = txn.open_table(tables::SECRETS)?;
            t.insert(name.as_str(), bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    /// A record of the `meta` table (small JSON documents the gate keeps for itself).
    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(|txn| {
            let t = txn.open_table(tables::META)?;
            Ok(t.get(name)?.map(|v| v.value().to_vec()))
        })
    }

    /// Writes (or, with `None`, removes) a record of the `meta` table, durably.
    pub async fn put_meta(&self, name: impl Into<String>, bytes: Option<Vec<u8>>) -> Result<(), StoreError> {
        let name = name.into();
        self.write(move |txn| {
            let mut t = txn.open_table(tables::META)?;
            match &bytes {
                Some(b) => {
                    t.insert(name.as_str(), b.as_slice())?;
                }
                None => {
                    t.remove(name.as_str())?;
                }
            }
            Ok(())
        })
        .await
    }

    /// Writes a consistent snapshot of every table to a new redb file at `dest` (created
    /// 0600): one read transaction copied out, so concurrent writes neither block nor tear it.
    pub fn backup_to(&self, dest: &Path) -> Result<u64, StoreError> {
        let open_err = |e: std::io::Error| StoreError::Open { path: dest.to_path_buf(), source: Arc::new(e) };
        // redb writes through this descriptor: the name is never reopened (it may be swapped).
        let file = files::create_new(dest, 0o600).map_err(open_err)?;
        let backend = redb::backends::FileBackend::new(file).map_err(|e| classify_open_error(dest, e))?;
        let out = Database::builder().create_with_backend(backend).map_err(|e| classify_open_error(dest, e))?;
        let src = self.inner.db.begin_read()?;
        let dst = out.begin_write()?;
        let mut rows = 0u64;
        macro_rules! copy {
            ($($t:expr),* $(,)?) => {$({
                let s = src.open_table($t)?;
                let mut d = dst.open_table($t)?;
                for row in s.iter()? {
                    let (k, v) = row?;
                    d.insert(k.value(), v.value())?;
                    rows += 1;
                }
            })*};
        }
        use redb::ReadableTable;
        copy!(
            tables::META,
            tables::KEYRING,
            tables::SECRETS,
            tables::USERS,
            tables::USER_EMAILS,
            tables::SESSIONS,
            tables::USER_SESSIONS,
            tables::REFRESH_TOKENS,
            tables::SESSION_REFRESH,
            tables::AUDIT,
            tables::AUDIT_META,
            tables::AUDIT_BY_SUBJECT,
        );
        dst.commit()?;
        Ok(rows)
    }

    /// Whether the store answers a read.
    pub fn ping(&self) -> bool {
        self.read(|txn| {
            txn.open_table(tables::META)?;
            Ok(())
        })
        .is_ok()
    }

    /// The data file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writer counters.
    pub fn stats(&self) -> &WriterStats {
        &self.inner.stats
    }

    /// Flushes every queued write, stops the writer and waits for it.
    pub async fn close(&self) {
        let (ack, rx) = oneshot::channel();
        if self.inner.tx.send(WriterMsg::Shutdown(ack)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

fn classify_open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::Locked(path.to_path_buf())
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => {
            StoreError::Open { path: path.to_path_buf(), source: Arc::new(io) }
        }
        redb::DatabaseError::Storage(other) => {
            StoreError::Corrupt { path: path.to_path_buf(), reason: other.to_string() }
        }
        redb::DatabaseError::UpgradeRequired(v) => {
            StoreError::Corrupt { path: path.to_path_buf(), reason: format!("redb file format {v} needs an upgrade") }
        }
        other => StoreError::Open { path: path.to_path_buf(), source: Arc::new(other) },
    }
}

/// One migration step: brings the schema from `version - 1` to `version`.
type Migration = fn(&WriteTransaction) -> Result<(), StoreError>;

/// Migrations by target version; index 0 brings an empty file to version 1.
const MIGRATIONS: &[Migration] = &[
    |txn| {
        tables::create_all(txn)?;
        Ok(())
    },
    |txn| {
        tables::create_audit(txn)?;
        Ok(())
    },
];

fn migrate(db: &Database, path: &Path) -> Result<(), StoreError> {
    let current = {
        let txn = db.begin_read()?;
        match txn.open_table(tables::META) {
            Ok(meta) => match meta.get(SCHEMA_KEY)? {
                Some(v) => {
                    let bytes: [u8; 8] = v.value().try_into().map_err(|_| StoreError::Corrupt {
                        path: path.to_path_buf(),
                        reason: "schema version record is malformed".into(),
                    })?;
                    u64::from_be_bytes(bytes)
                }
                None => 0,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        }
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { path: path.to_path_buf(), found: current, supported: SCHEMA_VERSION });
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let txn = db.begin_write()?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        step(&txn)?;
        tracing::info!(to = i + 1, "migrated data file schema");
    }
    {
        let mut meta = txn.open_table(tables::META)?;
        meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

fn writer_loop(db: Arc<Database>, mut rx: mpsc::Receiver<WriterMsg>, stats: Arc<WriterStats>) {
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    while shutdown.is_none() {
        let first = match rx.blocking_recv() {
            Some(WriterMsg::Write(job)) => job,
            Some(WriterMsg::Shutdown(ack)) => {
                shutdown = Some(ack);
                // Flush whatever is still queued behind the shutdown request.
                let mut rest = Vec::new();
                while let Ok(msg) = rx.try_recv() {
                    if let WriterMsg::Write(job) = msg {
                        rest.push(job);
                    }
                }
                if !rest.is_empty() {
                    commit_batch(&db, rest, &stats);
                }
                break;
            }
            None => break,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(WriterMsg::Write(job)) => batch.push(job),
                Ok(WriterMsg::Shutdown(ack)) => {
                    shutdown = Some(ack);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&db, batch, &stats);
    }
    rx.close();
    // Anything that raced in after the shutdown request is refused, never lost silently.
    while let Ok(msg) = rx.try_recv() {
        if let WriterMsg::Write(job) = msg {
            job.finish(Err(StoreError::Closed));
        }
    }
    if let Some(ack) = shutdown {
        let _ = ack.send(());
    }
}

/// Commits a batch; a closure that fails is answered with its error and the rest run
/// again in a fresh transaction, so one bad write never takes the others down.
fn commit_batch(db: &Database, mut batch: Vec<Box<dyn PendingWrite>>, stats: &WriterStats) {
    while !batch.is_empty() {
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                let err = StoreError::from(e);
                for job in batch {
                    job.finish(Err(err.clone()));
                }
                return;
            }
        };
        let mut failed = None;
        for (i, job) in batch.iter_mut().enumerate() {
            if let Err(e) = job.run(&txn) {
                failed = Some((i, e));
                break;
            }
        }
        if let Some((i, e)) = failed {
            let _ = txn.abort();
            batch.remove(i).finish(Err(e));
            continue;
        }
        match txn.commit() {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.writes.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for job in batch {
                    job.finish(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                let err = StoreError::from(e);
                for job in batch {
                    job.finish(Err(err.clone()));
                }
            }
        }
        return;
    }
}
