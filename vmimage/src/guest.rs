//! What every guest recipe shares: the Debian kernel and static busybox of an
//! architecture (fetched, checked, unpacked), the kernel module closure, the
//! busybox initramfs skeleton, the guest agent's shell function, and the
//! manifest's file descriptions. The test guest and the OpenClaw guest differ
//! only in what they add on top.

use std::fs;
use std::path::{Path, PathBuf};

use crate::arch::{Arch, AGENT_PORT_NAME};
use crate::debian::{self, PackageInfo};
use crate::initramfs::{Initramfs, InitramfsError};
use crate::kmod::{KernelModule, ModuleTree};
use crate::manifest::{FileRole, ImageFile, SourcePackage};
use crate::store::{sha256_file, ImageError};
use crate::Progress;

/// A recipe's kernel modules plus those its guest agent's channel needs on
/// `arch` (before dependencies).
pub(crate) fn with_agent_modules(base: &[&'static str], arch: Arch) -> Vec<&'static str> {
    base.iter().chain(arch.agent_modules()).copied().collect()
}

/// The kernel, its modules and busybox of one architecture, unpacked under
/// a build's work folder.
pub(crate) struct GuestKernel {
    pub arch: Arch,
    pub kernel_pkg: PackageInfo,
    pub busybox_pkg: PackageInfo,
    /// e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// `lib/modules/RELEASE` of the unpacked kernel package.
    pub modules_dir: PathBuf,
    /// The wanted modules and their dependencies, in load order.
    pub modules: Vec<KernelModule>,
    /// The kernel image (`bzImage` on x86; an uncompressed arm64 `Image` on
    /// aarch64, which both QEMU and Virtualization.framework boot).
    pub vmlinuz: PathBuf,
    /// The static busybox binary.
    pub busybox: PathBuf,
}

impl GuestKernel {
    /// Resolves, downloads (into `downloads`, cached) and unpacks (under
    /// `work`) the kernel and busybox for `arch`, and works out the load
    /// order of `wanted` modules.
    pub fn fetch(
        arch: Arch,
        wanted: &[&str],
        downloads: &Path,
        work: &Path,
        progress: &dyn Fn(Progress),
    ) -> Result<Self, ImageError> {
        progress(Progress::new("resolve packages", 0, Some(2)));
        let kernel_pkg = debian::kernel_package_for(arch)?;
        progress(Progress::new("resolve packages", 1, Some(2)));
        let busybox_pkg = debian::candidate_for(debian::BUSYBOX_PACKAGE, arch)?;
        progress(Progress::new("resolve packages", 2, Some(2)));

        let kernel_deb = fetch("download kernel", &kernel_pkg, downloads, progress)?;
        let busybox_deb = fetch("download busybox", &busybox_pkg, downloads, progress)?;

        progress(Progress::new("unpack", 0, Some(2)));
        let kernel_root = work.join("kernel");
        debian::unpack(&kernel_deb, &kernel_root)?;
        progress(Progress::new("unpack", 1, Some(2)));
        let busybox_root = work.join("busybox");
        debian::unpack(&busybox_deb, &busybox_root)?;
        progress(Progress::new("unpack", 2, Some(2)));

        progress(Progress::new("kernel modules", 0, None));
        let release = kernel_release(&kernel_root)?;
        let modules_dir = kernel_root.join("lib/modules").join(&release);
        let tree = ModuleTree::open(&modules_dir)?;
        let modules = tree.load_order(wanted)?;
        progress(Progress::new(
            "kernel modules",
            modules.len() as u64,
            Some(modules.len() as u64),
        ));
        let vmlinuz = kernel_root.join("boot").join(format!("vmlinuz-{release}"));
        Ok(Self {
            arch,
            kernel_pkg,
            busybox_pkg,
            release,
            modules_dir,
            modules,
            vmlinuz,
            busybox: busybox_root.join("bin/busybox"),
        })
    }

    /// The packages for the manifest, kernel first.
    pub fn packages(&self) -> Vec<SourcePackage> {
        [&self.kernel_pkg, &self.busybox_pkg]
            .into_iter()
            .map(|p| SourcePackage {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: p.sha256.clone(),
            })
            .collect()
    }

    /// Names of the modules the initramfs loads, in load order.
    pub fn module_names(&self) -> Vec<String> {
        self.modules.iter().map(|m| m.name.clone()).collect()
    }

    /// The initramfs every recipe starts from: `dirs`, `/dev/console` and
    /// `/dev/null` (the kernel opens the console for init's stdio before
    /// anything can mount devtmpfs), `/bin/busybox` and `/bin/sh`, the
    /// modules under `lib/modules/RELEASE` and their load order in
    /// `/etc/clawpen-modules` (one path a line, read by `/init`).
    pub fn skeleton(&self, dirs: &[&str]) -> Result<Initramfs, InitramfsError> {
        let mut ar = Initramfs::new();
        for dir in dirs {
            ar.dir(dir, 0o755)?;
        }
        ar.char_dev("dev/console", 0o600, 5, 1)?;
        ar.char_dev("dev/null", 0o666, 1, 3)?;
        ar.file("bin/busybox", 0o755, &self.busybox)?;
        ar.symlink("bin/sh", "busybox")?;
        let mut list = String::new();
        for m in &self.modules {
            ar.file(
                &format!("lib/modules/{}/{}", self.release, m.path),
                0o644,
                &self.modules_dir.join(&m.path),
            )?;
            list.push_str(&m.path);
            list.push('\n');
        }
        ar.bytes("etc/clawpen-modules", 0o644, list)?;
        Ok(ar)
    }
}

/// The guests' shell functions for the config disk and shares, the same in
/// every recipe (the test guest's busybox and the OpenClaw guest's Debian
/// tools both run them):
///
/// - `config_json [DISK...]`: the JSON of the first config disk
///   ([`crate::config_disk`], version 1) among DISKs, by default every
///   `/dev/vd*`; found by its magic line, not its position.
/// - `config_shares FS [DISK...]`: the tags of the shares the config disk
///   lists with file system FS, one a line (the JSON is serde's compact
///   output, `"tag":"TAG","fs":"FS"`, and tags are `[a-z0-9-]`).
/// - `mounted DIR`: whether DIR is a mount point, from `/proc/mounts`
///   (the test guest's busybox has no `mountpoint` applet).
/// - `mount_shares`: every share not yet mounted at `/mnt/TAG`. 9p (QEMU
///   `-virtfs`): the tags of the 9p devices in sysfs. virtio-fs (VZ):
///   Linux 6.1 shows no virtio-fs tag in sysfs, so the tags the config
///   disk lists as `virtiofs`. Fails if a mount does.
/// - `umount_shares`: unmounts every 9p and virtio-fs mount (the agent's
///   `umount-shares`, before a memory snapshot).
pub(crate) const SHARE_FUNCTIONS: &str = r#"config_json() {
  [ $# -gt 0 ] || set -- /dev/vd*
  for d in "$@"; do
    [ -r "$d" ] || continue
    [ "$(head -c 18 "$d" 2>/dev/null | tr -d '\000')" = "CLAWPEN-CONFIG v1" ] || continue
    len=$(head -n 2 "$d" | tail -n 1)
    case "$len" in ''|*[!0-9]*) continue ;; esac
    tail -c +$((18 + ${#len} + 2)) "$d" | head -c "$len"
    return 0
  done
  return 1
}
config_shares() {
  fs=$1
  shift
  config_json "$@" 2>/dev/null | grep -o "\"tag\":\"[a-z0-9-]*\",\"fs\":\"$fs\"" | cut -d'"' -f4
}
mounted() {
  grep -q " $1 " /proc/mounts
}
mount_shares() {
  rc=0
  for f in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
    [ -e "$f" ] || continue
    tag=$(tr -d '\000' < "$f")
    mkdir -p "/mnt/$tag"
    mounted "/mnt/$tag" \
      || mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$tag" "/mnt/$tag" \
      || rc=1
  done
  for tag in $(config_shares virtiofs); do
    mkdir -p "/mnt/$tag"
    mounted "/mnt/$tag" || mount -t virtiofs "$tag" "/mnt/$tag" || rc=1
  done
  return $rc
}
umount_shares() {
  for m in $(awk '$3 == "9p" || $3 == "virtiofs" { print $2 }' /proc/mounts); do
    umount "$m" || return 1
  done
}
"#;

/// The guest agent as a shell function `agent` (it needs `mount_shares` and
/// `umount_shares` defined): one command a line in, one answer a line out,
/// reopened whenever the supervisor's side goes away.
///
/// x86: the second UART, `/dev/ttyS1`. aarch64: the virtio-serial port
/// named [`AGENT_PORT_NAME`], found in sysfs, opened once read-write (a
/// virtio port accepts one open at a time; with the host side closed a read
/// sees end-of-file, and the loop opens it again a second later).
pub(crate) fn agent_function(arch: Arch) -> String {
    let (open, io) = match arch {
        Arch::X86_64 => (
            "  stty -F /dev/ttyS1 raw -echo 2>/dev/null\n".to_owned(),
            "< /dev/ttyS1 > /dev/ttyS1",
        ),
        Arch::Aarch64 => (
            format!(
                r#"  dev=""
  for f in /sys/class/virtio-ports/*/name; do
    [ "$(cat "$f" 2>/dev/null)" = {AGENT_PORT_NAME} ] || continue
    d=${{f%/name}}
    dev=/dev/${{d##*/}}
  done
  if [ -z "$dev" ]; then
    echo "clawpen-init: no virtio port {AGENT_PORT_NAME}: no guest agent"
    return 0
  fi
"#
            ),
            "<> \"$dev\" >&0",
        ),
    };
    format!(
        r#"agent() {{
{open}  while true; do
    while read -r cmd; do
      case "$cmd" in
        mount-shares) if mount_shares; then echo "ok $cmd"; else echo "error $cmd"; fi ;;
        umount-shares) sync; if umount_shares; then echo "ok $cmd"; else echo "error $cmd busy"; fi ;;
        ping) echo "ok ping" ;;
        "") ;;
        *) echo "error unknown command $cmd" ;;
      esac
    done {io}
    sleep 1
  done
}}
"#
    )
}

