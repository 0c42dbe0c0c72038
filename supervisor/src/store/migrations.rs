//! Schema migrations. Append only: each entry moves the schema from version
//! `i` to `i + 1` (`PRAGMA user_version`), inside one transaction.

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: VMs and host settings.
    "CREATE TABLE vms (
        name TEXT PRIMARY KEY NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER,
        accel TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE settings (
        key TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );",
    // 2: named snapshots (the data lives with the VM's disk; this is the index).
    "CREATE TABLE snapshots (
        vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
        name TEXT NOT NULL,
        has_memory INTEGER NOT NULL,
        created_unix INTEGER NOT NULL,
        PRIMARY KEY (vm, name)
    );",
];

pub(super) fn apply(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|source| StoreError::Migrate { version: 0, source })?;
    let current = usize::try_from(current).unwrap_or(usize::MAX);
    if current > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        let err = |source| StoreError::Migrate { version, source };
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", version as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}
