//! A VZ VM's files and its disks as APFS clones.
//!
//! Virtualization.framework reads raw disk images only, so a VM's disk is a
//! copy-on-write clone (`clonefile(2)`, instant and sharing every block with
//! its source until written) of the image's raw base, and a snapshot is a
//! clone of the disk. Reset is "clone again": the snapshot's disk is cloned to
//! a temporary name and renamed over the VM's disk, so a crash leaves the old
//! disk or the new one. A memory snapshot adds the file VZ's
//! `saveMachineStateTo` writes (macOS 14+) next to the disk clone.
//!
//! ```text
//! vms/NAME/disk.img                 the VM's writable disk (clone of the base)
//!          snapshots/SNAP.img       a snapshot's disk (clone of disk.img)
//!          snapshots/SNAP.vzstate   its memory and device state, when it has one
//!          serial.log               the guest's console
//! ```
//!
//! Only [`Cloner`] needs APFS; everything else is plain file operations, so
//! this module is tested on Linux with a copying cloner.

use std::io;
use std::path::{Path, PathBuf};

use clawpen_api::SnapshotName;

/// File name of an image's raw base, cloned for every VM: next to a Linux
/// image's qcow2 base (made once by `qemu-img convert`), or a macOS image's
/// own disk (`clawpen image create --macos`), the same name for both.
pub const RAW_BASE: &str = clawpen_vmimage::FileRole::MacDisk.file_name();
const DISK: &str = "disk.img";
const SNAPSHOTS: &str = "snapshots";
const DISK_EXT: &str = "img";
const STATE_EXT: &str = "vzstate";

#[derive(Debug, thiserror::Error)]
pub enum VzDiskError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("VM has no snapshot {0}")]
    NoSnapshot(String),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VzDiskError {
    let path = path.to_path_buf();
    move |source| VzDiskError::Io {
        action,
        path,
        source,
    }
}

/// Makes `to` a copy-on-write clone of `from` (`to` must not exist).
pub trait Cloner: Send + Sync {
    fn clone_file(&self, from: &Path, to: &Path) -> io::Result<()>;
}

/// `clonefile(2)` on APFS. The state dir must be on APFS (every macOS system
/// volume is); elsewhere it fails with `ENOTSUP` and nothing is copied.
#[cfg(target_os = "macos")]
pub struct Apfs;

#[cfg(target_os = "macos")]
impl Cloner for Apfs {
    fn clone_file(&self, from: &Path, to: &Path) -> io::Result<()> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
        };
        let (src, dst) = (c(from)?, c(to)?);
        // SAFETY: both arguments are NUL-terminated strings that live until
        // the call returns; clonefile reads them and keeps no pointer.
        let rc = unsafe { libc::clonefile(src.as_ptr(), dst.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The VM folder's VZ files.
#[derive(Debug, Clone)]
pub struct VzPaths {
    root: PathBuf,
}

impl VzPaths {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub fn disk(&self) -> PathBuf {
        self.root.join(DISK)
    }

    pub fn serial_log(&self) -> PathBuf {
        self.root.join("serial.log")
    }

    /// The guest agent's socket: the same path as a QEMU VM's
    /// ([`VmDir::agent_socket`](crate::vm::dir::VmDir::agent_socket)), so the
    /// supervisor's agent client reaches both the same way.
    pub fn agent_socket(&self) -> PathBuf {
        crate::vm::dir::VmDir::new(self.root.clone()).agent_socket()
    }

    /// The guest's config disk, the same file a QEMU VM gets
    /// ([`VmDir::guest_config_disk`](crate::vm::dir::VmDir::guest_config_disk)):
    /// raw already, so VZ attaches it as it is.
    pub fn guest_config_disk(&self) -> PathBuf {
        crate::vm::dir::VmDir::new(self.root.clone()).guest_config_disk()
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join(SNAPSHOTS)
    }

    pub fn snapshot_disk(&self, name: &SnapshotName) -> PathBuf {
        self.snapshots().join(format!("{name}.{DISK_EXT}"))
    }

    /// Where `saveMachineStateTo` writes a snapshot's memory state.
    pub fn snapshot_state(&self, name: &SnapshotName) -> PathBuf {
        self.snapshots().join(format!("{name}.{STATE_EXT}"))
    }

    /// A file's temporary sibling, renamed over it when complete.
    pub fn temp(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".tmp");
        path.with_file_name(name)
    }
}

/// A VM's disks, cloned with `C`.
pub struct VzDisks<'a, C: Cloner + ?Sized> {
    pub paths: &'a VzPaths,
    pub cloner: &'a C,
}

