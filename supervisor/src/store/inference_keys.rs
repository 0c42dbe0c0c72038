//! Each VM's inference API key: made once, kept with the VM, gone with it.
//! The key is how the inference service tells which VM asked, so it must
//! survive restarts (a guest configured with it keeps working).

use clawpen_api::VmName;
use rand::Rng;
use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// Prefix of every per-VM key, so one found in a log is recognisable.
pub const KEY_PREFIX: &str = "sk-clawpen-";

impl Store {
    /// The VM's key, made now if it has none (so VMs made by an older
    /// version get one on the next start). A read when the key exists: boots
    /// and `GET .../inference` call this, and they should not write.
    pub fn ensure_inference_key(&self, vm: &VmName) -> Result<String, StoreError> {
        if let Some(key) = self.inference_key(vm)? {
            return Ok(key);
        }
        let fresh = format!(
            "{KEY_PREFIX}{}",
            hex::encode(rand::rng().random::<[u8; 24]>())
        );
        self.with(|conn| {
            let err = |what| move |source| StoreError::Query { what, source };
            // OR IGNORE: a racing caller may have made it since the read;
            // theirs wins and both return it.
            conn.execute(
                "INSERT OR IGNORE INTO inference_keys (vm, key) VALUES (?1, ?2)",
                params![vm.as_str(), fresh],
            )
            .map_err(err("insert inference key"))?;
            conn.query_row(
                "SELECT key FROM inference_keys WHERE vm = ?1",
                params![vm.as_str()],
                |row| row.get(0),
            )
            .map_err(err("read inference key"))
        })
    }

    /// The VM's key, if it has one.
    pub fn inference_key(&self, vm: &VmName) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT key FROM inference_keys WHERE vm = ?1",
                params![vm.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(|source| StoreError::Query {
                what: "read inference key",
                source,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::spec;

    #[test]
    fn key_is_made_once_and_goes_with_the_vm() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let name = VmName::parse("a").unwrap();
        store.insert_vm(&spec("a")).unwrap();
        assert_eq!(store.inference_key(&name).unwrap(), None);
        let key = store.ensure_inference_key(&name).unwrap();
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 48);
        assert_eq!(store.ensure_inference_key(&name).unwrap(), key);
        let other = store
            .ensure_inference_key(&{
                store.insert_vm(&spec("b")).unwrap();
                VmName::parse("b").unwrap()
            })
            .unwrap();
        assert_ne!(other, key);
        store.delete_vm(&name).unwrap();
        assert_eq!(store.inference_key(&name).unwrap(), None);
        // Unknown VM: the foreign key refuses a key for it.
        assert!(store
            .ensure_inference_key(&VmName::parse("ghost").unwrap())
            .is_err());
    }
}
