//! Kernel modules: which `.ko` files a set of wanted modules needs, in the
//! order `insmod` must load them (dependencies first).
//!
//! A Debian kernel *package* ships no `modules.dep`: `depmod` writes it at
//! install time, and we never install the package. So dependencies come from
//! `modules.dep` when the tree has one, and otherwise from each module's own
//! `.modinfo` ELF section (`depends=`), which is what `depmod` reads too.
//! Modules listed in `modules.builtin` are part of the kernel image and are
//! skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    /// Module name with underscores, e.g. `virtio_blk`.
    pub name: String,
    /// Path relative to `lib/modules/RELEASE/`, e.g. `kernel/drivers/block/virtio_blk.ko`.
    pub path: String,
}

/// Resolving modules failed.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module `{name}` not found in {tree} (needed by {needed_by})")]
    NotFound {
        name: String,
        needed_by: String,
        tree: PathBuf,
    },
    #[error("kernel module dependency cycle through `{name}`")]
    Cycle { name: String },
    #[error("kernel module {path} is compressed; only plain .ko files are supported")]
    Compressed { path: PathBuf },
    #[error("{path}: not a kernel module ELF file: {reason}")]
    BadElf { path: PathBuf, reason: &'static str },
    #[error("{path}:{line}: malformed modules.dep line")]
    BadDepLine { path: PathBuf, line: usize },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModuleError + '_ {
    move |source| ModuleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A kernel's module tree, `lib/modules/RELEASE/`.
#[derive(Debug)]
pub struct ModuleTree {
    dir: PathBuf,
    /// name → path relative to `dir`.
    paths: BTreeMap<String, String>,
    /// name → dependency names, when `modules.dep` gave them.
    deps: Option<BTreeMap<String, Vec<String>>>,
    /// Names built into the kernel image.
    builtin: BTreeSet<String>,
}

/// The module name for a path: file stem, dashes as underscores (the kernel
/// treats `-` and `_` in module names as the same).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

impl ModuleTree {
    /// Indexes the tree at `dir` (`lib/modules/RELEASE`).
    pub fn open(dir: &Path) -> Result<Self, ModuleError> {
        let builtin = match fs::read_to_string(dir.join("modules.builtin")) {
            Ok(text) => text.lines().map(module_name).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_err(&dir.join("modules.builtin"))(e)),
        };
        let dep_file = dir.join("modules.dep");
        match fs::read_to_string(&dep_file) {
            Ok(text) => Self::from_modules_dep(dir, &dep_file, &text, builtin),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut paths = BTreeMap::new();
                index(dir, dir, &mut paths)?;
                Ok(Self {
                    dir: dir.to_owned(),
                    paths,
                    deps: None,
                    builtin,
                })
            }
            Err(e) => Err(io_err(&dep_file)(e)),
        }
    }

    /// A tree described by `modules.dep` text (`path: dep-path dep-path`).
    pub fn from_modules_dep(
        dir: &Path,
        dep_file: &Path,
        text: &str,
        builtin: BTreeSet<String>,
    ) -> Result<Self, ModuleError> {
        let mut paths = BTreeMap::new();
        let mut deps = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let (module, rest) = line.split_once(':').ok_or(ModuleError::BadDepLine {
                path: dep_file.to_owned(),
                line: i + 1,
            })?;
            let module = module.trim();
            if !is_module_file(module) {
                return Err(ModuleError::BadDepLine {
                    path: dep_file.to_owned(),
                    line: i + 1,
                });
            }
            let name = module_name(module);
            paths.insert(name.clone(), module.to_owned());
            deps.insert(name, rest.split_whitespace().map(module_name).collect());
        }
        Ok(Self {
            dir: dir.to_owned(),
            paths,
            deps: Some(deps),
            builtin,
        })
    }

    /// The tree's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `name` is built into the kernel image.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&name.replace('-', "_"))
    }

    /// The modules needed to load `wanted`, dependencies before dependents,
    /// each once, built-in ones left out. Order among independent modules
    /// follows `wanted`, so callers control it (e.g. a crypto driver before
    /// the filesystem that asks for it by alias).
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<KernelModule>, ModuleError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut visiting = BTreeSet::new();
        for w in wanted {
            self.visit(
                &w.replace('-', "_"),
                "the image recipe",
                &mut visiting,
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        visiting: &mut BTreeSet<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<KernelModule>,
    ) -> Result<(), ModuleError> {
        if done.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if !visiting.insert(name.to_owned()) {
            return Err(ModuleError::Cycle {
                name: name.to_owned(),
            });
        }
        let path = self.paths.get(name).ok_or_else(|| ModuleError::NotFound {
            name: name.to_owned(),
            needed_by: needed_by.to_owned(),
            tree: self.dir.clone(),
        })?;
        for dep in self.deps_of(name, path)? {
            self.visit(&dep, name, visiting, done, order)?;
        }
        visiting.remove(name);
        done.insert(name.to_owned());
        order.push(KernelModule {
            name: name.to_owned(),
            path: path.clone(),
        });
        Ok(())
    }

    fn deps_of(&self, name: &str, path: &str) -> Result<Vec<String>, ModuleError> {
        if let Some(deps) = &self.deps {
            return Ok(deps.get(name).cloned().unwrap_or_default());
        }
        let full = self.dir.join(path);
        if !path.ends_with(".ko") {
            return Err(ModuleError::Compressed { path: full });
        }
        let bytes = fs::read(&full).map_err(io_err(&full))?;
        let info = modinfo(&bytes).map_err(|reason| ModuleError::BadElf {
            path: full.clone(),
            reason,
        })?;
        Ok(info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect())
    }
}

