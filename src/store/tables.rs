//! Every redb table of the gate, in one place. Values are bytes; each domain module
//! owns the encoding of its records.

use redb::TableDefinition;

/// Schema version, active key id and other single values.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Data keys, wrapped by the master key: key id → sealed key.
pub const KEYRING: TableDefinition<u32, &[u8]> = TableDefinition::new("keyring");
/// Named secrets and certificates (private parts encrypted with the keyring).
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// User records by user id.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

/// Creates every table, so readers never meet a missing one.
pub(crate) fn create_all(txn: &redb::WriteTransaction) -> Result<(), redb::TableError> {
    txn.open_table(META)?;
    txn.open_table(KEYRING)?;
    txn.open_table(SECRETS)?;
    txn.open_table(USERS)?;
    Ok(())
}
