//! Shared folders per VM, and forgetting memory states when the device set
//! they were taken with changes.

use clawpen_api::{ShareTag, SharedFolder, VmName};
use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    /// Adds a share; `false` if the VM already has one with that tag.
    pub fn add_share(&self, vm: &VmName, share: &SharedFolder) -> Result<bool, StoreError> {
        self.with(|conn| {
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO shares (vm, tag, host_path, read_only)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![
                        vm.as_str(),
                        share.tag.as_str(),
                        share.host_path,
                        share.read_only
                    ],
                )
                .map_err(|source| StoreError::Query {
                    what: "insert share",
                    source,
                })?;
            Ok(n == 1)
        })
    }

    /// Removes a share; `false` if there was none with that tag.
    pub fn remove_share(&self, vm: &VmName, tag: &ShareTag) -> Result<bool, StoreError> {
        self.with(|conn| {
            let n = conn
                .execute(
                    "DELETE FROM shares WHERE vm = ?1 AND tag = ?2",
                    params![vm.as_str(), tag.as_str()],
                )
                .map_err(|source| StoreError::Query {
                    what: "delete share",
                    source,
                })?;
            Ok(n == 1)
        })
    }

    pub fn shares(&self, vm: &VmName) -> Result<Vec<SharedFolder>, StoreError> {
        self.with(|conn| {
            let err = |source| StoreError::Query {
                what: "list shares",
                source,
            };
            let mut stmt = conn
                .prepare("SELECT tag, host_path, read_only FROM shares WHERE vm = ?1 ORDER BY tag")
                .map_err(err)?;
            let rows = stmt
                .query_map(params![vm.as_str()], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, bool>(2)?,
                    ))
                })
                .map_err(err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            Ok(rows
                .into_iter()
                .filter_map(|(tag, host_path, read_only)| {
                    Some(SharedFolder {
                        tag: ShareTag::parse(&tag).ok()?,
                        host_path,
                        read_only,
                    })
                })
                .collect())
        })
    }

    /// Marks every snapshot of `vm` disk-only: a memory state only restores
    /// into the same devices, and the VM's devices changed.
    pub fn forget_memory_states(&self, vm: &VmName) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE snapshots SET has_memory = 0 WHERE vm = ?1",
                params![vm.as_str()],
            )
            .map_err(|source| StoreError::Query {
                what: "forget memory states",
                source,
            })?;
            Ok(())
        })
    }
}
