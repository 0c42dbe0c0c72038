//! Recipe for the tiny **test guest**: Debian 12's kernel, a busybox
//! initramfs and a small ext4 base disk.
//!
//! It exists so tests and CI can boot a real VM in seconds under TCG: no
//! distribution root filesystem, no systemd, just `/init` that loads the
//! virtio/ext4/9p modules, mounts the disk at `/mnt`, prints
//! [`READY_MARKER`](crate::READY_MARKER) and gives a shell on the serial
//! console that a test can type into.

use std::fs;
use std::path::{Path, PathBuf};

use crate::debian::{self, PackageInfo};
use crate::disk::{self, DiskSpec};
use crate::initramfs::Initramfs;
use crate::kmod::{KernelModule, ModuleTree};
use crate::manifest::{
    FileRole, ImageFile, ImageManifest, SourcePackage, DISK_FILE, FORMAT, INITRD_FILE, KERNEL_FILE,
};
use crate::store::{sha256_file, ImageError};
use crate::{Progress, FAILED_MARKER, READY_MARKER, TEST_GUEST};

/// Bump when the recipe changes what ends up in the image, so stores rebuild
/// their cached copy.
pub const RECIPE: u32 = 3;

/// Serial console on the first UART; `panic=-1` reboots at once on a panic,
/// which QEMU's `-no-reboot` turns into an exit instead of a hang.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// Prompt of the guest's serial shell.
pub const PROMPT: &str = "clawpen# ";

/// Modules the guest loads, besides their dependencies. `crc32c_generic`
/// comes before `ext4`: ext4 and jbd2 only name it as a *soft* dependency
/// (`softdep=pre: crypto-crc32c`, an alias), which `modules.dep`/`depends=`
/// do not carry, and without it mounting a `metadata_csum` filesystem fails.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "virtio_net",
    "9pnet_virtio",
    "9p",
];

/// Where the DHCP client's hook script lives in the initramfs.
pub const UDHCPC_SCRIPT: &str = "/etc/udhcpc.script";

/// busybox `udhcpc`'s hook: applies the lease (address, default route, MTU,
/// DNS server) to the interface.
pub const UDHCPC_HOOK: &str = r#"#!/bin/sh
# clawpen test guest: udhcpc hook ($1 = event, lease in the environment).
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    for r in $router; do
      ip route replace default via "$r" dev "$interface"
      break
    done
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    ;;
esac
exit 0
"#;

/// Size of the base disk's filesystem.
pub const DISK_MIB: u64 = 64;

/// The `/init` script. PID 1 must never exit (that panics the kernel), so
/// every failure is reported on the console and the shell is respawned.
pub fn init_script(release: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
# clawpen test guest init (recipe {RECIPE}). PID 1: never exits.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /mnt /tmp /root
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=vt100
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
hostname clawpen-guest
# Shares: every 9p device's mount tag, mounted at /mnt/TAG.
mount_shares() {{
  for f in /sys/bus/virtio/drivers/9pnet_virtio/virtio*/mount_tag; do
    [ -e "$f" ] || continue
    tag=$(tr -d '\000' < "$f")
    mkdir -p "/mnt/$tag"
    mountpoint -q "/mnt/$tag" \
      || mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "$tag" "/mnt/$tag"
  done
}}
umount_shares() {{
  for m in $(awk '$3 == "9p" {{ print $2 }}' /proc/mounts); do
    umount "$m" || return 1
  done
}}
# The guest agent on the second UART: one command a line, one answer a line.
# The supervisor unmounts shares around memory snapshots with it.
agent() {{
  stty -F /dev/ttyS1 raw -echo 2>/dev/null
  while true; do
    while read -r cmd; do
      case "$cmd" in
        mount-shares) if mount_shares; then echo "ok $cmd"; else echo "error $cmd"; fi ;;
        umount-shares) sync; if umount_shares; then echo "ok $cmd"; else echo "error $cmd busy"; fi ;;
        ping) echo "ok ping" ;;
        "") ;;
        *) echo "error unknown command $cmd" ;;
      esac
    done < /dev/ttyS1 > /dev/ttyS1
    sleep 1
  done
}}
fail=""
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/{release}/$m" || fail="insmod $m"
done < /etc/clawpen-modules
agent &
# Start the marker on a line of its own (firmware leaves the cursor mid-line).
echo
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ -n "$fail" ]; then
  echo "{FAILED_MARKER}: $fail"
elif [ ! -b /dev/vda ]; then
  echo "{FAILED_MARKER}: no /dev/vda"
elif ! mount -t ext4 /dev/vda /mnt; then
  echo "{FAILED_MARKER}: cannot mount /dev/vda on /mnt"
else
  # The network (egress gateway): DHCP on eth0, bounded so a VM without a
  # gateway still boots.
  ip link set lo up
  if [ -e /sys/class/net/eth0 ]; then
    udhcpc -i eth0 -s {UDHCPC_SCRIPT} -n -q -t 5 -T 1 >/dev/null 2>&1 \
      || echo "clawpen-init: no DHCP lease on eth0"
  fi
  mount_shares
  echo "{READY_MARKER}"
