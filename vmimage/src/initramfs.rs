//! Writing (and reading back) an initramfs: an uncompressed cpio "newc"
//! archive, the format the kernel unpacks into its root tmpfs.
//!
//! Entries are written with uid/gid 0 and mtime 0 whoever builds them, so the
//! guest sees root-owned files and the same inputs give the same bytes.
//! Parent folders are added automatically, before their contents, because the
//! kernel's unpacker does not create missing parents.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use cpio::newc::ModeFileType;
use cpio::NewcBuilder;

/// Where an entry's content comes from.
#[derive(Debug, Clone)]
enum Content {
    None,
    Bytes(Vec<u8>),
    File(PathBuf),
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    mode: u32,
    rdev: (u32, u32),
    content: Content,
}

/// An initramfs being assembled.
#[derive(Debug, Default)]
pub struct Initramfs {
    entries: Vec<Entry>,
    dirs: BTreeSet<String>,
}

/// Writing or reading an archive failed.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("initramfs path {0:?} must be relative, without `.`/`..` or empty parts")]
    BadPath(String),
    #[error("{path}: {size} bytes is too large for a cpio newc entry")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: size changed while it was being archived")]
    SizeChanged { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    pub name: String,
    pub mode: u32,
    pub size: u32,
    pub rdev: (u32, u32),
}

fn check_path(path: &str) -> Result<(), InitramfsError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(())
    } else {
        Err(InitramfsError::BadPath(path.to_owned()))
    }
}

impl Initramfs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries so far (folders included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn parents(&mut self, path: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.push_dir(&prefix, 0o755);
        }
    }

    fn push_dir(&mut self, path: &str, perm: u32) {
        if self.dirs.insert(path.to_owned()) {
            self.entries.push(Entry {
                path: path.to_owned(),
                mode: u32::from(ModeFileType::Directory) | perm,
                rdev: (0, 0),
                content: Content::None,
            });
        }
    }

    fn push(
        &mut self,
        path: &str,
        mode: u32,
        rdev: (u32, u32),
        content: Content,
    ) -> Result<(), InitramfsError> {
        check_path(path)?;
        self.parents(path);
        self.entries.push(Entry {
            path: path.to_owned(),
            mode,
            rdev,
            content,
        });
        Ok(())
    }

    /// A folder (and its parents).
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<(), InitramfsError> {
        check_path(path)?;
        self.parents(path);
        self.push_dir(path, perm);
        Ok(())
    }

    /// A regular file with the given content.
    pub fn bytes(
        &mut self,
        path: &str,
        perm: u32,
        content: impl Into<Vec<u8>>,
    ) -> Result<(), InitramfsError> {
        let mode = u32::from(ModeFileType::Regular) | perm;
        self.push(path, mode, (0, 0), Content::Bytes(content.into()))
    }

    /// A regular file copied from the host when the archive is written.
    pub fn file(&mut self, path: &str, perm: u32, source: &Path) -> Result<(), InitramfsError> {
        let mode = u32::from(ModeFileType::Regular) | perm;
        self.push(path, mode, (0, 0), Content::File(source.to_owned()))
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        let mode = u32::from(ModeFileType::Symlink) | 0o777;
        self.push(
            path,
            mode,
            (0, 0),
            Content::Bytes(target.as_bytes().to_vec()),
        )
    }

    /// A character device node (e.g. `dev/console`, 5:1, which the kernel
    /// opens for init's stdio before anything can mount devtmpfs).
    pub fn char_dev(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), InitramfsError> {
        let mode = u32::from(ModeFileType::Char) | perm;
        self.push(path, mode, (major, minor), Content::None)
    }

    /// Writes the archive to `out`; `progress(done, total)` counts entries.
    /// Returns the archive's size in bytes.
    pub fn write(&self, out: &Path, progress: &dyn Fn(u64, u64)) -> Result<u64, InitramfsError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| InitramfsError::Io { path, source }
        };
        let file = File::create(out).map_err(io(out))?;
        let mut w = BufWriter::new(file);
        let total = self.entries.len() as u64;
        for (i, e) in self.entries.iter().enumerate() {
            let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let nlink = if e.mode & 0o170000 == u32::from(ModeFileType::Directory) {
                2
            } else {
                1
            };
            let builder = NewcBuilder::new(&e.path)
                .ino(ino)
                .mode(e.mode)
                .uid(0)
                .gid(0)
                .nlink(nlink)
                .mtime(0)
                .rdev_major(e.rdev.0)
                .rdev_minor(e.rdev.1);
            match &e.content {
                Content::None => {
                    builder.write(&mut w, 0).finish().map_err(io(out))?;
                }
                Content::Bytes(b) => {
                    let size = entry_size(Path::new(&e.path), b.len() as u64)?;
                    let mut cw = builder.write(&mut w, size);
                    cw.write_all(b).map_err(io(out))?;
                    cw.finish().map_err(io(out))?;
                }
                Content::File(src) => {
                    let mut f = File::open(src).map_err(io(src))?;
                    let len = f.metadata().map_err(io(src))?.len();
                    let size = entry_size(src, len)?;
                    let mut cw = builder.write(&mut w, size);
                    let copied =
                        std::io::copy(&mut (&mut f).take(len), &mut cw).map_err(io(src))?;
                    if copied != len {
                        return Err(InitramfsError::SizeChanged { path: src.clone() });
                    }
                    cw.finish().map_err(io(out))?;
                }
            }
            progress(i as u64 + 1, total);
        }
        let w = cpio::newc::trailer(w).map_err(io(out))?;
        let file = w.into_inner().map_err(|e| io(out)(e.into_error()))?;
        file.sync_all().map_err(io(out))?;
        Ok(file.metadata().map_err(io(out))?.len())
    }
}

