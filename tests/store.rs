//! The redb store: group commit, durability across reopen, schema guard.

use std::sync::atomic::Ordering;

use miauflix_gate::store::{SCHEMA_VERSION, Store, StoreError, tables};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.redb");
    let store = Store::open(&path).unwrap();
    let writers = 400u32;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{i:04}");
            let value = format!("v{i}");
            store
                .write(move |txn| {
                    let mut t = txn.open_table(tables::SECRETS)?;
                    t.insert(key.as_str(), value.as_bytes())?;
                    Ok(i)
                })
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), i as u32, "each caller gets its own value back");
    }
    let commits = store.stats().commits.load(Ordering::Relaxed);
    let writes = store.stats().writes.load(Ordering::Relaxed);
    assert_eq!(writes, writers as u64);
    assert!(commits < writes, "writes must be batched: {commits} commits for {writes} writes");
    store.close().await;
    drop(store);

    let store = Store::open(&path).unwrap();
    let n = store
        .read(|txn| {
            let t = txn.open_table(tables::SECRETS)?;
            let mut n = 0;
            for i in 0..writers {
                let v = t.get(format!("k{i:04}").as_str())?.expect("acknowledged write is durable");
                assert_eq!(v.value(), format!("v{i}").as_bytes());
                n += 1;
            }
            Ok(n)
        })
        .unwrap();
    assert_eq!(n, writers);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_does_not_take_its_batch_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("gate.redb")).unwrap();
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write(move |txn| {
                    let mut t = txn.open_table(tables::SECRETS)?;
                    t.insert(format!("k{i}").as_str(), b"x".as_slice())?;
                    if i % 7 == 0 {
                        return Err(StoreError::Codec(format!("refused {i}")));
                    }
                    Ok(())
                })
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.is_err(), i % 7 == 0, "write {i}: {r:?}");
    }
    store
        .read(|txn| {
            let t = txn.open_table(tables::SECRETS)?;
            for i in 0..50u32 {
                assert_eq!(t.get(format!("k{i}").as_str())?.is_some(), i % 7 != 0, "k{i}");
            }
            Ok(())
        })
        .unwrap();
    store.close().await;
    // After close, writes are refused rather than lost silently.
    let r = store.write(|_| Ok(())).await;
    assert!(matches!(r, Err(StoreError::Closed)));
}

#[tokio::test]
async fn refuses_a_newer_schema_without_changing_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .write(|txn| {
                let mut meta = txn.open_table(tables::META)?;
                meta.insert("schema_version", (SCHEMA_VERSION + 1).to_be_bytes().as_slice())?;
                Ok(())
            })
            .await
            .unwrap();
        store.close().await;
    }
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("upgrade miauflix-gate"), "{err}");
    // The newer schema's record is still there: nothing was migrated down.
    let db = redb::ReadOnlyDatabase::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = txn.open_table(tables::META).unwrap();
    let v = meta.get("schema_version").unwrap().unwrap();
    assert_eq!(v.value(), (SCHEMA_VERSION + 1).to_be_bytes().as_slice());
}

#[tokio::test]
async fn a_second_opener_is_refused_while_the_first_holds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gate.redb");
    let store = Store::open(&path).unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    store.close().await;
}

#[tokio::test]
async fn a_backup_holds_every_table_of_the_store() {
    use redb::{ReadableDatabase, TableHandle};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("gate.redb")).unwrap();
    store
        .write(|txn| {
            txn.open_table(tables::USERS)?.insert("u1", b"{}".as_slice())?;
            Ok(())
        })
        .await
        .unwrap();
    let backup = dir.path().join("backup.redb");
    let rows = store.backup_to(&backup).unwrap();
    assert!(rows >= 2, "schema version and the user at least");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    let names = |db: &redb::Database| -> Vec<String> {
        let txn = db.begin_read().unwrap();
        let mut v: Vec<String> = txn.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        v.sort();
        v
    };
    store.close().await;
    drop(store);
    let src = redb::Database::open(dir.path().join("gate.redb")).unwrap();
    let dst = redb::Database::open(&backup).unwrap();
    assert_eq!(names(&src), names(&dst), "Store::backup_to must copy every table");
}