/// Downloads a package (cached), reporting progress as `step`.
pub(crate) fn fetch(
    step: &str,
    pkg: &PackageInfo,
    downloads: &Path,
    progress: &dyn Fn(Progress),
) -> Result<PathBuf, ImageError> {
    Ok(debian::fetch(pkg, downloads, &|done, total| {
        progress(Progress::new(step, done, Some(total)))
    })?)
}

/// The kernel release: the single folder under the package's `lib/modules`.
pub(crate) fn kernel_release(kernel_root: &Path) -> Result<String, ImageError> {
    let dir = kernel_root.join("lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&dir)
        .map_err(ImageError::io("reading", &dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("kernel").is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        n => Err(ImageError::Unsupported(format!(
            "expected one kernel release in {}, found {n}",
            dir.display()
        ))),
    }
}

/// Size and checksum of the image file for `role` in `dir`, for the
/// manifest (checksumming shows progress: disks are large).
pub(crate) fn describe_file(
    role: FileRole,
    dir: &Path,
    progress: &dyn Fn(Progress),
) -> Result<ImageFile, ImageError> {
    let path = dir.join(role.file_name());
    let size = fs::metadata(&path)
        .map_err(ImageError::io("reading", &path))?
        .len();
    let step = format!("checksum {}", role.file_name());
    let sha256 = sha256_file(&path, &|done| {
        progress(Progress::new(&step, done, Some(size)))
    })
    .map_err(ImageError::io("reading", &path))?;
    Ok(ImageFile {
        role,
        file: role.file_name().to_owned(),
        size,
        sha256,
    })
}

/// All the image's files, described, in [`FileRole::ALL`] order.
pub(crate) fn describe_files(
    dir: &Path,
    progress: &dyn Fn(Progress),
) -> Result<Vec<ImageFile>, ImageError> {
    FileRole::ALL
        .into_iter()
        .map(|role| describe_file(role, dir, progress))
        .collect()
}

/// Seconds since the Unix epoch, for `created_unix`.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_disk::{self, GuestShare, ShareFs};

    /// Runs `script` after [`SHARE_FUNCTIONS`] in the host's `sh` (POSIX:
    /// the functions use nothing busybox's ash lacks).
    fn sh(script: &str) -> (bool, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{SHARE_FUNCTIONS}{script}"))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    }

    #[test]
    fn the_guest_shell_reads_the_config_disk_and_its_shares() {
        let dir = tempfile::tempdir().unwrap();
        let mut config: crate::GuestConfig = serde_json::from_str(
            r#"{"vm":"demo","inference":{"base_url":"u","api_key":"k","model":"m","context_window":1,"max_tokens":1}}"#,
        )
        .unwrap();
        config.shares = vec![
            GuestShare {
                tag: "work".into(),
                fs: ShareFs::Virtiofs,
            },
            GuestShare {
                tag: "data-2".into(),
                fs: ShareFs::NineP,
            },
            GuestShare {
                tag: "x9".into(),
                fs: ShareFs::Virtiofs,
            },
        ];
        let disk = dir.path().join("cfg.img");
        std::fs::write(&disk, config.to_config_disk().unwrap()).unwrap();
        // Another disk first: found by its magic, not its position.
        let other = dir.path().join("root.img");
        std::fs::write(&other, vec![0u8; 8192]).unwrap();
        let (o, d) = (other.display(), disk.display());

        let (ok, json) = sh(&format!("config_json {o} {d}"));
        assert!(ok);
        assert_eq!(json.as_bytes(), &config.to_json()[..]);
        let (ok, tags) = sh(&format!("config_shares virtiofs {o} {d}"));
        assert!(ok);
        assert_eq!(tags, "work\nx9\n");
        assert_eq!(sh(&format!("config_shares 9p {d}")).1, "data-2\n");
        // No config disk: nothing, and config_json says so.
        assert!(!sh(&format!("config_json {o}")).0);
        assert_eq!(sh(&format!("config_shares virtiofs {o}")).1, "");
        // The version-1 reader skips another version.
        let mut v2 = config_disk::encode(b"{}").unwrap();
        v2[16] = b'2';
        std::fs::write(&disk, v2).unwrap();
        assert!(!sh(&format!("config_json {d}")).0);
    }

    #[test]
    fn both_file_systems_are_unmounted() {
        assert!(SHARE_FUNCTIONS.contains(r#"$3 == "9p" || $3 == "virtiofs""#));
        assert!(SHARE_FUNCTIONS.contains("mount -t virtiofs \"$tag\" \"/mnt/$tag\""));
        assert!(SHARE_FUNCTIONS.contains("mount -t 9p -o trans=virtio"));
    }

    #[test]
    fn agent_channel_per_arch() {
        let x86 = agent_function(Arch::X86_64);
        assert!(x86.contains("done < /dev/ttyS1 > /dev/ttyS1\n"));
        assert!(!x86.contains("virtio-ports"));
        let arm = agent_function(Arch::Aarch64);
        assert!(arm.contains("/sys/class/virtio-ports/*/name"));
        assert!(arm.contains(AGENT_PORT_NAME));
        // One read-write open: a virtio port refuses a second opener.
        assert!(arm.contains("done <> \"$dev\" >&0\n"));
        assert!(!arm.contains("ttyS1"));
        for s in [&x86, &arm] {
            assert!(s.starts_with("agent() {\n"));
            assert!(s.ends_with("\n}\n"));
            assert!(s.contains("ping) echo \"ok ping\""));
        }
    }
}
