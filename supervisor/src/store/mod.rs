//! The supervisor's SQLite store: the only module that writes SQL.
//!
//! WAL mode so readers never block the writer, `synchronous=FULL` so a state
//! change that was announced survives a crash, and schema migrations keyed on
//! `PRAGMA user_version` so an old state directory upgrades in place.

mod egress;
mod inference_keys;
mod migrations;
mod shares;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clawpen_api::{SnapshotInfo, SnapshotName, VmInfo, VmName, VmSpec, VmState};
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store migration to schema version {version} failed: {source}")]
    Migrate {
        version: usize,
        source: rusqlite::Error,
    },
    #[error("store schema version {found} is newer than this clawpen understands ({known}); upgrade clawpen")]
    TooNew { found: usize, known: usize },
    #[error("store query `{what}` failed: {source}")]
    Query {
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error("store row for VM {name} is corrupt ({column}): {source}")]
    Corrupt {
        name: String,
        column: &'static str,
        source: serde_json::Error,
    },
    #[error("VM {0} already exists")]
    Exists(VmName),
}

/// One VM's row: its spec, last known state and VMM process.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub spec: VmSpec,
    pub state: VmState,
    pub pid: Option<u32>,
    pub accel: Option<String>,
}

impl VmRecord {
    pub fn info(&self) -> VmInfo {
        VmInfo {
            spec: self.spec.clone(),
            state: self.state.clone(),
            pid: self.pid,
            accel: self.accel.clone(),
        }
    }
}

/// Handle to the store. Cheap calls; each takes the connection for one statement
/// or transaction and never across an `.await`.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        migrations::apply(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (statements are atomic), so a poisoned lock is still usable.
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn)
    }

    /// Adds a VM in state `Created`. Fails if the name is taken.
    pub fn insert_vm(&self, spec: &VmSpec) -> Result<VmRecord, StoreError> {
        let record = VmRecord {
            spec: spec.clone(),
            state: VmState::Created,
            pid: None,
            accel: None,
        };
        self.with(|conn| {
            let spec_json = to_json(&record.spec);
            let state_json = to_json(&record.state);
            let inserted = conn
                .execute(
                    "INSERT OR IGNORE INTO vms (name, spec, state, pid, accel, updated_at)
                     VALUES (?1, ?2, ?3, NULL, NULL, unixepoch())",
                    params![spec.name.as_str(), spec_json, state_json],
                )
                .map_err(|source| StoreError::Query {
                    what: "insert vm",
                    source,
                })?;
            if inserted == 0 {
                return Err(StoreError::Exists(spec.name.clone()));
            }
            Ok(record)
        })
    }

    /// Records a VM's new state and VMM process. Called *before* the change is
    /// announced on the event stream.
    pub fn set_state(
        &self,
        name: &VmName,
        state: &VmState,
        pid: Option<u32>,
        accel: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE vms SET state = ?2, pid = ?3, accel = ?4, updated_at = unixepoch()
                 WHERE name = ?1",
                params![name.as_str(), to_json(state), pid, accel],
            )
            .map_err(|source| StoreError::Query {
                what: "update vm state",
                source,
            })?;
            Ok(())
        })
    }

    pub fn vm(&self, name: &VmName) -> Result<Option<VmRecord>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT name, spec, state, pid, accel FROM vms WHERE name = ?1",
                params![name.as_str()],
                raw_row,
            )
            .optional()
            .map_err(|source| StoreError::Query {
                what: "select vm",
                source,
            })?
            .map(decode_row)
            .transpose()
        })
    }

    pub fn vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        self.with(|conn| {
            let query_err = |source| StoreError::Query {
                what: "list vms",
                source,
            };
            let mut stmt = conn
                .prepare("SELECT name, spec, state, pid, accel FROM vms ORDER BY name")
                .map_err(query_err)?;
            let rows = stmt
                .query_map([], raw_row)
                .map_err(query_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_err)?;
            rows.into_iter().map(decode_row).collect()
        })
    }

    /// Removes a VM and its snapshot index (cascade).
    pub fn delete_vm(&self, name: &VmName) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute("DELETE FROM vms WHERE name = ?1", params![name.as_str()])
                .map_err(|source| StoreError::Query {
                    what: "delete vm",
                    source,
                })?;
            Ok(())
        })
    }

    /// Records a snapshot (replacing one of the same name).
    pub fn put_snapshot(&self, vm: &VmName, snapshot: &SnapshotInfo) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO snapshots (vm, name, has_memory, created_unix) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(vm, name) DO UPDATE SET has_memory = excluded.has_memory,
                     created_unix = excluded.created_unix",
                params![
                    vm.as_str(),
                    snapshot.name.as_str(),
                    snapshot.has_memory,
                    snapshot.created_unix as i64
                ],
            )
            .map_err(|source| StoreError::Query {
                what: "insert snapshot",
                source,
            })?;
            Ok(())
        })
    }

    pub fn delete_snapshot(&self, vm: &VmName, name: &SnapshotName) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM snapshots WHERE vm = ?1 AND name = ?2",
                params![vm.as_str(), name.as_str()],
            )
            .map_err(|source| StoreError::Query {
                what: "delete snapshot",
                source,
            })?;
            Ok(())
        })
    }

    /// Forgets every snapshot of a VM (its disk was replaced).
    pub fn clear_snapshots(&self, vm: &VmName) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute("DELETE FROM snapshots WHERE vm = ?1", params![vm.as_str()])
                .map_err(|source| StoreError::Query {
                    what: "clear snapshots",
                    source,
                })?;
            Ok(())
        })
    }

    pub fn snapshots(&self, vm: &VmName) -> Result<Vec<SnapshotInfo>, StoreError> {
        self.with(|conn| {
            let query_err = |source| StoreError::Query {
                what: "list snapshots",
                source,
            };
            let mut stmt = conn
                .prepare(
                    "SELECT name, has_memory, created_unix FROM snapshots WHERE vm = ?1
                     ORDER BY created_unix, name",
                )
                .map_err(query_err)?;
            let rows = stmt
                .query_map(params![vm.as_str()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, bool>(1)?,
                        row.get::<_, i64>(2)?,
                    ))
                })
                .map_err(query_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(query_err)?;
            Ok(rows
                .into_iter()
                .filter_map(|(name, has_memory, created)| {
                    Some(SnapshotInfo {
                        name: SnapshotName::parse(&name).ok()?,
                        has_memory,
                        created_unix: created.max(0) as u64,
                    })
                })
                .collect())
        })
    }

    /// A small key/value table for host facts worth remembering (the KVM probe).
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|source| StoreError::Query {
                what: "select setting",
                source,
            })
        })
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(|source| StoreError::Query {
                what: "upsert setting",
                source,
            })?;
            Ok(())
        })
    }
}

