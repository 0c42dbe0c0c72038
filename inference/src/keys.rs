//! API keys: `Authorization: Bearer KEY` → the client name the key maps to
//! (one key per VM, so every request is attributed to its VM).
//!
//! Two kinds of keys share one table: *static* keys from the configuration
//! (`clawpen inference serve --api-key`), which switch authentication on for
//! every listener, and *dynamic* keys the supervisor adds and removes as VMs
//! come and go. A listener that guests reach (through the egress gateway)
//! always requires a key; the host's own listener takes a known key to
//! attribute a request but, without static keys, lets a keyless (or
//! placeholder-keyed) host client through as [`ANONYMOUS`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The client name used when authentication is off.
pub const ANONYMOUS: &str = "anonymous";

/// Why a request is not authorised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("missing API key: send `Authorization: Bearer KEY`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
}

/// Whether a listener insists on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Keys are checked only when static keys are configured.
    IfConfigured,
    /// Every request needs a key in the table (guests' listener).
    Required,
}

#[derive(Debug, Default)]
struct KeyTable {
    /// From the configuration; non-empty switches checking on everywhere.
    fixed: Vec<(String, String)>,
    /// Added at run time (per-VM keys), key → client.
    dynamic: HashMap<String, String>,
}

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client name the key maps to ([`ANONYMOUS`] without one).
    pub client: String,
    /// Whether the request may name a sub-client it acts for (a VM host's
    /// supervisor relaying its VMs' requests: [`ON_BEHALF_OF`]). True for
    /// configured keys and for anonymous requests where no key is needed
    /// (anyone may be anyone there); never for a per-VM key, so a guest
    /// cannot change how its own requests are attributed.
    pub may_delegate: bool,
}

/// Request header naming the sub-client (a VM) a delegating client relays
/// for: the request is then attributed, queued fairly and prefix-cached as
/// `CLIENT/SUB` (see [`delegated_client`]).
pub const ON_BEHALF_OF: &str = "x-clawpen-client";

/// Why an [`ON_BEHALF_OF`] value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    #[error("`{ON_BEHALF_OF}` must be 1 to 64 of a-z, 0-9, `-`, `_`, `.`; got {0:?}")]
    BadName(String),
    #[error("`{ON_BEHALF_OF}` is only accepted with a configured API key")]
    NotAllowed,
}

/// The client a request is attributed to when `identity` sends
/// [`ON_BEHALF_OF`] with `sub`: `CLIENT/SUB`, so a relay can only split
/// its own scope, never step into another client's.
pub fn delegated_client(identity: &Identity, sub: &str) -> Result<String, DelegationError> {
    let ok = (1..=64).contains(&sub.len())
        && sub
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !ok {
        return Err(DelegationError::BadName(sub.chars().take(80).collect()));
    }
    if !identity.may_delegate {
        return Err(DelegationError::NotAllowed);
    }
    Ok(format!("{}/{sub}", identity.client))
}

/// The key table, shared by every listener of one service; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    table: Arc<RwLock<KeyTable>>,
}

impl ApiKeys {
    /// From the configuration's key → client map.
    pub fn new(keys: &HashMap<String, String>) -> Self {
        let mut fixed: Vec<(String, String)> =
            keys.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        fixed.sort();
        Self {
            table: Arc::new(RwLock::new(KeyTable {
                fixed,
                dynamic: HashMap::new(),
            })),
        }
    }

    /// Whether configured keys make every listener check keys.
    pub fn enabled(&self) -> bool {
        !self.read().fixed.is_empty()
    }

