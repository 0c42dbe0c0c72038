//! Running another architecture's programs at build time, without
//! `binfmt_misc`: boots the guest's own kernel under QEMU (TCG) with a
//! throwaway initramfs whose `/init` mounts the tree being built over 9p and
//! runs a script chrooted into it, then powers the VM off.
//!
//! Why a VM and not qemu-user: qemu-user runs one binary, and everything a
//! second-stage debootstrap runs (dpkg, maintainer scripts) execs further
//! binaries, which only works with a `binfmt_misc` handler registered on
//! the host kernel. That is host-wide state a container usually may not
//! (or should not) touch, and CI containers have none. A VM needs nothing
//! but `qemu-system-ARCH`.
//!
//! The tree is shared with `security_model=passthrough`: the builder runs as
//! root, so files the guest creates get the guest's owners, modes and device
//! numbers on the host, exactly as a chroot would leave them, and the rest of
//! the build (and `mkfs.ext4 -d`) sees a normal tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::guest::GuestKernel;
use crate::Progress;

/// The 9p mount tag of the tree.
const TAG: &str = "clawpen-root";

/// Folder in the tree holding the script while it runs (removed after).
pub const SCRIPT_DIR: &str = ".clawpen-build";

/// Line prefix `/init` prints with the script's exit status.
const EXIT_MARKER: &str = "CLAWPEN_BUILD_EXIT";

/// A builder VM run failed.
#[derive(Debug, thiserror::Error)]
pub enum BuilderVmError {
    #[error("could not run {qemu} (install qemu-system-arm for aarch64 guests, qemu-system-x86 for x86_64; scripts/host-deps.sh does): {source}")]
    Spawn {
        qemu: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the builder VM did not finish within {secs} s; console log tail: {tail}")]
    Timeout { secs: u64, tail: String },
    #[error("the script in the builder VM failed (exit {status}); console log tail: {tail}")]
    Failed { status: String, tail: String },
    #[error("the builder VM stopped without reporting the script's exit ({vmm}); console log tail: {tail}")]
    NoExit { vmm: String, tail: String },
    #[error("initramfs: {0}")]
    Initramfs(#[from] crate::initramfs::InitramfsError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BuilderVmError + 'a {
    move |source| BuilderVmError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// How a builder VM runs.
pub(crate) struct BuilderVm<'a> {
    /// The guest's kernel, busybox and modules (virtio-pci and 9p among them).
    pub guest: &'a GuestKernel,
    /// Scratch folder for the initramfs and the console log.
    pub work: &'a Path,
    pub cpus: u32,
    pub memory_mib: u32,
    pub timeout: Duration,
}

impl BuilderVm<'_> {
    /// Runs `script` (POSIX sh, run by the tree's own `/bin/sh`) chrooted
    /// into `rootfs`, with `/proc`, `/sys` and `/dev` mounted, and returns
    /// the VM's console output. `progress` gets `step` with the seconds
    /// elapsed. An exit status other than 0 is an error carrying the
    /// console's tail.
    /// `files` (name, content) are put beside the script, in
    /// `/.clawpen-build/` in the tree, for it to use.
    pub fn run(
        &self,
        rootfs: &Path,
        script: &str,
        files: &[(&str, &str)],
        step: &str,
        progress: &dyn Fn(Progress),
    ) -> Result<String, BuilderVmError> {
        let script_dir = rootfs.join(SCRIPT_DIR);
        fs::create_dir_all(&script_dir).map_err(io("creating", &script_dir))?;
        let script_path = script_dir.join("run.sh");
        fs::write(&script_path, script).map_err(io("writing", &script_path))?;
        for (name, content) in files {
            let path = script_dir.join(name);
            fs::write(&path, content).map_err(io("writing", &path))?;
        }
        let result = self.boot(rootfs, step, progress);
        let _ = fs::remove_dir_all(&script_dir);
        result
    }

    fn boot(
        &self,
        rootfs: &Path,
        step: &str,
        progress: &dyn Fn(Progress),
    ) -> Result<String, BuilderVmError> {
        let arch = self.guest.arch;
        let initrd = self.work.join("builder-initrd.cpio");
        let mut ar = self.guest.skeleton(&["dev", "proc", "sys", "newroot"])?;
        ar.bytes(
            "init",
            0o755,
            init_script(&self.guest.release, arch.console()),
        )?;
        ar.write(&initrd, &|_, _| {})?;
        let log = self.work.join("builder-console.log");
        let _ = fs::remove_file(&log);

        let qemu = arch.qemu_system();
        let mut cmd = Command::new(qemu);
        cmd.args(["-machine", arch.qemu_machine(), "-accel", "tcg"])
            // `pauth-impdef`: QEMU's own pointer-authentication hash, much
            // cheaper to emulate than the architected QARMA5.
            .args(["-cpu", cpu_model(arch)])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-kernel")
            .arg(&self.guest.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &arch.kernel_cmdline()])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .arg("-fsdev")
            .arg(format!(
                "local,id=fs0,path={},security_model=passthrough,multidevs=remap",
                rootfs.display().to_string().replace(',', ",,")
            ))
            .arg("-device")
            .arg(format!("virtio-9p-pci,fsdev=fs0,mount_tag={TAG}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        tracing::info!(command = %crate::command::describe(&cmd), "builder VM");
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| BuilderVmError::Spawn {
            qemu: qemu.to_owned(),
            source,
        })?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BuilderVmError::Timeout {
                        secs: self.timeout.as_secs(),
                        tail: tail(&read_log(&log)),
                    });
                }
                Ok(None) => {
                    progress(Progress::new(step, started.elapsed().as_secs(), None));
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BuilderVmError::Spawn {
                        qemu: qemu.to_owned(),
                        source,
                    });
                }
            }
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        let console = read_log(&log);
        tracing::info!(took = ?started.elapsed(), "builder VM done");
        match exit_status(&console) {
            Some("0") => Ok(console),
            Some(other) => Err(BuilderVmError::Failed {
                status: other.to_owned(),
                tail: tail(&console),
            }),
            None => Err(BuilderVmError::NoExit {
                vmm: format!("{status}; {}", stderr.trim()),
                tail: tail(&console),
            }),
        }
    }
}

