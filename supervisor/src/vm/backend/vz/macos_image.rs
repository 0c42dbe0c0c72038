//! `clawpen image create --macos IPSW`, the portable half: the request's
//! checks, the image folder the VZ backend boots (built in a staging folder
//! of the image store and renamed into place, so a failed or interrupted
//! install leaves no image), the installer VM's configuration, and the
//! mapping of the installer's progress onto the progress bar. Everything
//! here is unit-tested on Linux; `macos_install.rs` (macOS only) makes the
//! Objective-C calls between these steps.

use std::fs;
use std::path::{Path, PathBuf};

use clawpen_vmimage::{
    manifest::{valid_name, FORMAT, MANIFEST_FILE},
    FileRole, Image, ImageFile, ImageManifest, Progress, Software,
};

use super::spec::{BootLoader, DiskConfig, NetworkConfig, VzConfig};
use crate::egress::net::{GUEST_MAC, MTU};

/// Disk size when `--disk-gib` is not given: room for macOS (≈ 20 GiB
/// installed) and an agent's work. The file is sparse.
pub const DEFAULT_DISK_GIB: u32 = 64;
/// Smallest disk accepted: the installer needs ≈ 25 GiB free.
pub const MIN_DISK_GIB: u32 = 32;
/// Largest disk accepted (a typo guard, not a VZ limit).
pub const MAX_DISK_GIB: u32 = 4096;
/// The installer VM gets at least this much memory, more than the
/// restore image's minimum when that is lower: installs go faster.
const INSTALL_MEMORY: u64 = 4 << 30;
/// And up to this many CPUs (never more than the host has).
const INSTALL_CPUS: u32 = 4;
/// Steps of the progress bar while the installer runs.
pub const INSTALL_STEPS: u64 = 1000;
/// The installer VM's console log, inside the staging folder (not part of
/// the image).
const INSTALL_LOG: &str = "install-console.log";

#[derive(Debug, thiserror::Error)]
pub enum MacImageError {
    #[error("--macos {path}: {reason}")]
    Ipsw { path: PathBuf, reason: String },
    #[error("image name {0:?} is not [a-z0-9-]+ (at most 64)")]
    Name(String),
    #[error("--disk-gib {0}: must be {MIN_DISK_GIB} to {MAX_DISK_GIB}")]
    DiskSize(u32),
    #[error("image {name} already exists in {root}; remove its folder first")]
    Exists { name: String, root: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("image manifest: {0}")]
    Manifest(#[from] clawpen_vmimage::ManifestError),
    #[error("the new image does not read back: {0}")]
    Store(#[from] clawpen_vmimage::ImageError),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> MacImageError + 'a {
    move |source| MacImageError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// A checked `image create --macos` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacImageRequest {
    /// The restore image, absolute.
    pub ipsw: PathBuf,
    pub name: String,
    pub disk_bytes: u64,
}

impl MacImageRequest {
    /// Checks everything that does not need a Mac: the IPSW is a readable
    /// `.ipsw` file, the name is an image name, the disk size is sane.
    pub fn new(ipsw: &Path, name: &str, disk_gib: u32) -> Result<Self, MacImageError> {
        let bad = |reason: &str| MacImageError::Ipsw {
            path: ipsw.to_owned(),
            reason: reason.to_owned(),
        };
        let is_ipsw = ipsw
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ipsw"));
        if !is_ipsw {
            return Err(bad("not an .ipsw restore image"));
        }
        let meta = fs::metadata(ipsw).map_err(|e| bad(&e.to_string()))?;
        if !meta.is_file() {
            return Err(bad("not a file"));
        }
        fs::File::open(ipsw).map_err(|e| bad(&e.to_string()))?;
        if !valid_name(name) {
            return Err(MacImageError::Name(name.to_owned()));
        }
        if !(MIN_DISK_GIB..=MAX_DISK_GIB).contains(&disk_gib) {
            return Err(MacImageError::DiskSize(disk_gib));
        }
        let ipsw = std::path::absolute(ipsw).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            ipsw,
            name: name.to_owned(),
            disk_bytes: u64::from(disk_gib) << 30,
        })
    }
}

/// CPUs and memory for the installer VM: the restore image's minimums,
/// raised to [`INSTALL_CPUS`] (within the host's) and [`INSTALL_MEMORY`].
pub fn install_resources(min_cpus: usize, min_memory: u64, host_cpus: usize) -> (u32, u64) {
    let cpus = (INSTALL_CPUS as usize).min(host_cpus).max(min_cpus).max(1);
    (
        u32::try_from(cpus).unwrap_or(u32::MAX),
        min_memory.max(INSTALL_MEMORY),
    )
}

/// The image being made: `ROOT/.NAME.macos-PID/`, renamed to `ROOT/NAME`
/// by [`Staging::finish`]; removed on drop otherwise.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    root: PathBuf,
    name: String,
    done: bool,
}

