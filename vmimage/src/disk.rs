//! The base disk: an ext4 filesystem made from a folder with `mkfs.ext4 -d`
//! (no root, no loop devices, no mounting), converted to qcow2 so VMs can use
//! it as the read-only backing file of their copy-on-write overlays.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::{self, CommandError};

/// Making the disk failed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("making the base disk: {0}")]
    Command(#[from] CommandError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to put on the disk.
#[derive(Debug, Clone)]
pub struct DiskSpec<'a> {
    /// Folder whose contents become the filesystem's root.
    pub contents: &'a Path,
    /// Filesystem size in MiB (the virtual disk size).
    pub size_mib: u64,
    /// ext4 volume label.
    pub label: &'a str,
}

/// Builds `out` (qcow2) from `spec`, using `scratch` for the temporary raw
/// image (removed afterwards).
pub fn build_qcow2(spec: &DiskSpec<'_>, scratch: &Path, out: &Path) -> Result<(), DiskError> {
    let raw = scratch.join("disk.raw");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DiskError::Io { path, source }
    };
    {
        let f = File::create(&raw).map_err(io(&raw))?;
        f.set_len(spec.size_mib * 1024 * 1024).map_err(io(&raw))?;
    }
    command::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", spec.label, "-E", "root_owner=0:0", "-d"])
            .arg(spec.contents)
            .arg(&raw),
    )?;
    command::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(out),
    )?;
    fs::remove_file(&raw).map_err(io(&raw))?;
    Ok(())
}
