//! Where clawpen keeps its state on disk.
//!
//! Everything lives under one state directory (`$CLAWPEN_HOME`, else the
//! platform data dir + `clawpen`): the SQLite store, the API token, the image
//! store and one folder per VM (see [`crate::vm::dir`]).

use std::path::{Path, PathBuf};

use clawpen_api::VmName;

/// Environment variable that overrides the state directory.
pub const HOME_ENV: &str = "CLAWPEN_HOME";

#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    #[error("no state directory: set {HOME_ENV} (the platform data directory is unknown)")]
    NoDataDir,
    #[error("cannot create state directory {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The state directory and the fixed names inside it.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `explicit`, else `$CLAWPEN_HOME`, else `<data dir>/clawpen`. Creates it.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Self, PathsError> {
        let root = match explicit.or_else(|| std::env::var_os(HOME_ENV).map(PathBuf::from)) {
            Some(root) => root,
            None => dirs::data_dir()
                .ok_or(PathsError::NoDataDir)?
                .join("clawpen"),
        };
        Self::at(root)
    }

    /// Uses `root` as the state directory, creating it if needed.
    pub fn at(root: PathBuf) -> Result<Self, PathsError> {
        std::fs::create_dir_all(root.join("vms")).map_err(|source| PathsError::Create {
            path: root.clone(),
            source,
        })?;
        // Sockets are addressed by absolute path; a relative root would break
        // once a process changes directory.
        let root = std::fs::canonicalize(&root).map_err(|source| PathsError::Create {
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("clawpen.db")
    }

    pub fn token_file(&self) -> PathBuf {
        self.root.join("token")
    }

    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn vms(&self) -> PathBuf {
        self.root.join("vms")
    }

    pub fn vm(&self, name: &VmName) -> PathBuf {
        self.vms().join(name.as_str())
    }
}