impl Staging {
    /// Creates the staging folder; refuses a name the store already has.
    pub fn create(store_root: &Path, name: &str) -> Result<Self, MacImageError> {
        if store_root.join(name).exists() {
            return Err(MacImageError::Exists {
                name: name.to_owned(),
                root: store_root.to_owned(),
            });
        }
        let dir = store_root.join(format!(".{name}.macos-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        }
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(Self {
            dir,
            root: store_root.to_owned(),
            name: name.to_owned(),
            done: false,
        })
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `role`'s file is written.
    pub fn file(&self, role: FileRole) -> PathBuf {
        self.dir.join(role.file_name())
    }

    /// The disk, empty and sparse: the installer partitions it.
    pub fn create_disk(&self, bytes: u64) -> Result<(), MacImageError> {
        let path = self.file(FileRole::MacDisk);
        let file = fs::File::create(&path).map_err(io("create", &path))?;
        file.set_len(bytes).map_err(io("size", &path))
    }

    /// The installer VM: the image's platform files and disk, the usual
    /// NIC (nothing answers on it: the installer needs no network) and a
    /// console log in the staging folder.
    pub fn installer_config(&self, cpus: u32, memory_bytes: u64) -> VzConfig {
        VzConfig {
            cpus,
            memory_bytes,
            boot: BootLoader::MacOs {
                auxiliary_storage: self.file(FileRole::MacAux),
                hardware_model: self.file(FileRole::MacHardwareModel),
                machine_identifier: self.file(FileRole::MacMachineId),
            },
            disks: vec![DiskConfig {
                path: self.file(FileRole::MacDisk),
                read_only: false,
            }],
            network: NetworkConfig {
                mac: GUEST_MAC.to_string(),
                mtu: MTU,
            },
            shares: Vec::new(),
            serial_log: self.dir.join(INSTALL_LOG),
            // The installer runs no guest agent.
            agent: None,
            entropy: true,
        }
    }

    /// Checksums the files (with progress), writes the manifest and moves
    /// the folder into the store as `NAME`; the image then reads back like
    /// any other.
    pub fn finish(
        mut self,
        macos_version: &str,
        progress: &dyn Fn(Progress),
    ) -> Result<Image, MacImageError> {
        let _ = fs::remove_file(self.dir.join(INSTALL_LOG));
        let mut files = Vec::new();
        for role in FileRole::MACOS {
            let path = self.file(role);
            let size = fs::metadata(&path).map_err(io("read", &path))?.len();
            let step = format!("checksum {}", role.file_name());
            let sha256 = clawpen_vmimage::sha256_file(&path, &|done| {
                progress(Progress {
                    step: step.clone(),
                    done,
                    total: Some(size),
                })
            })
            .map_err(io("read", &path))?;
            files.push(ImageFile {
                role,
                file: role.file_name().to_owned(),
                size,
                sha256,
            });
        }
        let manifest = manifest(&self.name, macos_version, files);
        let path = self.dir.join(MANIFEST_FILE);
        fs::write(&path, manifest.to_json()?).map_err(io("write", &path))?;
        let target = self.root.join(&self.name);
        if target.exists() {
            return Err(MacImageError::Exists {
                name: self.name.clone(),
                root: self.root.clone(),
            });
        }
        fs::rename(&self.dir, &target).map_err(io("move into place", &self.dir))?;
        self.done = true;
        let store = clawpen_vmimage::ImageStore::open(&self.root)?;
        store.get(&self.name)?.ok_or_else(|| MacImageError::Exists {
            name: self.name.clone(),
            root: self.root.clone(),
        })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The manifest of a macOS guest image: its platform files, the macOS
/// version it holds as its software.
pub fn manifest(name: &str, macos_version: &str, files: Vec<ImageFile>) -> ImageManifest {
    ImageManifest {
        format: FORMAT,
        name: name.to_owned(),
        arch: "aarch64".into(),
        recipe: 1,
        kernel_cmdline: String::new(),
        kernel_release: String::new(),
        kernel_modules: Vec::new(),
        packages: Vec::new(),
        software: vec![Software {
            name: "macos".into(),
            version: macos_version.to_owned(),
        }],
        files,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// "15.1.0 (24B83)" from the restore image's version numbers and build.
pub fn macos_version(major: isize, minor: isize, patch: isize, build: &str) -> String {
    format!("{major}.{minor}.{patch} ({build})")
}

/// Turns the installer's `NSProgress.fractionCompleted` readings into bar
/// positions out of [`INSTALL_STEPS`]: clamped to 0..=1, never backwards
/// (the installer's fraction can dip between its phases), and a NaN
/// reading keeps the last position.
#[derive(Debug, Default)]
pub struct InstallProgress {
    position: u64,
}

impl InstallProgress {
    pub fn report(&mut self, fraction: f64) -> Progress {
        if fraction.is_finite() {
            let scaled = (fraction.clamp(0.0, 1.0) * INSTALL_STEPS as f64).round() as u64;
            self.position = self.position.max(scaled);
        }
        Progress {
            step: "install macOS".into(),
            done: self.position,
            total: Some(INSTALL_STEPS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipsw(dir: &Path) -> PathBuf {
        let path = dir.join("UniversalMac_15.1_24B83_Restore.ipsw");
        fs::write(&path, b"not really").unwrap();
        path
    }

    #[test]
    fn requests_are_checked_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let good = ipsw(dir.path());
        let req = MacImageRequest::new(&good, "macos", 64).unwrap();
        assert_eq!(req.disk_bytes, 64 << 30);
        assert!(req.ipsw.is_absolute());

        let missing = dir.path().join("gone.ipsw");
        let err = MacImageRequest::new(&missing, "macos", 64).unwrap_err();
        assert!(matches!(err, MacImageError::Ipsw { .. }), "{err}");
        let dmg = dir.path().join("x.dmg");
        fs::write(&dmg, b"").unwrap();
        let err = MacImageRequest::new(&dmg, "macos", 64).unwrap_err();
        assert!(err.to_string().contains(".ipsw"), "{err}");
        let folder = dir.path().join("d.ipsw");
        fs::create_dir(&folder).unwrap();
        assert!(MacImageRequest::new(&folder, "macos", 64).is_err());
        assert!(matches!(
            MacImageRequest::new(&good, "Mac OS", 64),
            Err(MacImageError::Name(_))
        ));
        for gib in [0, MIN_DISK_GIB - 1, MAX_DISK_GIB + 1] {
            assert!(matches!(
                MacImageRequest::new(&good, "macos", gib),
                Err(MacImageError::DiskSize(_))
            ));
        }
    }

    #[test]
    fn the_installer_gets_at_least_the_images_minimums() {
        assert_eq!(install_resources(2, 2 << 30, 10), (4, 4 << 30));
        assert_eq!(install_resources(2, 8 << 30, 2), (2, 8 << 30));
        assert_eq!(install_resources(6, 1 << 30, 4), (6, 4 << 30));
        assert_eq!(install_resources(0, 0, 0), (1, 4 << 30));
    }

    #[test]
    fn progress_is_clamped_and_never_goes_back() {
        let mut p = InstallProgress::default();
        assert_eq!(p.report(0.0).done, 0);
        assert_eq!(p.report(0.25).done, 250);
        assert_eq!(p.report(0.1).done, 250, "a dip between phases");
        assert_eq!(p.report(f64::NAN).done, 250);
        assert_eq!(p.report(-3.0).done, 250);
        let last = p.report(7.0);
        assert_eq!(
            (last.done, last.total),
            (INSTALL_STEPS, Some(INSTALL_STEPS))
        );
        assert_eq!(last.step, "install macOS");
    }

    /// What the macOS half writes, by hand: the staged folder becomes an
    /// image the store reads and the VZ backend recognises, with a manifest
    /// that checks sizes and hashes.
    #[test]
    fn a_staged_install_becomes_a_store_image() {
        let root = tempfile::tempdir().unwrap();
        let staging = Staging::create(root.path(), "macos").unwrap();
        staging.create_disk(1 << 20).unwrap();
        for role in [
            FileRole::MacAux,
            FileRole::MacHardwareModel,
            FileRole::MacMachineId,
        ] {
            fs::write(staging.file(role), role.file_name()).unwrap();
        }
        let config = staging.installer_config(4, 4 << 30);
        assert_eq!(config.disks[0].path, staging.file(FileRole::MacDisk));
        assert!(!config.disks[0].read_only);
        assert!(config.serial_log.starts_with(staging.dir()));
        let BootLoader::MacOs { hardware_model, .. } = &config.boot else {
            panic!("{:?}", config.boot)
        };
        assert_eq!(hardware_model, &staging.file(FileRole::MacHardwareModel));
        fs::write(&config.serial_log, b"console").unwrap();
        let staged = staging.dir().to_owned();

        let steps = std::sync::Mutex::new(Vec::new());
        let image = staging
            .finish(&macos_version(15, 1, 0, "24B83"), &|p| {
                steps.lock().unwrap().push(p.step)
            })
            .unwrap();
        assert!(!staged.exists());
        assert_eq!(image.dir, root.path().join("macos"));
        assert!(image.manifest.is_macos());
        assert_eq!(image.manifest.software[0].version, "15.1.0 (24B83)");
        let disk = image.manifest.file(FileRole::MacDisk).unwrap();
        assert_eq!(disk.size, 1 << 20);
        assert!(super::super::spec::is_macos_image(&image.dir));
        assert!(image.dir.join(super::super::disk::RAW_BASE).is_file());
        assert!(!image.dir.join(INSTALL_LOG).exists());
        assert!(steps
            .lock()
            .unwrap()
            .iter()
            .any(|s| s == "checksum disk.raw"));

        // the name is taken now; a failed attempt leaves nothing behind
        let err = Staging::create(root.path(), "macos").unwrap_err();
        assert!(matches!(err, MacImageError::Exists { .. }), "{err}");
        let failed = Staging::create(root.path(), "other").unwrap();
        let dir = failed.dir().to_owned();
        drop(failed);
        assert!(!dir.exists());
        let names: Vec<_> = clawpen_vmimage::ImageStore::open(root.path())
            .unwrap()
            .list()
            .unwrap()
            .into_iter()
            .map(|(name, image)| (name, image.is_ok()))
            .collect();
        assert_eq!(names, vec![("macos".to_string(), true)]);
    }
}
