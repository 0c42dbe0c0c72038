//! API keys: `Authorization: Bearer KEY` → the client name the key maps to
//! (one key per VM, so every request is attributed to its VM).

use std::collections::HashMap;

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

/// The configured keys. Empty: authentication is off.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, String)>,
}

impl ApiKeys {
    /// From the configuration's key → client map.
    pub fn new(keys: &HashMap<String, String>) -> Self {
        let mut keys: Vec<(String, String)> =
            keys.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        keys.sort();
        Self { keys }
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The client an `Authorization` header value names. Every key is
    /// compared in constant time, so timing does not reveal a key's prefix.
    pub fn client(&self, authorization: Option<&str>) -> Result<String, KeyError> {
        if !self.enabled() {
            return Ok(ANONYMOUS.to_owned());
        }
        let header = authorization.ok_or(KeyError::Missing)?.trim();
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(KeyError::Missing)?
            .trim();
        let mut found = None;
        for (key, client) in &self.keys {
            if constant_time_eq(key.as_bytes(), token.as_bytes()) {
                found = Some(client);
            }
        }
        found.cloned().ok_or(KeyError::Invalid)
    }
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

    #[test]
    fn keys_map_to_clients() {
        assert_eq!(ApiKeys::default().client(None).unwrap(), ANONYMOUS);
        let keys = ApiKeys::new(&HashMap::from([
            ("sk-a".to_owned(), "vm-a".to_owned()),
            ("sk-b".to_owned(), "vm-b".to_owned()),
        ]));
        assert_eq!(keys.client(Some("Bearer sk-b")).unwrap(), "vm-b");
        assert_eq!(keys.client(None), Err(KeyError::Missing));
        assert_eq!(keys.client(Some("Basic x")), Err(KeyError::Missing));
        assert_eq!(keys.client(Some("Bearer sk-")), Err(KeyError::Invalid));
        assert_eq!(keys.client(Some("Bearer sk-c")), Err(KeyError::Invalid));
    }
}
