//! Every redb table of the gate, in one place. Values are bytes; each domain module
//! owns the encoding of its records. A new table must also be added to `Store::backup_to`.

use redb::TableDefinition;

/// Schema version, active key id and other single values.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Data keys, wrapped by the master key: key id → sealed key.
pub const KEYRING: TableDefinition<u32, &[u8]> = TableDefinition::new("keyring");
/// Named secrets and certificates (private parts encrypted with the keyring).
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// User records by user id.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Normalised email → user id.
pub const USER_EMAILS: TableDefinition<&str, &str> = TableDefinition::new("user_emails");
/// Session records by session id.
pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// `user_id/session_id` → (), to list a user's sessions.
pub const USER_SESSIONS: TableDefinition<&str, ()> = TableDefinition::new("user_sessions");
/// SHA-256 (hex) of a refresh token → its record.
pub const REFRESH_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("refresh_tokens");
/// `session_id/hash` → (), to delete a session's refresh tokens.
pub const SESSION_REFRESH: TableDefinition<&str, ()> = TableDefinition::new("session_refresh");
/// Audit records by sequence number (JSON with the record's chain hash).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Chain head and anchor of the audit log.
pub const AUDIT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_meta");
/// (user id or email, sequence) → (), to find the records about one user.
pub const AUDIT_BY_SUBJECT: TableDefinition<(&str, u64), ()> = TableDefinition::new("audit_by_subject");

/// Creates every table, so readers never meet a missing one.
pub(crate) fn create_all(txn: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(META)?;
    txn.open_table(KEYRING)?;
    txn.open_table(SECRETS)?;
    txn.open_table(USERS)?;
    txn.open_table(USER_EMAILS)?;
    txn.open_table(SESSIONS)?;
    txn.open_table(USER_SESSIONS)?;
    txn.open_table(REFRESH_TOKENS)?;
    txn.open_table(SESSION_REFRESH)?;
    Ok(())
}

/// Schema 2: the audit log.
pub(crate) fn create_audit(txn: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(AUDIT)?;
    txn.open_table(AUDIT_META)?;
    txn.open_table(AUDIT_BY_SUBJECT)?;
    Ok(())
}
