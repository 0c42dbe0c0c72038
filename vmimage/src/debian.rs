//! Getting Debian packages without installing them: resolve the candidate
//! version with `apt-cache`, fetch the `.deb` with `apt-get download` into a
//! download cache, check it against the SHA-256 apt's lists give, and unpack
//! it with `dpkg-deb -x`.
//!
//! We use the host's apt rather than talking to a mirror ourselves so that the
//! host's sources, proxies and signatures apply (`scripts/host-deps.sh` keeps
//! the lists fresh).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::arch::Arch;
use crate::command::{self, CommandError};

/// Statically linked busybox: one binary, no libc needed in the initramfs.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// A package as apt's lists describe its candidate version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    /// Debian architecture of the `.deb` (`amd64`, `arm64`, `all`).
    pub arch: String,
    /// Size of the `.deb` in bytes.
    pub size: u64,
    /// SHA-256 of the `.deb`, lowercase hex.
    pub sha256: String,
    /// Raw `Depends:` field (may be empty).
    pub depends: String,
}

/// Something went wrong getting a package.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("apt/dpkg command failed (are apt lists updated? run scripts/host-deps.sh): {0}")]
    Command(#[from] CommandError),
    #[error("apt knows no {arch} packages: add the architecture first (`dpkg --add-architecture {arch} && apt-get update`; scripts/host-deps.sh does): {source}")]
    ForeignArch {
        arch: &'static str,
        #[source]
        source: CommandError,
    },
    #[error("`apt-cache show {package}` output has no usable {field} field")]
    Field {
        package: String,
        field: &'static str,
    },
    #[error("{meta} does not depend on a concrete linux-image package (Depends: {depends:?})")]
    NoKernel { meta: String, depends: String },
    #[error("downloaded {path}: sha256 {found} does not match apt's {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("apt-get download of {package} left {count} .deb files in {dir}, expected 1")]
    Download {
        package: String,
        dir: PathBuf,
        count: usize,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DebianError + 'a {
    move |source| DebianError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The candidate version of `package` (the host's architecture) from apt's
/// lists.
pub fn candidate(package: &str) -> Result<PackageInfo, DebianError> {
    let out = command::run(
        Command::new("apt-cache")
            .args(["show", "--no-all-versions", package])
            .env("LC_ALL", "C"),
    )?;
    parse_show(package, &String::from_utf8_lossy(&out))
}

/// The candidate version of `package` for `arch` (`apt-cache show
/// PACKAGE:ARCH`). Another architecture than the host's needs apt to know
/// it (`dpkg --add-architecture`); without that the error says so.
pub fn candidate_for(package: &str, arch: Arch) -> Result<PackageInfo, DebianError> {
    let qualified = format!("{package}:{}", arch.debian());
    let info = match candidate(&qualified) {
        Err(DebianError::Command(source)) if Arch::host() != Some(arch) => {
            return Err(DebianError::ForeignArch {
                arch: arch.debian(),
                source,
            })
        }
        other => other?,
    };
    if info.arch != arch.debian() && info.arch != "all" {
        return Err(DebianError::Field {
            package: qualified,
            field: "Architecture",
        });
    }
    Ok(info)
}

/// Parses the first stanza of `apt-cache show` output.
fn parse_show(package: &str, text: &str) -> Result<PackageInfo, DebianError> {
    let stanza = text.split("\n\n").next().unwrap_or_default();
    let field = |name: &'static str| -> Result<String, DebianError> {
        stanza
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| DebianError::Field {
                package: package.to_owned(),
                field: name,
            })
    };
    let size = field("Size")?
        .parse::<u64>()
        .map_err(|_| DebianError::Field {
            package: package.to_owned(),
            field: "Size",
        })?;
    let sha256 = field("SHA256")?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DebianError::Field {
            package: package.to_owned(),
            field: "SHA256",
        });
    }
    Ok(PackageInfo {
        name: field("Package")?,
        version: field("Version")?,
        arch: field("Architecture")?,
        size,
        sha256,
        depends: field("Depends").unwrap_or_default(),
    })
}

/// The concrete kernel package `arch`'s meta package (e.g.
/// `linux-image-arm64`) currently points at, e.g.
/// `linux-image-6.1.0-56-arm64`. The meta package holds no kernel itself.
pub fn kernel_package_for(arch: Arch) -> Result<PackageInfo, DebianError> {
    let meta = candidate_for(arch.kernel_meta(), arch)?;
    let name = concrete_kernel(&meta.depends).ok_or_else(|| DebianError::NoKernel {
        meta: meta.name.clone(),
        depends: meta.depends.clone(),
    })?;
    candidate_for(&name, arch)
}