impl<C: Cloner + ?Sized> VzDisks<'_, C> {
    /// Clones `from` to `to` through a temporary name (a crash leaves the old
    /// `to` or the new one), growing the clone to `size` bytes if it is
    /// smaller (sparse: nothing is written).
    fn clone_into(&self, from: &Path, to: &Path, size: Option<u64>) -> Result<(), VzDiskError> {
        let tmp = VzPaths::temp(to);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &tmp)(e)),
        }
        self.cloner
            .clone_file(from, &tmp)
            .map_err(io_err("clone", from))?;
        if let Some(size) = size {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)
                .map_err(io_err("open", &tmp))?;
            let len = file.metadata().map_err(io_err("stat", &tmp))?.len();
            if len < size {
                file.set_len(size).map_err(io_err("grow", &tmp))?;
            }
        }
        std::fs::rename(&tmp, to).map_err(io_err("rename", &tmp))
    }

    /// A fresh disk: the base cloned (grown to `size`), every snapshot gone
    /// (they were of the old disk).
    pub fn fresh(&self, raw_base: &Path, size: Option<u64>) -> Result<(), VzDiskError> {
        let snapshots = self.paths.snapshots();
        match std::fs::remove_dir_all(&snapshots) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &snapshots)(e)),
        }
        self.clone_into(raw_base, &self.paths.disk(), size)
    }

    /// The disk half of a snapshot: a clone of the VM's disk (the VM is
    /// stopped or paused). A memory state of the same name is the caller's
    /// (written by VZ); an older one is removed so it never pairs with this
    /// disk.
    pub fn snapshot(&self, name: &SnapshotName) -> Result<(), VzDiskError> {
        let snapshots = self.paths.snapshots();
        std::fs::create_dir_all(&snapshots).map_err(io_err("create", &snapshots))?;
        self.remove_state(name)?;
        self.clone_into(&self.paths.disk(), &self.paths.snapshot_disk(name), None)
    }

    /// Reset = clone again: the VM's disk becomes a clone of the snapshot's.
    pub fn revert(&self, name: &SnapshotName) -> Result<(), VzDiskError> {
        let from = self.paths.snapshot_disk(name);
        if !from.exists() {
            return Err(VzDiskError::NoSnapshot(name.to_string()));
        }
        self.clone_into(&from, &self.paths.disk(), None)
    }

    fn remove_state(&self, name: &SnapshotName) -> Result<(), VzDiskError> {
        let state = self.paths.snapshot_state(name);
        match std::fs::remove_file(&state) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &state)(e)),
        }
    }

    /// Deletes a snapshot's disk and memory state.
    pub fn delete(&self, name: &SnapshotName) -> Result<(), VzDiskError> {
        self.remove_state(name)?;
        let disk = self.paths.snapshot_disk(name);
        match std::fs::remove_file(&disk) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(VzDiskError::NoSnapshot(name.to_string()))
            }
            Err(e) => Err(io_err("remove", &disk)(e)),
        }
    }

    /// The snapshots on disk, `(name, has_memory)`, sorted by name; files
    /// that are not a valid snapshot (temporaries, strays) are ignored.
    pub fn list(&self) -> Result<Vec<(String, bool)>, VzDiskError> {
        let dir = self.paths.snapshots();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_err("list", &dir))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some(DISK_EXT) {
                continue;
            }
            let Some(name) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| SnapshotName::parse(s).ok())
            else {
                continue;
            };
            let has_memory = self.paths.snapshot_state(&name).is_file();
            found.push((name.to_string(), has_memory));
        }
        found.sort();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Stands in for APFS: copies, and remembers what it cloned.
    #[derive(Default)]
    struct CopyCloner(Mutex<Vec<(PathBuf, PathBuf)>>);

    impl Cloner for CopyCloner {
        fn clone_file(&self, from: &Path, to: &Path) -> io::Result<()> {
            if to.exists() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            std::fs::copy(from, to)?;
            self.0.lock().unwrap().push((from.into(), to.into()));
            Ok(())
        }
    }

    fn snap(name: &str) -> SnapshotName {
        SnapshotName::parse(name).unwrap()
    }

    #[test]
    fn paths_follow_the_vm_folder_layout() {
        let paths = VzPaths::new(Path::new("/vms/demo"));
        assert_eq!(paths.disk(), Path::new("/vms/demo/disk.img"));
        assert_eq!(
            paths.snapshot_disk(&snap("clean")),
            Path::new("/vms/demo/snapshots/clean.img")
        );
        assert_eq!(
            paths.snapshot_state(&snap("clean")),
            Path::new("/vms/demo/snapshots/clean.vzstate")
        );
        assert_eq!(
            VzPaths::temp(&paths.disk()),
            Path::new("/vms/demo/disk.img.tmp")
        );
    }

    #[test]
    fn fresh_snapshot_write_revert_delete() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("disk.raw");
        std::fs::write(&base, b"base").unwrap();
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let paths = VzPaths::new(&vm);
        let cloner = CopyCloner::default();
        let disks = VzDisks {
            paths: &paths,
            cloner: &cloner,
        };

        disks.fresh(&base, Some(4096)).unwrap();
        let disk = std::fs::read(paths.disk()).unwrap();
        assert_eq!(disk.len(), 4096, "grown to the VM's size");
        assert_eq!(&disk[..4], b"base");
        assert_eq!(cloner.0.lock().unwrap()[0].0, base, "cloned, not written");

        disks.snapshot(&snap("clean")).unwrap();
        std::fs::write(paths.snapshot_state(&snap("clean")), b"memory").unwrap();
        std::fs::write(paths.disk(), b"trashed").unwrap();
        assert_eq!(disks.list().unwrap(), vec![("clean".to_string(), true)]);

        disks.revert(&snap("clean")).unwrap();
        assert_eq!(&std::fs::read(paths.disk()).unwrap()[..4], b"base");
        assert!(!VzPaths::temp(&paths.disk()).exists());

        // Re-taking a snapshot drops its old memory state (it would not match).
        disks.snapshot(&snap("clean")).unwrap();
        assert_eq!(disks.list().unwrap(), vec![("clean".to_string(), false)]);

        disks.delete(&snap("clean")).unwrap();
        assert!(disks.list().unwrap().is_empty());
        assert!(matches!(
            disks.revert(&snap("clean")),
            Err(VzDiskError::NoSnapshot(_))
        ));
        assert!(matches!(
            disks.delete(&snap("clean")),
            Err(VzDiskError::NoSnapshot(_))
        ));
    }

    #[test]
    fn a_fresh_disk_forgets_snapshots_and_leftover_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("disk.raw");
        std::fs::write(&base, b"base").unwrap();
        let paths = VzPaths::new(dir.path());
        let cloner = CopyCloner::default();
        let disks = VzDisks {
            paths: &paths,
            cloner: &cloner,
        };
        disks.fresh(&base, None).unwrap();
        disks.snapshot(&snap("a")).unwrap();
        // A crash between clone and rename left a temporary behind.
        std::fs::write(VzPaths::temp(&paths.disk()), b"half").unwrap();
        std::fs::write(paths.snapshots().join("not a name.img"), b"").unwrap();
        assert_eq!(disks.list().unwrap(), vec![("a".to_string(), false)]);
        disks.fresh(&base, None).unwrap();
        assert!(disks.list().unwrap().is_empty());
        assert_eq!(std::fs::read(paths.disk()).unwrap(), b"base");
    }
}
