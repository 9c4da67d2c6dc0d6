//! Typed access to the auth tables inside one write transaction (these run on the store's
//! writer thread and touch nothing but the transaction), and [`write`]: a store write whose
//! closure can refuse with an [`AuthError`] (committing nothing it did not write) or fail
//! with a store error (rolled back), through one error type.

use redb::{ReadableTable, WriteTransaction};

use super::model::{AuthError, RefreshRecord, Role, SessionRecord, UserRecord};
use crate::store::{Store, StoreError, tables};

/// Why a write closure stopped: the operation is refused, or the store failed.
pub(super) enum TxError {
    Refused(AuthError),
    Store(StoreError),
}

impl From<AuthError> for TxError {
    fn from(e: AuthError) -> Self {
        TxError::Refused(e)
    }
}

macro_rules! store_error {
    ($($t:ty),*) => {$(
        impl From<$t> for TxError {
            fn from(e: $t) -> Self { TxError::Store(e.into()) }
        }
    )*};
}
store_error!(StoreError, redb::Error, redb::TableError, redb::StorageError, serde_json::Error);

/// Runs `f` in a store write: `Ok` and a refusal commit (a refusal has written nothing), a
/// store error rolls back.
pub(super) async fn write<T, F>(store: &Store, mut f: F) -> Result<T, AuthError>
where
    T: Send + 'static,
    F: FnMut(&WriteTransaction) -> Result<T, TxError> + Send + 'static,
{
    store
        .write(move |txn| match f(txn) {
            Ok(v) => Ok(Ok(v)),
            Err(TxError::Refused(e)) => Ok(Err(e)),
            Err(TxError::Store(e)) => Err(e),
        })
        .await?
}

/// The key range of every `"{owner}/…"` index entry (`/` sorts just below `0`).
pub(super) fn owned_by(owner: &str) -> std::ops::Range<String> {
    format!("{owner}/")..format!("{owner}0")
}

pub(super) fn sha256_hex(token: &str) -> String {
    hex::encode(crate::crypto::sha256(token.as_bytes()))
}

pub(super) fn new_id() -> String {
    hex::encode(crate::crypto::random_bytes::<16>())
}

pub(super) fn get_json<T: serde::de::DeserializeOwned>(
    txn: &WriteTransaction,
    def: redb::TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let t = txn.open_table(def)?;
    let v = t.get(key)?;
    match v {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

pub(super) fn put_json<T: serde::Serialize>(
    txn: &WriteTransaction,
    def: redb::TableDefinition<&str, &[u8]>,
    key: &str,
    value: &T,
) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value)?;
    let mut t = txn.open_table(def)?;
    t.insert(key, bytes.as_slice())?;
    Ok(())
}

pub(super) fn user_session_ids(txn: &WriteTransaction, user_id: &str) -> Result<Vec<String>, StoreError> {
    let t = txn.open_table(tables::USER_SESSIONS)?;
    let range = owned_by(user_id);
    let mut out = Vec::new();
    for row in t.range(range.start.as_str()..range.end.as_str())? {
        let (k, _) = row?;
        if let Some((_, sid)) = k.value().split_once('/') {
            out.push(sid.to_string());
        }
    }
    Ok(out)
}

pub(super) fn insert_refresh(txn: &WriteTransaction, session_id: &str, hash: &str) -> Result<(), StoreError> {
    put_json(
        txn,
        tables::REFRESH_TOKENS,
        hash,
        &RefreshRecord { session_id: session_id.to_string(), rotated_at: None },
    )?;
    let mut idx = txn.open_table(tables::SESSION_REFRESH)?;
    idx.insert(format!("{session_id}/{hash}").as_str(), ())?;
    Ok(())
}

/// Ends a session: marks it revoked, deletes its refresh tokens and index entries.
pub(super) fn end_session(txn: &WriteTransaction, session: &mut SessionRecord, now: i64) -> Result<(), StoreError> {
    if session.revoked_at.is_none() {
        session.revoked_at = Some(now);
    }
    put_json(txn, tables::SESSIONS, &session.id, session)?;
    let hashes: Vec<String> = {
        let idx = txn.open_table(tables::SESSION_REFRESH)?;
        let range = owned_by(&session.id);
        let mut v = Vec::new();
        for row in idx.range(range.start.as_str()..range.end.as_str())? {
            let (k, _) = row?;
            v.push(k.value().to_string());
        }
        v
    };
    let mut idx = txn.open_table(tables::SESSION_REFRESH)?;
    let mut rt = txn.open_table(tables::REFRESH_TOKENS)?;
    for key in hashes {
        idx.remove(key.as_str())?;
        if let Some((_, hash)) = key.split_once('/') {
            rt.remove(hash)?;
        }
    }
    Ok(())
}

/// Deletes a session record entirely (used for expired or revoked sessions beyond the cap).
pub(super) fn forget_session(txn: &WriteTransaction, session: &mut SessionRecord, now: i64) -> Result<(), StoreError> {
    end_session(txn, session, now)?;
    txn.open_table(tables::SESSIONS)?.remove(session.id.as_str())?;
    txn.open_table(tables::USER_SESSIONS)?.remove(format!("{}/{}", session.user_id, session.id).as_str())?;
    Ok(())
}

/// Ends every live session of a user except `keep`; returns the ended session ids.
pub(super) fn end_user_sessions(
    txn: &WriteTransaction,
    user_id: &str,
    keep: Option<&str>,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut ended = Vec::new();
    for sid in user_session_ids(txn, user_id)? {
        if Some(sid.as_str()) == keep {
            continue;
        }
        if let Some(mut s) = get_json::<SessionRecord>(txn, tables::SESSIONS, &sid)? {
            if s.is_live(now) {
                ended.push(sid.clone());
            }
            forget_session(txn, &mut s, now)?;
        }
    }
    Ok(ended)
}

pub(super) fn count_enabled_admins(txn: &WriteTransaction) -> Result<usize, StoreError> {
    let t = txn.open_table(tables::USERS)?;
    let mut n = 0;
    for row in t.iter()? {
        let (_, v) = row?;
        let u: UserRecord = serde_json::from_slice(v.value())?;
        if u.role == Role::Admin && !u.disabled {
            n += 1;
        }
    }
    Ok(n)
}