    /// Adds (or re-points) a run-time key for `client`, replacing any
    /// earlier run-time key of that client.
    pub fn insert(&self, key: &str, client: &str) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        table.dynamic.retain(|_, c| c != client);
        table.dynamic.insert(key.to_owned(), client.to_owned());
    }

    /// Removes the run-time key of `client` (a deleted VM's key stops
    /// working at once).
    pub fn remove_client(&self, client: &str) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        table.dynamic.retain(|_, c| c != client);
    }

    /// Copies `other`'s configured keys into this table (when a service
    /// adopts a table its owner keeps filling).
    pub fn adopt_configured(&self, other: &ApiKeys) {
        if Arc::ptr_eq(&self.table, &other.table) {
            return;
        }
        let fixed = other.read().fixed.clone();
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        table.fixed.extend(fixed);
        table.fixed.sort();
        table.fixed.dedup();
    }

    /// The client an `Authorization` header value names under `policy`.
    /// Every key is compared in constant time, so timing does not reveal a
    /// key's prefix.
    pub fn client(
        &self,
        authorization: Option<&str>,
        policy: KeyPolicy,
    ) -> Result<String, KeyError> {
        self.identify(authorization, policy).map(|id| id.client)
    }

    /// [`ApiKeys::client`], and whether that client may act for others
    /// (see [`Identity::may_delegate`]).
    pub fn identify(
        &self,
        authorization: Option<&str>,
        policy: KeyPolicy,
    ) -> Result<Identity, KeyError> {
        let table = self.read();
        let enforce = policy == KeyPolicy::Required || !table.fixed.is_empty();
        let token = authorization.and_then(bearer_token);
        let found = token.and_then(|token| {
            let mut found = None;
            let all = table
                .fixed
                .iter()
                .map(|(k, c)| (k.as_str(), c.as_str(), true))
                .chain(
                    table
                        .dynamic
                        .iter()
                        .map(|(k, c)| (k.as_str(), c.as_str(), false)),
                );
            for (key, client, fixed) in all {
                if constant_time_eq(key.as_bytes(), token.as_bytes()) {
                    found = Some(Identity {
                        client: client.to_owned(),
                        may_delegate: fixed,
                    });
                }
            }
            found
        });
        match (found, token) {
            (Some(identity), _) => Ok(identity),
            (None, _) if !enforce => Ok(Identity {
                client: ANONYMOUS.to_owned(),
                may_delegate: true,
            }),
            (None, None) => Err(KeyError::Missing),
            (None, Some(_)) => Err(KeyError::Invalid),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The token of a `Bearer TOKEN` header value; `None` for another scheme.
fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim();
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then_some(token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use KeyPolicy::{IfConfigured, Required};

    #[test]
    fn configured_keys_map_to_clients_everywhere() {
        assert_eq!(
            ApiKeys::default().client(None, IfConfigured).unwrap(),
            ANONYMOUS
        );
        let keys = ApiKeys::new(&HashMap::from([
            ("sk-a".to_owned(), "vm-a".to_owned()),
            ("sk-b".to_owned(), "vm-b".to_owned()),
        ]));
        assert_eq!(
            keys.client(Some("Bearer sk-b"), IfConfigured).unwrap(),
            "vm-b"
        );
        assert_eq!(keys.client(None, IfConfigured), Err(KeyError::Missing));
        assert_eq!(
            keys.client(Some("Basic x"), IfConfigured),
            Err(KeyError::Missing)
        );
        assert_eq!(
            keys.client(Some("Bearer sk-"), IfConfigured),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            keys.client(Some("Bearer sk-c"), Required),
            Err(KeyError::Invalid)
        );
    }

    #[test]
    fn only_configured_keys_and_open_listeners_may_delegate() {
        let keys = ApiKeys::new(&HashMap::from([(
            "sk-host".to_owned(),
            "vm-host".to_owned(),
        )]));
        keys.insert("sk-vm1", "vm1");
        let host = keys.identify(Some("Bearer sk-host"), Required).unwrap();
        assert_eq!(delegated_client(&host, "demo").unwrap(), "vm-host/demo");
        let vm = keys.identify(Some("Bearer sk-vm1"), Required).unwrap();
        assert_eq!(
            delegated_client(&vm, "other"),
            Err(DelegationError::NotAllowed)
        );
        let open = ApiKeys::default().identify(None, IfConfigured).unwrap();
        assert_eq!(delegated_client(&open, "demo").unwrap(), "anonymous/demo");
        for bad in ["", "Demo", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(
                    delegated_client(&host, bad),
                    Err(DelegationError::BadName(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn run_time_keys_attribute_and_guests_need_one() {
        let keys = ApiKeys::default();
        keys.insert("sk-vm1", "vm1");
        // Host listener: a known key attributes, a placeholder is let through.
        assert_eq!(
            keys.client(Some("Bearer sk-vm1"), IfConfigured).unwrap(),
            "vm1"
        );
        assert_eq!(
            keys.client(Some("Bearer x"), IfConfigured).unwrap(),
            ANONYMOUS
        );
        assert_eq!(keys.client(None, IfConfigured).unwrap(), ANONYMOUS);
        // Guest listener: only a key in the table.
        assert_eq!(keys.client(Some("Bearer sk-vm1"), Required).unwrap(), "vm1");
        assert_eq!(keys.client(None, Required), Err(KeyError::Missing));
        assert_eq!(
            keys.client(Some("Bearer x"), Required),
            Err(KeyError::Invalid)
        );
        // A new key replaces the old one; removal revokes at once.
        keys.insert("sk-vm1-new", "vm1");
        assert_eq!(
            keys.client(Some("Bearer sk-vm1"), Required),
            Err(KeyError::Invalid)
        );
        assert_eq!(
            keys.client(Some("Bearer sk-vm1-new"), Required).unwrap(),
            "vm1"
        );
        keys.remove_client("vm1");
        assert_eq!(
            keys.client(Some("Bearer sk-vm1-new"), Required),
            Err(KeyError::Invalid)
        );
    }
}