/// Walks `dir` collecting module files as name → path relative to `base`.
fn index(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<(), ModuleError> {
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let ty = entry.file_type().map_err(io_err(&path))?;
        if ty.is_dir() {
            index(base, &path, out)?;
        } else if let Some(file) = path.file_name().and_then(|f| f.to_str()) {
            if is_module_file(file) {
                if let Ok(rel) = path.strip_prefix(base) {
                    let rel = rel.to_string_lossy().into_owned();
                    out.insert(module_name(&rel), rel);
                }
            }
        }
    }
    Ok(())
}

/// The `key=value` strings of a module's `.modinfo` section. Checked parsing
/// of a little-endian ELF64 file; never panics on bad input.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let section = find_section(elf, ".modinfo")?.ok_or("no .modinfo section")?;
    Ok(section
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter_map(|s| s.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

fn find_section<'a>(elf: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, &'static str> {
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("bad ELF magic");
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err("not a little-endian 64-bit ELF");
    }
    let shoff = usize_at(elf, 0x28, 8)?;
    let shentsize = usize_at(elf, 0x3a, 2)?;
    let shnum = usize_at(elf, 0x3c, 2)?;
    let shstrndx = usize_at(elf, 0x3e, 2)?;
    if shentsize < 64 {
        return Err("bad section header size");
    }
    let header = |i: usize| -> Result<(usize, usize, usize), &'static str> {
        let at = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or("section header offset overflows")?;
        let name = usize_at(elf, at, 4)?;
        let offset = usize_at(elf, at.checked_add(24).ok_or("overflow")?, 8)?;
        let size = usize_at(elf, at.checked_add(32).ok_or("overflow")?, 8)?;
        Ok((name, offset, size))
    };
    let body = |offset: usize, size: usize| -> Result<&'a [u8], &'static str> {
        elf.get(offset..offset.checked_add(size).ok_or("overflow")?)
            .ok_or("section outside the file")
    };
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = body(str_off, str_size)?;
    for i in 0..shnum {
        let (name_off, offset, size) = header(i)?;
        let name = names
            .get(name_off..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .ok_or("section name outside the string table")?;
        if name == wanted.as_bytes() {
            return body(offset, size).map(Some);
        }
    }
    Ok(None)
}

fn usize_at(b: &[u8], at: usize, len: usize) -> Result<usize, &'static str> {
    let bytes = b
        .get(at..at.checked_add(len).ok_or("overflow")?)
        .ok_or("truncated ELF header")?;
    let mut v: u64 = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        v |= u64::from(byte) << (8 * i);
    }
    usize::try_from(v).map_err(|_| "ELF value too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko kernel/fs/mbcache.ko kernel/lib/crc16.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko kernel/drivers/net/net_failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    fn tree(builtin: &[&str]) -> ModuleTree {
        ModuleTree::from_modules_dep(
            Path::new("/lib/modules/x"),
            Path::new("modules.dep"),
            DEP,
            builtin.iter().map(|s| s.to_string()).collect(),
        )
        .unwrap()
    }

    fn names(m: &[KernelModule]) -> Vec<&str> {
        m.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn closure_puts_dependencies_first_once() {
        let order = tree(&[])
            .load_order(&[
                "virtio_pci",
                "virtio_blk",
                "crc32c-generic",
                "ext4",
                "virtio_net",
            ])
            .unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4",
                "failover",
                "net_failover",
                "virtio_net",
            ]
        );
        assert_eq!(order[9].path, "kernel/fs/ext4/ext4.ko");
        // Every module appears after all of its dependencies.
        let t = tree(&[]);
        for (i, m) in order.iter().enumerate() {
            for d in t.deps.as_ref().unwrap()[&m.name].iter() {
                assert!(
                    names(&order[..i]).contains(&d.as_str()),
                    "{d} before {}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn builtin_modules_are_skipped() {
        let order = tree(&["virtio", "virtio_ring"])
            .load_order(&["virtio_blk"])
            .unwrap();
        assert_eq!(names(&order), ["virtio_blk"]);
    }

    #[test]
    fn missing_module_is_an_error() {
        let err = tree(&[]).load_order(&["nope"]).unwrap_err();
        assert!(matches!(err, ModuleError::NotFound { .. }), "{err}");
    }

    #[test]
    fn cycle_is_an_error() {
        let t = ModuleTree::from_modules_dep(
            Path::new("/x"),
            Path::new("modules.dep"),
            "a.ko: b.ko\nb.ko: a.ko\n",
            BTreeSet::new(),
        )
        .unwrap();
        assert!(matches!(
            t.load_order(&["a"]),
            Err(ModuleError::Cycle { .. })
        ));
    }

    #[test]
    fn bad_dep_line_is_an_error() {
        let r = ModuleTree::from_modules_dep(
            Path::new("/x"),
            Path::new("modules.dep"),
            "no colon here\n",
            BTreeSet::new(),
        );
        assert!(matches!(r, Err(ModuleError::BadDepLine { line: 1, .. })));
    }

    #[test]
    fn modinfo_rejects_garbage_without_panicking() {
        assert!(modinfo(b"").is_err());
        assert!(modinfo(b"\x7fELF\x02\x01").is_err());
        let mut fake = vec![0u8; 64];
        fake[..6].copy_from_slice(b"\x7fELF\x02\x01");
        fake[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        fake[0x3a] = 64;
        fake[0x3c] = 1;
        assert!(modinfo(&fake).is_err());
    }

    /// A minimal ELF64 file with sections: null, `.shstrtab`, `.modinfo`.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        let mut section = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        section(0, 0, 0);
        section(1, strtab_off, shstrtab.len());
        section(11, modinfo_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_reads_depends_from_elf() {
        let elf =
            fake_module(b"softdep=pre: crypto-crc32c\0depends=jbd2,mbcache,crc16\0name=ext4\0");
        let info = modinfo(&elf).unwrap();
        assert!(info.contains(&("depends".into(), "jbd2,mbcache,crc16".into())));
        assert!(info.contains(&("name".into(), "ext4".into())));
        // Every truncation is an error or a shorter answer, never a panic.
        for n in 0..elf.len() {
            let _ = modinfo(&elf[..n]);
        }
    }

    #[test]
    fn tree_without_modules_dep_reads_modinfo() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/fs");
        fs::create_dir_all(&k).unwrap();
        fs::write(k.join("ext4.ko"), fake_module(b"depends=jbd2,crc16\0")).unwrap();
        fs::write(k.join("jbd2.ko"), fake_module(b"depends=\0")).unwrap();
        fs::write(k.join("crc16.ko"), fake_module(b"depends=\0")).unwrap();
        fs::write(dir.path().join("modules.builtin"), "kernel/fs/crc16.ko\n").unwrap();
        let order = ModuleTree::open(dir.path())
            .unwrap()
            .load_order(&["ext4"])
            .unwrap();
        assert_eq!(names(&order), ["jbd2", "ext4"]);
        assert_eq!(order[0].path, "kernel/fs/jbd2.ko");
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/arch/x86/crypto/crc32c-intel.ko"),
            "crc32c_intel"
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
    }
}
