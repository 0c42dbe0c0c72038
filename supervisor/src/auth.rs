//! The bearer token that guards the supervisor API.
//!
//! Made on first run from the OS random source, stored in the state directory
//! with mode 0600 so only the owner can read it, and printed by `clawpen up`
//! inside a login URL.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand::Rng;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read API token {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write API token {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API token file {path} is empty or not hex; delete it to make a new one")]
    Malformed { path: PathBuf },
}

/// A secret API token (64 hex characters).
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token at `path`, or makes one there (mode 0600) if none exists.
    pub fn load_or_create(path: &Path) -> Result<Self, TokenError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(source) => Err(TokenError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Reads an existing token (the CLI client never makes one).
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, TokenError> {
        let token = text.trim();
        if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed {
                path: path.to_owned(),
            });
        }
        Ok(Self(token.to_string()))
    }

    /// A fresh secret from the OS random source (32 bytes, hex).
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        Self(hex::encode(bytes))
    }

    fn create(path: &Path) -> Result<Self, TokenError> {
        let token = Self::generate().0;
        let write_err = |source| TokenError::Write {
            path: path.to_owned(),
            source,
        };
        // create_new: two processes racing to make the token cannot both win.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        file.write_all(token.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        Ok(Self(token))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the strings differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let a = self.0.as_bytes();
        let b = candidate.as_bytes();
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let first = Token::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = Token::load_or_create(&path).unwrap();
        assert!(first.matches(second.as_str()));
        assert!(!first.matches("nope"));
    }

    #[test]
    fn malformed_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "not a token").unwrap();
        assert!(matches!(
            Token::load_or_create(&path),
            Err(TokenError::Malformed { .. })
        ));
    }
}
