//! The image store: one folder per image under a root,
//! `ROOT/NAME/{vmlinuz, initrd.cpio, disk.qcow2, manifest.json}`.
//!
//! Builds happen in `ROOT/.NAME.tmp-PID` and are renamed into place only when
//! complete, so a crash never leaves a half image that looks done. Builders of
//! the same image serialise on an exclusive `flock` of `ROOT/.NAME.lock`
//! (tests run in parallel processes): the second one waits, then finds the
//! first one's image. The lock file is never deleted; deleting lock files
//! reopens the race they close.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::debian::DebianError;
use crate::disk::DiskError;
use crate::initramfs::InitramfsError;
use crate::kmod::ModuleError;
use crate::manifest::{self, FileRole, ImageManifest, ManifestError, MANIFEST_FILE};
use crate::openclaw::{self, OpenClawError};
use crate::{test_guest, Progress};

/// A recipe: `(downloads, work, out, progress)` → the manifest of the files
/// it wrote into `out`.
type BuildFn<'a> =
    dyn Fn(&Path, &Path, &Path, &dyn Fn(Progress)) -> Result<ImageManifest, ImageError> + 'a;

/// Folder under the root where downloaded `.deb` files are kept between builds.
const DOWNLOADS_DIR: &str = ".downloads";

/// Anything that can go wrong using the store. Each variant says which path
/// or command was involved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image name {0:?}: use lowercase letters, digits and dashes")]
    InvalidName(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error("image at {dir} is incomplete or damaged: {reason}")]
    Incomplete { dir: PathBuf, reason: String },
    #[error("locking {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("getting packages: {0}")]
    Debian(#[from] DebianError),
    #[error("kernel modules: {0}")]
    Modules(#[from] ModuleError),
    #[error("initramfs: {0}")]
    Initramfs(#[from] InitramfsError),
    #[error("base disk: {0}")]
    Disk(#[from] DiskError),
    #[error("OpenClaw guest: {0}")]
    OpenClaw(#[from] OpenClawError),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl ImageError {
    /// Adapter for `map_err`: an I/O error while doing `what` to `path`.
    pub(crate) fn io<'a>(
        what: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| ImageError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

/// One entry of [`ImageStore::list`]: a folder name and its image, or why
/// that folder is not a usable image.
pub type Listed = (String, Result<Image, ImageError>);

/// A complete image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub manifest: ImageManifest,
    /// The image's folder, `ROOT/NAME`.
    pub dir: PathBuf,
}

impl Image {
    /// The kernel (`bzImage`) to pass to `-kernel`.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join(FileRole::Kernel.file_name())
    }

    /// The initramfs to pass to `-initrd`.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join(FileRole::Initrd.file_name())
    }

    /// The read-only qcow2 base disk; VMs get an overlay on top of it.
    pub fn disk(&self) -> PathBuf {
        self.dir.join(FileRole::Disk.file_name())
    }

    /// Kernel command line the image expects.
    pub fn kernel_cmdline(&self) -> &str {
        &self.manifest.kernel_cmdline
    }

    /// The line the guest prints on its serial console once it is ready, if
    /// the image has one; the supervisor shows a VM as `Running` only after it.
    pub fn ready_marker(&self) -> Option<&str> {
        let name = self.manifest.name.as_str();
        (test_guest::is_test_guest_image(name) || openclaw::is_openclaw_image(name))
            .then_some(crate::READY_MARKER)
    }
}

/// A folder of images.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// What is in `ROOT/NAME`.
enum Lookup {
    Missing,
    Found(Image),
    Broken(ImageError),
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`. The root is made
    /// absolute, since image paths end up on VMM command lines run elsewhere.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(ImageError::io("creating image store", &root))?;
        let root = std::path::absolute(&root).map_err(ImageError::io("resolving", &root))?;
        Ok(Self { root })
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The complete image `name`, `None` if there is none, an error if its
    /// folder exists but is damaged (bad manifest, missing or wrong-size file).
    pub fn get(&self, name: &str) -> Result<Option<Image>, ImageError> {
        check_name(name)?;
        match self.lookup(name) {
            Lookup::Missing => Ok(None),
            Lookup::Found(image) => Ok(Some(image)),
            Lookup::Broken(e) => Err(e),
        }
    }

    /// The test guest, built on first use and cached. Concurrent callers
    /// (threads or processes) build it once. A cached image from an older
    /// recipe, or a damaged one, is rebuilt; note that a rebuild replaces the
    /// base disk under any overlay still pointing at it.
    pub fn ensure_test_guest(&self, progress: &dyn Fn(Progress)) -> Result<Image, ImageError> {
        self.ensure_test_guest_for(crate::Arch::X86_64, progress)
    }

    /// The test guest for `arch` (store name [`test_guest::image_name`]),
    /// built and cached like [`Self::ensure_test_guest`]. Any host can
    /// build any architecture's test guest: nothing of it runs at build time.
    pub fn ensure_test_guest_for(
        &self,
        arch: crate::Arch,
        progress: &dyn Fn(Progress),
    ) -> Result<Image, ImageError> {
        self.ensure(
            test_guest::image_name(arch),
            test_guest::RECIPE,
            arch.as_str(),
            progress,
            &|downloads, work, out, progress| {
                test_guest::build(arch, downloads, work, out, progress)
            },
        )
    }

    /// The OpenClaw guest for `arch`, built on first use and cached the same
    /// way as the test guest (see [`openclaw`]). Its name in the store is
    /// [`openclaw::image_name`]`(arch)`.
    pub fn ensure_openclaw(
        &self,
        arch: openclaw::Arch,
        progress: &dyn Fn(Progress),
    ) -> Result<Image, ImageError> {
        let name = openclaw::image_name(arch);
        self.ensure(
            name,
            openclaw::RECIPE,
            arch.as_str(),
            progress,
            &|downloads, work, out, progress| openclaw::build(arch, downloads, work, out, progress),
        )
    }

    /// Every image folder in the store, by name: the image, or why it is
    /// damaged. Scratch folders of builds (dot-names) are not listed.
    pub fn list(&self) -> Result<Vec<Listed>, ImageError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(ImageError::io("reading", &self.root))? {
            let e = e.map_err(ImageError::io("reading", &self.root))?;
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !manifest::valid_name(&name) || !e.path().is_dir() {
                continue;
            }
            match self.lookup(&name) {
                Lookup::Missing => {}
                Lookup::Found(image) => out.push((name, Ok(image))),
                Lookup::Broken(err) => out.push((name, Err(err))),
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Image `name`, made by `build` unless a complete one of this `recipe`
    /// and `arch` is already there. Builders of one name serialise on its
    /// lock; the build happens in `.NAME.tmp-PID` (scratch in
    /// `.NAME.work-PID`) and is renamed into place after the manifest is
    /// written and everything is synced.
    fn ensure(
        &self,
        name: &str,
        recipe: u32,
        arch: &str,
        progress: &dyn Fn(Progress),
        build: &BuildFn<'_>,
    ) -> Result<Image, ImageError> {
        check_name(name)?;
        let current = |l: &Lookup| matches!(l, Lookup::Found(i) if i.manifest.recipe == recipe && i.manifest.arch == arch);
        let found = self.lookup(name);
        if current(&found) {
            return done(found, progress);
        }
        let _lock = self.lock(name, progress)?;
        let found = self.lookup(name);
        if current(&found) {
            return done(found, progress);
        }
        if let Lookup::Broken(e) = &found {
            tracing::warn!(image = name, error = %e, "rebuilding damaged image");
        }
        self.remove_leftovers(name);

        let pid = std::process::id();
        let tmp = Cleanup(self.root.join(format!(".{name}.tmp-{pid}")));
        let work = Cleanup(self.root.join(format!(".{name}.work-{pid}")));
        for dir in [&tmp.0, &work.0] {
            fs::create_dir_all(dir).map_err(ImageError::io("creating", dir))?;
        }
        let downloads = self.root.join(DOWNLOADS_DIR);
        let manifest = build(&downloads, &work.0, &tmp.0, progress)?;
        drop(work);

        let manifest_path = tmp.0.join(MANIFEST_FILE);
        let json = manifest.to_json().map_err(|source| ImageError::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
        fs::write(&manifest_path, json).map_err(ImageError::io("writing", &manifest_path))?;
        for f in FileRole::ALL
            .iter()
            .map(|r| r.file_name())
            .chain([MANIFEST_FILE])
        {
            sync(&tmp.0.join(f))?;
        }
        sync(&tmp.0)?;

        let dir = self.root.join(name);
        let old = self.root.join(format!(".{name}.old-{pid}"));
        let replaced = dir.exists();
        if replaced {
            fs::rename(&dir, &old).map_err(ImageError::io("moving aside", &dir))?;
        }
        fs::rename(&tmp.0, &dir).map_err(ImageError::io("moving into place", &dir))?;
        sync(&self.root)?;
        if replaced {
            let _ = fs::remove_dir_all(&old);
        }
        progress(Progress::new("done", 1, Some(1)));
        Ok(Image { manifest, dir })
    }

    fn lookup(&self, name: &str) -> Lookup {
        let dir = self.root.join(name);
        let path = dir.join(MANIFEST_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
                return Lookup::Missing
            }
            Err(source) => {
                return Lookup::Broken(ImageError::Io {
                    what: "reading",
                    path,
                    source,
                })
            }
        };
        let manifest = match ImageManifest::from_json(&bytes) {
            Ok(m) => m,
            Err(source) => return Lookup::Broken(ImageError::Manifest { path, source }),
        };
        if manifest.name != name {
            return Lookup::Broken(ImageError::Incomplete {
                dir,
                reason: format!("manifest names image {:?}", manifest.name),
            });
        }
        for f in &manifest.files {
            let p = dir.join(&f.file);
            match fs::metadata(&p) {
                Ok(m) if m.len() == f.size => {}
                Ok(m) => {
                    return Lookup::Broken(ImageError::Incomplete {
                        dir,
                        reason: format!(
                            "{} is {} bytes, manifest says {}",
                            f.file,
                            m.len(),
                            f.size
                        ),
                    })
                }
                Err(e) => {
                    return Lookup::Broken(ImageError::Incomplete {
                        dir,
                        reason: format!("{}: {e}", f.file),
                    })
                }
            }
        }
        Lookup::Found(Image { manifest, dir })
    }

    /// Takes the build lock for `name`, reporting a wait if another builder
    /// holds it. Released when the returned guard drops (or the process dies).
    fn lock(&self, name: &str, progress: &dyn Fn(Progress)) -> Result<Flock<File>, ImageError> {
        let path = self.root.join(format!(".{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io("opening", &path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((file, Errno::EWOULDBLOCK)) => {
                progress(Progress::new("wait for another build", 0, None));
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, source)| ImageError::Lock { path, source })
            }
            Err((_, source)) => Err(ImageError::Lock { path, source }),
        }
    }

    /// Removes scratch folders of builds of `name` that died. Only called
    /// with the build lock held, so none of them belongs to a live build.
    fn remove_leftovers(&self, name: &str) {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return;
        };
        let prefixes = [".tmp-", ".work-", ".old-"].map(|s| format!(".{name}{s}"));
        for e in entries.flatten() {
            let file_name = e.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            if prefixes.iter().any(|p| n.starts_with(p.as_str())) {
                tracing::info!(path = %e.path().display(), "removing leftover of an interrupted build");
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn done(found: Lookup, progress: &dyn Fn(Progress)) -> Result<Image, ImageError> {
    match found {
        Lookup::Found(image) => {
            progress(Progress::new("done", 1, Some(1)));
            Ok(image)
        }
        Lookup::Missing => Err(ImageError::Unsupported("image vanished".into())),
        Lookup::Broken(e) => Err(e),
    }
}

fn check_name(name: &str) -> Result<(), ImageError> {
    if manifest::valid_name(name) {
        Ok(())
    } else {
        Err(ImageError::InvalidName(name.to_owned()))
    }
}

fn sync(path: &Path) -> Result<(), ImageError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io("syncing", path))
}

/// Removes a scratch folder when dropped (build failed or finished).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// SHA-256 of a file as lowercase hex; `progress(bytes_done)` per chunk.
pub fn sha256_file(path: &Path, progress: &dyn Fn(u64)) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_checks_names_and_reports_damage() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("images")).unwrap();
        assert!(store.root().is_absolute());
        assert!(matches!(
            store.get("../etc"),
            Err(ImageError::InvalidName(_))
        ));
        assert!(matches!(
            store.get(".downloads"),
            Err(ImageError::InvalidName(_))
        ));
        assert_eq!(store.get("test-guest").unwrap(), None);

        let img = store.root().join("test-guest");
        fs::create_dir_all(&img).unwrap();
        // A folder without a manifest is a crashed or foreign build: damaged.
        assert!(store.get("test-guest").is_err());
        fs::write(img.join(MANIFEST_FILE), b"{not json").unwrap();
        assert!(matches!(
            store.get("test-guest"),
            Err(ImageError::Manifest { .. })
        ));
    }

    #[test]
    fn sha256_of_known_input() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p, &|_| {}).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