fi
export PS1='{PROMPT}'
while true; do
  setsid cttyhack sh
  echo "clawpen-init: shell exited, starting a new one"
  sleep 1
done
"#
    )
}

/// Builds the test guest's files into `out` (which must exist), using `work`
/// as scratch space and `downloads` as the `.deb` cache. Writes no manifest:
/// the store writes it last.
pub(crate) fn build(
    downloads: &Path,
    work: &Path,
    out: &Path,
    progress: &dyn Fn(Progress),
) -> Result<ImageManifest, ImageError> {
    if std::env::consts::ARCH != "x86_64" {
        return Err(ImageError::Unsupported(format!(
            "the test guest is built from amd64 packages; host is {}",
            std::env::consts::ARCH
        )));
    }
    progress(Progress::new("resolve packages", 0, Some(2)));
    let kernel_pkg = debian::kernel_package()?;
    progress(Progress::new("resolve packages", 1, Some(2)));
    let busybox_pkg = debian::candidate(debian::BUSYBOX_PACKAGE)?;
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
    let modules = tree.load_order(MODULES)?;
    progress(Progress::new(
        "kernel modules",
        modules.len() as u64,
        Some(modules.len() as u64),
    ));

    let vmlinuz = kernel_root.join("boot").join(format!("vmlinuz-{release}"));
    let kernel_out = out.join(KERNEL_FILE);
    fs::copy(&vmlinuz, &kernel_out).map_err(ImageError::io("copying kernel", &vmlinuz))?;

    let initrd_out = out.join(INITRD_FILE);
    let ar = initramfs(
        &release,
        &modules_dir,
        &modules,
        &busybox_root.join("bin/busybox"),
    )?;
    ar.write(&initrd_out, &|done, total| {
        progress(Progress::new("initramfs", done, Some(total)))
    })?;

    progress(Progress::new("disk", 0, Some(1)));
    let contents = work.join("disk-root");
    for dir in ["etc", "home"] {
        let d = contents.join(dir);
        fs::create_dir_all(&d).map_err(ImageError::io("creating", &d))?;
    }
    let stamp = contents.join("etc/clawpen-image");
    fs::write(&stamp, format!("{TEST_GUEST}\n")).map_err(ImageError::io("writing", &stamp))?;
    let disk_out = out.join(DISK_FILE);
    disk::build_qcow2(
        &DiskSpec {
            contents: &contents,
            size_mib: DISK_MIB,
            label: "clawpen",
        },
        work,
        &disk_out,
    )?;
    progress(Progress::new("disk", 1, Some(1)));

    let mut files = Vec::new();
    for role in FileRole::ALL {
        files.push(describe_file(role, out, progress)?);
    }
    Ok(ImageManifest {
        format: FORMAT,
        name: TEST_GUEST.to_owned(),
        arch: "x86_64".to_owned(),
        recipe: RECIPE,
        kernel_cmdline: KERNEL_CMDLINE.to_owned(),
        kernel_release: release,
        kernel_modules: modules.into_iter().map(|m| m.name).collect(),
        packages: [kernel_pkg, busybox_pkg]
            .into_iter()
            .map(|p| SourcePackage {
                name: p.name,
                version: p.version,
                sha256: p.sha256,
            })
            .collect(),
        software: Vec::new(),
        files,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    })
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

fn initramfs(
    release: &str,
    modules_dir: &Path,
    modules: &[KernelModule],
    busybox: &Path,
) -> Result<Initramfs, ImageError> {
    let mut ar = Initramfs::new();
    for dir in [
        "dev", "proc", "sys", "mnt", "tmp", "root", "sbin", "usr/bin", "usr/sbin",
    ] {
        ar.dir(dir, 0o755)?;
    }
    ar.char_dev("dev/console", 0o600, 5, 1)?;
    ar.char_dev("dev/null", 0o666, 1, 3)?;
    ar.file("bin/busybox", 0o755, busybox)?;
    ar.symlink("bin/sh", "busybox")?;
    let mut list = String::new();
    for m in modules {
        ar.file(
            &format!("lib/modules/{release}/{}", m.path),
            0o644,
            &modules_dir.join(&m.path),
        )?;
        list.push_str(&m.path);
        list.push('\n');
    }
    ar.bytes("etc/clawpen-modules", 0o644, list)?;
    ar.bytes("etc/clawpen-image", 0o644, format!("{TEST_GUEST}\n"))?;
    ar.bytes("init", 0o755, init_script(release))?;
    ar.bytes(
        UDHCPC_SCRIPT.trim_start_matches('/'),
        0o755,
        UDHCPC_HOOK.to_string(),
    )?;
    Ok(ar)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_prints_markers_and_respawns() {
        let s = init_script("6.1.0-56-amd64");
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("echo \"CLAWPEN_GUEST_READY\""));
        assert!(s.contains("/lib/modules/6.1.0-56-amd64/$m"));
        assert!(s.contains("while true; do\n  setsid cttyhack sh"));
        assert!(
            !s.contains("exec "),
            "init must not exec away its respawn loop"
        );
    }
}
