//! One folder per VM with fixed file names (as Tart's `VMDirectory` does), so a
//! person or a restarted supervisor finds everything about a VM in one place:
//!
//! ```text
//! vms/NAME/config.json   the VmSpec
//!          disk.qcow2    writable overlay on the read-only base image
//!          base.sha256   checksum of the base the overlay was made on
//!          serial.log    everything the guest printed on its serial console
//!          serial.sock   the serial console (connect to type into the guest)
//!          qmp.sock      the VMM's control socket
//!          agent.sock    the guest agent (second serial port)
//!          net.sock      the VM's network link (the egress gateway connects)
//!          vmm.pid       the VMM's process id
//!          vmm.log       the VMM's own stdout/stderr
//!          guest-config.json  the guest's first-boot configuration (0600)
//!          guest-config.img   the same on the read-only config disk the
//!                        guest reads (clawpen_vmimage::config_disk, 0600)
//! ```

use std::path::{Path, PathBuf};

use clawpen_api::VmSpec;

/// Unix socket paths are limited to 108 bytes (`sun_path`), including the NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum VmDirError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "VM directory {path} makes socket paths longer than 107 bytes; use a shorter CLAWPEN_HOME"
    )]
    PathTooLong { path: PathBuf },
    #[error("{path} is not a valid VM config: {source}")]
    BadConfig {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone)]
pub struct VmDir {
    root: PathBuf,
}

impl VmDir {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Creates the folder and writes `config.json` (atomically: temp + rename).
    pub fn create(&self, spec: &VmSpec) -> Result<(), VmDirError> {
        if self.qmp_socket().as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmDirError::PathTooLong {
                path: self.root.clone(),
            });
        }
        std::fs::create_dir_all(&self.root).map_err(|source| VmDirError::Io {
            action: "create",
            path: self.root.clone(),
            source,
        })?;
        let json = serde_json::to_vec_pretty(spec).expect("VmSpec serialises");
        let tmp = self.root.join("config.json.tmp");
        std::fs::write(&tmp, json).map_err(|source| VmDirError::Io {
            action: "write",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, self.config()).map_err(|source| VmDirError::Io {
            action: "rename",
            path: tmp,
            source,
        })
    }

    pub fn read_config(&self) -> Result<VmSpec, VmDirError> {
        let path = self.config();
        let bytes = std::fs::read(&path).map_err(|source| VmDirError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| VmDirError::BadConfig { path, source })
    }

    /// Removes what only a running VMM needs (sockets, pid file) and half-made
    /// disks, so a stopped VM's folder holds exactly its config, disk and logs.
    pub fn remove_runtime_files(&self) {
        for path in [
            self.qmp_socket(),
            self.serial_socket(),
            self.net_socket(),
            self.agent_socket(),
            self.pid_file(),
            self.disk().with_extension("qcow2.new"),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Removes the whole folder (VM deletion).
    pub fn remove(&self) -> Result<(), VmDirError> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VmDirError::Io {
                action: "remove",
                path: self.root.clone(),
                source,
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn disk(&self) -> PathBuf {
        self.root.join("disk.qcow2")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.root.join("serial.log")
    }
    pub fn serial_socket(&self) -> PathBuf {
        self.root.join("serial.sock")
    }
    pub fn qmp_socket(&self) -> PathBuf {
        self.root.join("qmp.sock")
    }
    pub fn net_socket(&self) -> PathBuf {
        self.root.join("net.sock")
    }
    /// The guest agent's channel (second serial port).
    pub fn agent_socket(&self) -> PathBuf {
        self.root.join("agent.sock")
    }
    /// The guest's first-boot configuration ([`super::guest_config`]).
    pub fn guest_config(&self) -> PathBuf {
        self.root.join("guest-config.json")
    }
    /// The config disk holding [`Self::guest_config`], attached read-only
    /// by every backend ([`clawpen_vmimage::config_disk`]).
    pub fn guest_config_disk(&self) -> PathBuf {
        self.root.join("guest-config.img")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("vmm.pid")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.root.join("vmm.log")
    }
}