/// Picks `linux-image-X` out of a `Depends:` field like
/// `linux-image-6.1.0-56-amd64 (= 6.1.192-2)`.
fn concrete_kernel(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .filter_map(|alt| alt.split_whitespace().next())
        .find(|name| {
            name.starts_with("linux-image-")
                && !matches!(*name, "linux-image-amd64" | "linux-image-arm64")
        })
        .map(str::to_owned)
}

/// Makes sure `info`'s `.deb` is in `cache_dir` (downloading it if needed)
/// and returns its path. `progress(done, total)` reports bytes.
///
/// The file is checked against apt's SHA-256 before it is trusted, both when
/// found in the cache and after a download. Downloads land in a private
/// folder and are renamed into the cache, so concurrent builders never see a
/// partial file.
pub fn fetch(
    info: &PackageInfo,
    cache_dir: &Path,
    progress: &dyn Fn(u64, u64),
) -> Result<PathBuf, DebianError> {
    fs::create_dir_all(cache_dir).map_err(io_err("creating", cache_dir))?;
    let target = cache_dir.join(format!(
        "{}_{}_{}.deb",
        info.name,
        info.version.replace(':', "%3a"),
        info.arch
    ));
    if target.exists() {
        if sha256_file(&target)? == info.sha256 {
            progress(info.size, info.size);
            return Ok(target);
        }
        tracing::warn!(path = %target.display(), "cached package has a bad checksum, downloading again");
    }
    progress(0, info.size);
    let dl = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache_dir)
        .map_err(io_err("creating a download folder in", cache_dir))?;
    let dl_path = dl.path().to_owned();
    command::run_with_ticks(
        Command::new("apt-get")
            .args(["download", "-q"])
            .arg(format!("{}:{}={}", info.name, info.arch, info.version))
            .current_dir(&dl_path)
            .env("LC_ALL", "C"),
        &|| progress(dir_size(&dl_path).min(info.size), info.size),
    )?;
    let debs: Vec<PathBuf> = fs::read_dir(&dl_path)
        .map_err(io_err("reading", &dl_path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    let [deb] = debs.as_slice() else {
        return Err(DebianError::Download {
            package: info.name.clone(),
            dir: dl_path,
            count: debs.len(),
        });
    };
    let found = sha256_file(deb)?;
    if found != info.sha256 {
        return Err(DebianError::Checksum {
            path: deb.clone(),
            expected: info.sha256.clone(),
            found,
        });
    }
    fs::rename(deb, &target).map_err(io_err("moving download to", &target))?;
    progress(info.size, info.size);
    Ok(target)
}

/// Unpacks a `.deb`'s files (not its scripts) under `dest`.
pub fn unpack(deb: &Path, dest: &Path) -> Result<(), DebianError> {
    fs::create_dir_all(dest).map_err(io_err("creating", dest))?;
    command::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    Ok(())
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, DebianError> {
    crate::store::sha256_file(path, &|_| {}).map_err(io_err("reading", path))
}

/// Bytes in the regular files directly in `dir` and one level below (apt
/// keeps its partial download in `partial/`).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_file() => total += m.len(),
            Ok(m) if m.is_dir() => total += dir_size_flat(&e.path()),
            _ => {}
        }
    }
    total
}

fn dir_size_flat(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Installed-Size: 14
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Architecture: amd64
Filename: pool/updates/main/l/linux-signed-amd64/linux-image-amd64_6.1.192-2_amd64.deb
Size: 1480
SHA256: 45457bcfc86c87585800b5656bdf2773b063a3bb95486b0e820d51e870491f8d

Package: linux-image-amd64
Version: 6.1.0-old
";

    #[test]
    fn parses_apt_cache_show() {
        let p = parse_show("linux-image-amd64", SHOW).unwrap();
        assert_eq!(p.version, "6.1.192-2");
        assert_eq!(p.arch, "amd64");
        assert_eq!(p.size, 1480);
        assert_eq!(
            concrete_kernel(&p.depends).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert!(parse_show("x", "Package: x\nVersion: 1\n").is_err());
        // No architecture: refused, since the cache file name carries it.
        let no_arch = SHOW.replace("Architecture: amd64\n", "");
        assert!(parse_show("linux-image-amd64", &no_arch).is_err());
        assert!(parse_show("x", "").is_err());
    }

    #[test]
    fn concrete_kernel_skips_others() {
        assert_eq!(
            concrete_kernel("initramfs-tools | linux-initramfs-tool"),
            None
        );
        assert_eq!(
            concrete_kernel("foo, linux-image-6.12.1-amd64 (= 1) | linux-image-amd64").as_deref(),
            Some("linux-image-6.12.1-amd64")
        );
    }
}
