//! The base disk: an ext4 filesystem made from a folder with `mkfs.ext4 -d`
//! (no root, no loop devices, no mounting), converted to qcow2 so VMs can use
//! it as the read-only backing file of their copy-on-write overlays.
//!
//! Both steps write about as much as the folder holds, so each first checks
//! that the filesystem it writes to has room: a full host disk is then one
//! clear error naming the folder and the numbers, instead of mkfs's "No space
//! left on device while looking up <some file>", which reads like the
//! *image* being too small.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::{self, CommandError};

/// Room kept free on the host beyond what a step writes, so that the build
/// does not leave the host's disk full to the last block.
const HOST_SLACK_MIB: u64 = 256;

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
    #[error(
        "not enough free space for the {step}: {need_mib} MiB needed in {}, {free_mib} MiB free",
        dir.display()
    )]
    NoSpace {
        step: &'static str,
        dir: PathBuf,
        need_mib: u64,
        free_mib: u64,
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
    let raw = make_raw(spec, scratch)?;
    raw_to_qcow2(&raw, out)
}

/// Makes the ext4 filesystem as a sparse raw image in `scratch` and returns
/// its path. A caller short of disk may delete `spec.contents` before
/// [`raw_to_qcow2`].
pub fn make_raw(spec: &DiskSpec<'_>, scratch: &Path) -> Result<PathBuf, DiskError> {
    ensure_room("raw disk image", scratch, tree_bytes(spec.contents))?;
    let raw = scratch.join("disk.raw");
    {
        let f = File::create(&raw).map_err(io(&raw))?;
        f.set_len(spec.size_mib * 1024 * 1024).map_err(io(&raw))?;
    }
    let made = command::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", spec.label, "-E", "root_owner=0:0", "-d"])
            .arg(spec.contents)
            .arg(&raw),
    );
    if let Err(e) = made {
        let _ = fs::remove_file(&raw);
        return Err(e.into());
    }
    Ok(raw)
}

/// Converts the raw image made by [`make_raw`] to qcow2 at `out` and removes
/// the raw image (also when the conversion fails).
pub fn raw_to_qcow2(raw: &Path, out: &Path) -> Result<(), DiskError> {
    let converted = (|| {
        let used = allocated_bytes(raw)?;
        let out_dir = out.parent().unwrap_or(Path::new("."));
        ensure_room("qcow2 base disk", out_dir, used)?;
        command::run(
            Command::new("qemu-img")
                .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
                .arg(raw)
                .arg(out),
        )?;
        Ok(())
    })();
    fs::remove_file(raw).map_err(io(raw))?;
    converted
}

/// Bytes of the regular files under `dir` (what a filesystem made from it
/// holds, before block rounding and metadata). Unreadable entries count as
/// empty: the tools that copy the tree report those themselves.
pub fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

/// Bytes a (sparse) file really occupies on its filesystem.
fn allocated_bytes(path: &Path) -> Result<u64, DiskError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).map_err(io(path))?;
    Ok(meta.blocks() * 512)
}

/// Refuses to start a step that writes `bytes` into `dir` when its
/// filesystem has less than that (plus [`HOST_SLACK_MIB`]) free.
fn ensure_room(step: &'static str, dir: &Path, bytes: u64) -> Result<(), DiskError> {
    let free_mib = free_mib(dir)?;
    let need_mib = (bytes >> 20) + HOST_SLACK_MIB;
    if free_mib < need_mib {
        return Err(DiskError::NoSpace {
            step,
            dir: dir.to_owned(),
            need_mib,
            free_mib,
        });
    }
    Ok(())
}

/// MiB an unprivileged writer may still use on `dir`'s filesystem.
fn free_mib(dir: &Path) -> Result<u64, DiskError> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| DiskError::Io {
        path: dir.to_owned(),
        source: e.into(),
    })?;
    Ok((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64) >> 20)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError {
    let path = path.to_owned();
    move |source| DiskError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_bytes_counts_files_in_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join("top"), [0u8; 100]).unwrap();
        fs::write(dir.path().join("a/b/deep"), [0u8; 23]).unwrap();
        assert_eq!(tree_bytes(dir.path()), 123);
    }

    #[test]
    fn a_step_larger_than_the_free_space_is_refused_with_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_mib(dir.path()).unwrap();
        let err = ensure_room("test step", dir.path(), (free + 1) << 20).unwrap_err();
        let DiskError::NoSpace {
            step,
            need_mib,
            free_mib,
            ..
        } = &err
        else {
            panic!("expected NoSpace, got {err}");
        };
        assert_eq!(*step, "test step");
        assert!(*need_mib > *free_mib, "{need_mib} <= {free_mib}");
        assert!(err.to_string().contains("MiB free"), "{err}");
        ensure_room("small step", dir.path(), 1 << 20).unwrap();
    }
}
