//! Recipe for the tiny **test guest**: Debian 12's kernel, a busybox
//! initramfs and a small ext4 base disk.
//!
//! It exists so tests and CI can boot a real VM in seconds under TCG: no
//! distribution root filesystem, no systemd, just `/init` that loads the
//! virtio/ext4/9p/virtiofs modules, mounts the disk at `/mnt`, prints
//! [`READY_MARKER`](crate::READY_MARKER) and gives a shell on the serial
//! console that a test can type into.

use std::fs;
use std::path::Path;

use crate::arch::Arch;
use crate::disk::{self, DiskSpec};
use crate::guest::{self, GuestKernel};
use crate::initramfs::Initramfs;
use crate::manifest::{ImageManifest, DISK_FILE, FORMAT, INITRD_FILE, KERNEL_FILE};
use crate::store::ImageError;
use crate::{Progress, FAILED_MARKER, READY_MARKER, TEST_GUEST};

/// Bump when the recipe changes what ends up in the image, so stores rebuild
/// their cached copy.
pub const RECIPE: u32 = 5;

/// Serial console on the first UART (x86; [`Arch::kernel_cmdline`] for
/// others); `panic=-1` reboots at once on a panic, which QEMU's
/// `-no-reboot` turns into an exit instead of a hang.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 quiet";

/// Prompt of the guest's serial shell.
pub const PROMPT: &str = "clawpen# ";

/// Modules every guest loads, besides their dependencies (see
/// [`modules`] for the per-architecture list). `crc32c_generic`
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
    "virtiofs",
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
/// The guest agent's channel depends on `arch` ([`guest::agent_function`]).
pub fn init_script(release: &str, arch: Arch) -> String {
    let agent = guest::agent_function(arch);
    let shares = guest::SHARE_FUNCTIONS;
    let agent_where = match arch {
        Arch::X86_64 => "second UART",
        Arch::Aarch64 => "named virtio port",
    };
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
# Shares (9p under QEMU, virtio-fs under VZ) at /mnt/TAG; the config disk.
{shares}# The guest agent on the {agent_where}: one command a line, one answer a line.
# The supervisor unmounts shares around memory snapshots with it.
{agent}fail=""
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

/// The store name of the test guest for `arch`: [`TEST_GUEST`] on x86_64,
/// `test-guest-aarch64` otherwise, so both can sit in one store.
pub fn image_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => TEST_GUEST,
        Arch::Aarch64 => "test-guest-aarch64",
    }
}

/// Whether `name` is one of the test guest images.
pub fn is_test_guest_image(name: &str) -> bool {
    Arch::ALL.iter().any(|&a| image_name(a) == name)
}

/// Modules the guest loads for `arch` (before dependencies): [`MODULES`]
/// and what its guest agent's channel needs.
pub fn modules(arch: Arch) -> Vec<&'static str> {
    crate::guest::with_agent_modules(MODULES, arch)
}

/// Builds the test guest's files for `arch` into `out` (which must exist),
/// using `work` as scratch space and `downloads` as the `.deb` cache.
/// Writes no manifest: the store writes it last. Any host builds any
/// architecture: nothing of the guest runs at build time.
pub(crate) fn build(
    arch: Arch,
    downloads: &Path,
    work: &Path,
    out: &Path,
    progress: &dyn Fn(Progress),
) -> Result<ImageManifest, ImageError> {
    let guest = GuestKernel::fetch(arch, &modules(arch), downloads, work, progress)?;

    let kernel_out = out.join(KERNEL_FILE);
    fs::copy(&guest.vmlinuz, &kernel_out)
        .map_err(ImageError::io("copying kernel", &guest.vmlinuz))?;

    let initrd_out = out.join(INITRD_FILE);
    let ar = initramfs(&guest)?;
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

    Ok(ImageManifest {
        format: FORMAT,
        name: image_name(arch).to_owned(),
        arch: arch.as_str().to_owned(),
        recipe: RECIPE,
        kernel_cmdline: arch.kernel_cmdline(),
        kernel_release: guest.release.clone(),
        kernel_modules: guest.module_names(),
        packages: guest.packages(),
        software: Vec::new(),
        files: guest::describe_files(out, progress)?,
        created_unix: guest::now_unix(),
    })
}

fn initramfs(guest: &GuestKernel) -> Result<Initramfs, ImageError> {
    let mut ar = guest.skeleton(&[
        "dev", "proc", "sys", "mnt", "tmp", "root", "sbin", "usr/bin", "usr/sbin",
    ])?;
    ar.bytes("etc/clawpen-image", 0o644, format!("{TEST_GUEST}\n"))?;
    ar.bytes("init", 0o755, init_script(&guest.release, guest.arch))?;
    ar.bytes(
        UDHCPC_SCRIPT.trim_start_matches('/'),
        0o755,
        UDHCPC_HOOK.to_string(),
    )?;
    Ok(ar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_prints_markers_and_respawns() {
        let s = init_script("6.1.0-56-amd64", Arch::X86_64);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("echo \"CLAWPEN_GUEST_READY\""));
        assert!(s.contains("/lib/modules/6.1.0-56-amd64/$m"));
        assert!(s.contains("while true; do\n  setsid cttyhack sh"));
        assert!(
            !s.contains("exec "),
            "init must not exec away its respawn loop"
        );
        assert!(s.contains("# The guest agent on the second UART"));
        assert!(s.contains("done < /dev/ttyS1 > /dev/ttyS1"));
        let a = init_script("6.1.0-56-arm64", Arch::Aarch64);
        assert!(a.contains(crate::arch::AGENT_PORT_NAME));
        assert!(!a.contains("ttyS"));
    }

    #[test]
    fn per_arch_names_and_modules() {
        assert_eq!(image_name(Arch::X86_64), TEST_GUEST);
        assert_eq!(image_name(Arch::Aarch64), "test-guest-aarch64");
        assert!(is_test_guest_image("test-guest-aarch64"));
        assert!(!is_test_guest_image("openclaw"));
        assert_eq!(modules(Arch::X86_64), MODULES);
        assert!(modules(Arch::Aarch64).contains(&"virtio_console"));
        assert_eq!(KERNEL_CMDLINE, Arch::X86_64.kernel_cmdline());
    }
}
