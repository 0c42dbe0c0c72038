//! Synthetic addresses (fake-IP): each allowed name the guest resolves gets
//! its own address from 198.18.0.0/15, so a connection carries the name it
//! was resolved from. Domain rules are then exact, even for names that share
//! a CDN address, and the gateway resolves the name itself when it dials.
//!
//! A name's address is derived from a hash of the name (probing on
//! collision), so it is the same after a supervisor restart or a warm reset
//! of the guest; the map is also persisted, so addresses a guest cached
//! before either keep working.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use super::net::{FAKE_POOL_BASE, FAKE_POOL_PREFIX};

/// Usable addresses in the pool (the first and last are skipped).
const POOL_SIZE: u32 = (1 << (32 - FAKE_POOL_PREFIX)) - 2;

#[derive(Debug, Default, Clone)]
pub struct FakeIps {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, String>,
}

impl FakeIps {
    /// The map as persisted (address → name).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Ipv4Addr, String)>) -> Self {
        let mut map = Self::default();
        for (addr, name) in pairs {
            if super::net::in_fake_pool(addr) && !map.by_addr.contains_key(&addr) {
                map.by_name.insert(name.clone(), addr);
                map.by_addr.insert(addr, name);
            }
        }
        map
    }

    /// The name behind a synthetic address.
    pub fn name(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }

    /// The address of `name`, and whether it was assigned just now (to be
    /// persisted). `None` when the pool is full.
    pub fn assign(&mut self, name: &str) -> Option<(Ipv4Addr, bool)> {
        if let Some(addr) = self.by_name.get(name) {
            return Some((*addr, false));
        }
        let start = fnv1a(name.as_bytes()) % POOL_SIZE;
        for step in 0..POOL_SIZE {
            let index = (start + step) % POOL_SIZE + 1;
            let addr = Ipv4Addr::from(u32::from(FAKE_POOL_BASE) + index);
            if !self.by_addr.contains_key(&addr) {
                self.by_name.insert(name.to_string(), addr);
                self.by_addr.insert(addr, name.to_string());
                return Some((addr, true));
            }
        }
        None
    }
}

/// FNV-1a: stable across processes and versions (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::net::in_fake_pool;

    #[test]
    fn names_get_stable_distinct_addresses() {
        let mut a = FakeIps::default();
        let (x, new) = a.assign("allowed.test").unwrap();
        assert!(new && in_fake_pool(x));
        assert_eq!(a.assign("allowed.test").unwrap(), (x, false));
        let (y, _) = a.assign("other.test").unwrap();
        assert_ne!(x, y);
        assert_eq!(a.name(x), Some("allowed.test"));
        // Another process derives the same address.
        let mut b = FakeIps::default();
        assert_eq!(b.assign("allowed.test").unwrap().0, x);
        // A restored map wins over hashing.
        let c = FakeIps::from_pairs([(y, "allowed.test".to_string())]);
        assert_eq!(c.name(y), Some("allowed.test"));
        assert_eq!(c.name(x), None);
    }
}