fn entry_size(path: &Path, len: u64) -> Result<u32, InitramfsError> {
    u32::try_from(len).map_err(|_| InitramfsError::TooLarge {
        path: path.to_owned(),
        size: len,
    })
}

/// Lists a newc archive's entries (trailer excluded). Checked reading: a
/// truncated or corrupt archive is an error, not a panic.
pub fn list(archive: &Path) -> Result<Vec<ListedEntry>, InitramfsError> {
    let io = |source| InitramfsError::Io {
        path: archive.to_owned(),
        source,
    };
    let mut r = std::io::BufReader::new(File::open(archive).map_err(io)?);
    let mut out = Vec::new();
    loop {
        let reader = cpio::NewcReader::new(r).map_err(io)?;
        let e = reader.entry();
        if e.is_trailer() {
            break;
        }
        out.push(ListedEntry {
            name: e.name().to_owned(),
            mode: e.mode(),
            size: e.file_size(),
            rdev: (e.rdev_major(), e.rdev_minor()),
        });
        r = reader.finish().map_err(io)?;
    }
    Ok(out)
}

/// Reads one file's content from a newc archive, if present.
pub fn read_file(archive: &Path, name: &str) -> Result<Option<Vec<u8>>, InitramfsError> {
    let io = |source| InitramfsError::Io {
        path: archive.to_owned(),
        source,
    };
    let mut r = std::io::BufReader::new(File::open(archive).map_err(io)?);
    loop {
        let mut reader = cpio::NewcReader::new(r).map_err(io)?;
        if reader.entry().is_trailer() {
            return Ok(None);
        }
        if reader.entry().name() == name {
            let mut buf = Vec::new();
            reader.read_to_end(&mut buf).map_err(io)?;
            return Ok(Some(buf));
        }
        r = reader.finish().map_err(io)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, b"hello busybox").unwrap();
        let mut ar = Initramfs::new();
        ar.bytes("init", 0o755, "#!/bin/sh\necho hi\n").unwrap();
        ar.file("bin/busybox", 0o755, &src).unwrap();
        ar.symlink("bin/sh", "busybox").unwrap();
        ar.char_dev("dev/console", 0o600, 5, 1).unwrap();
        ar.dir("mnt", 0o755).unwrap();
        ar.bytes("lib/modules/x/kernel/a.ko", 0o644, vec![1u8; 5])
            .unwrap();
        let out = dir.path().join("initrd.cpio");
        let size = ar.write(&out, &|_, _| {}).unwrap();
        assert_eq!(size % 4, 0);
        assert_eq!(size, std::fs::metadata(&out).unwrap().len());

        let listed = list(&out).unwrap();
        let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "init",
                "bin",
                "bin/busybox",
                "bin/sh",
                "dev",
                "dev/console",
                "mnt",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/kernel",
                "lib/modules/x/kernel/a.ko"
            ]
        );
        let console = listed.iter().find(|e| e.name == "dev/console").unwrap();
        assert_eq!(console.mode, 0o020600);
        assert_eq!(console.rdev, (5, 1));
        assert_eq!(
            read_file(&out, "bin/busybox").unwrap().unwrap(),
            b"hello busybox"
        );
        assert_eq!(read_file(&out, "bin/sh").unwrap().unwrap(), b"busybox");
        assert_eq!(read_file(&out, "nope").unwrap(), None);

        // GNU cpio, when installed, agrees.
        if let Ok(o) = std::process::Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&out)
            .output()
        {
            assert!(o.status.success());
            assert_eq!(
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .collect::<Vec<_>>(),
                names
            );
        }

        // A truncated archive is an error, not a panic.
        let bytes = std::fs::read(&out).unwrap();
        std::fs::write(&out, &bytes[..bytes.len() - 200]).unwrap();
        assert!(list(&out).is_err());
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut ar = Initramfs::new();
        for p in ["", "/init", "a/../b", "a//b", "./x"] {
            assert!(
                matches!(ar.bytes(p, 0o644, ""), Err(InitramfsError::BadPath(_))),
                "{p}"
            );
        }
        assert!(ar.is_empty());
    }
}