type RawRow = (String, String, String, Option<u32>, Option<String>);

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn decode_row((name, spec, state, pid, accel): RawRow) -> Result<VmRecord, StoreError> {
    let corrupt = |column| {
        let name = name.clone();
        move |source| StoreError::Corrupt {
            name,
            column,
            source,
        }
    };
    Ok(VmRecord {
        spec: serde_json::from_str(&spec).map_err(corrupt("spec"))?,
        state: serde_json::from_str(&state).map_err(corrupt("state"))?,
        pid,
        accel,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Serialising our own plain data types cannot fail.
    serde_json::to_string(value).expect("wire types serialise")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn spec(name: &str) -> VmSpec {
        VmSpec {
            name: VmName::parse(name).unwrap(),
            image: "test-guest".into(),
            cpus: 1,
            memory_mib: 256,
            disk_gib: None,
        }
    }

    #[test]
    fn vm_round_trips_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            store.insert_vm(&spec("a")).unwrap();
            store
                .set_state(&spec("a").name, &VmState::Running, Some(42), Some("tcg"))
                .unwrap();
            assert!(matches!(
                store.insert_vm(&spec("a")),
                Err(StoreError::Exists(_))
            ));
        }
        let store = Store::open(&path).unwrap();
        let rec = store.vm(&spec("a").name).unwrap().unwrap();
        assert_eq!(rec.state, VmState::Running);
        assert_eq!(rec.pid, Some(42));
        assert_eq!(rec.accel.as_deref(), Some("tcg"));
        assert_eq!(store.vms().unwrap().len(), 1);
        assert!(store.vm(&spec("b").name).unwrap().is_none());
    }

    #[test]
    fn snapshots_are_indexed_per_vm_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.insert_vm(&spec("a")).unwrap();
        let snap = SnapshotInfo {
            name: SnapshotName::parse("clean").unwrap(),
            has_memory: true,
            created_unix: 5,
        };
        store.put_snapshot(&spec("a").name, &snap).unwrap();
        assert_eq!(
            store.snapshots(&spec("a").name).unwrap(),
            vec![snap.clone()]
        );
        store.delete_vm(&spec("a").name).unwrap();
        assert!(store.snapshots(&spec("a").name).unwrap().is_empty());
        assert!(store.vm(&spec("a").name).unwrap().is_none());
    }

    #[test]
    fn settings_upsert() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.setting("k").unwrap(), None);
        store.set_setting("k", "1").unwrap();
        store.set_setting("k", "2").unwrap();
        assert_eq!(store.setting("k").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 999, .. })
        ));
    }
}
