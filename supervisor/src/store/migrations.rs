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
    // 3: egress rules and log (supervisor/src/egress). The log and the
    // synthetic-address map have no foreign key, so a batch never fails for a
    // VM deleted meanwhile; a trigger removes them with their VM instead.
    "CREATE TABLE egress_rules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        ports TEXT,
        proto TEXT,
        created_unix INTEGER NOT NULL
    );
    CREATE INDEX egress_rules_vm ON egress_rules (vm);
    CREATE TABLE egress_log (
        id INTEGER PRIMARY KEY,
        vm TEXT NOT NULL,
        time_unix_ms INTEGER NOT NULL,
        proto TEXT NOT NULL,
        name TEXT,
        addr TEXT,
        port INTEGER,
        decision TEXT NOT NULL,
        rule INTEGER,
        reason TEXT NOT NULL,
        bytes_up INTEGER,
        bytes_down INTEGER,
        ended_unix_ms INTEGER
    );
    CREATE INDEX egress_log_vm ON egress_log (vm, id);
    CREATE TABLE egress_names (
        vm TEXT NOT NULL,
        addr TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (vm, addr)
    );
    CREATE TRIGGER egress_vm_deleted AFTER DELETE ON vms BEGIN
        DELETE FROM egress_log WHERE vm = old.name;
        DELETE FROM egress_names WHERE vm = old.name;
    END;",
    // 4: shared folders (supervisor/src/share).
    "CREATE TABLE shares (
        vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        host_path TEXT NOT NULL,
        read_only INTEGER NOT NULL,
        PRIMARY KEY (vm, tag)
    );",
    // 5: each VM's own inference API key (attributes its requests).
    "CREATE TABLE inference_keys (
        vm TEXT PRIMARY KEY NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
        key TEXT NOT NULL UNIQUE
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