/// The CPU model for a TCG builder VM.
pub(crate) fn cpu_model(arch: crate::Arch) -> &'static str {
    match arch {
        crate::Arch::X86_64 => "max",
        crate::Arch::Aarch64 => "max,pauth-impdef=on",
    }
}

fn read_log(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// The last lines of the console, for errors.
fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The status `/init` reported, if it got that far.
fn exit_status(console: &str) -> Option<&str> {
    console.lines().rev().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix(EXIT_MARKER)
            .map(str::trim)
    })
}

/// The builder's `/init`: modules, the tree over 9p, the script chrooted,
/// its status on the console, unmount, power off. PID 1 never exits: a
/// failure to power off leaves a shell, and the caller's timeout ends it.
fn init_script(release: &str, console: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
# clawpen builder VM: runs /{SCRIPT_DIR}/run.sh chrooted into the 9p tree.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
  [ -n "$m" ] || continue
  insmod "/lib/modules/{release}/$m" || echo "clawpen-builder: insmod $m failed"
done < /etc/clawpen-modules
echo
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 {TAG} /newroot; then
  mkdir -p /newroot/proc /newroot/sys /newroot/dev
  mount -t proc proc /newroot/proc
  mount -t sysfs sysfs /newroot/sys
  mount -t devtmpfs devtmpfs /newroot/dev
  mkdir -p /newroot/dev/pts
  mount -t devpts devpts /newroot/dev/pts
  chroot /newroot /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 /bin/sh /{SCRIPT_DIR}/run.sh
  rc=$?
  sync
  for m in /newroot/dev/pts /newroot/dev /newroot/sys /newroot/proc /newroot; do
    umount "$m" || umount -l "$m"
  done
  echo "{EXIT_MARKER} $rc"
else
  echo "{EXIT_MARKER} mount"
fi
sync
poweroff -f
while true; do
  setsid sh -c 'exec sh </dev/{console} >/dev/{console} 2>&1'
  sleep 1
done
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exit_status() {
        assert_eq!(exit_status("boot\r\nCLAWPEN_BUILD_EXIT 0\r\n"), Some("0"));
        assert_eq!(exit_status("x\nCLAWPEN_BUILD_EXIT 100\n"), Some("100"));
        assert_eq!(exit_status("CLAWPEN_BUILD_EXIT mount\n"), Some("mount"));
        assert_eq!(exit_status("kernel panic\n"), None);
    }

    #[test]
    fn init_runs_the_script_and_powers_off() {
        let s = init_script("6.1.0-56-arm64", "ttyAMA0");
        assert!(s.contains("/lib/modules/6.1.0-56-arm64/$m"));
        assert!(s.contains(&format!("/bin/sh /{SCRIPT_DIR}/run.sh")));
        let run = s.find("run.sh\n").unwrap();
        let marker = s.find("echo \"CLAWPEN_BUILD_EXIT $rc\"").unwrap();
        let off = s.find("poweroff -f").unwrap();
        assert!(run < marker && marker < off);
        assert!(s.contains("-t 9p -o trans=virtio"));
    }
}
