//! The QEMU backend: spawns `qemu-system-x86_64` (or `qemu-system-aarch64`
//! for an aarch64 image: `virt` machine, TCG unless the host is aarch64 too,
//! the guest agent on a named virtio-serial port), drives it over QMP on a
//! unix socket in the VM directory, and keeps disks as qcow2 overlays on the
//! read-only base image.
//!
//! The VMM runs in its own process group with its output in `vmm.log`, so it
//! outlives a crashed supervisor; the next supervisor re-adopts it by pid
//! (checked against the command line, so a recycled pid is never mistaken for
//! it).

pub mod accel;
pub mod kvm_probe;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use clawpen_api::{SharedFolder, SnapshotName, VmSpec};
use clawpen_vmimage::{Arch, Image};

use super::process::{self, ExitWatch};
use super::qmp::Qmp;
use super::{BackendError, Hypervisor, Instance, VmExit};
use crate::jail::Jail;
use crate::vm::dir::VmDir;
use accel::Accel;

/// How long the VMM gets to open its QMP socket after spawning.
const CONTROL_SOCKET_WAIT: Duration = Duration::from_secs(15);
/// How long `quit` may take before the VMM is killed.
const QUIT_WAIT: Duration = Duration::from_secs(10);

pub struct QemuBackend {
    accel: Accel,
    jail: Jail,
}

/// The guest architecture of `image` (manifests say `x86_64` or `aarch64`;
/// anything unknown is treated as x86_64, what every older image is).
fn guest_arch(image: &Image) -> Arch {
    Arch::parse(&image.manifest.arch).unwrap_or(Arch::X86_64)
}

impl QemuBackend {
    /// A backend whose VMMs run with `accel`, inside `jail`.
    pub fn new(accel: Accel, jail: Jail) -> Self {
        Self { accel, jail }
    }

    /// The accelerator for a guest of `arch`: the host's choice for its own
    /// architecture, TCG for another one (KVM cannot run it).
    fn accel_for(&self, arch: Arch) -> Accel {
        if Arch::host() == Some(arch) {
            self.accel
        } else {
            Accel::Tcg
        }
    }

    /// The full argument list for one VM. Public for tests and for people who
    /// want to see exactly what runs.
    pub fn args(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
        restore: Option<&SnapshotName>,
        shares: &[SharedFolder],
    ) -> Vec<String> {
        let p = |path: &Path| path.display().to_string();
        let arch = guest_arch(image);
        let accel = self.accel_for(arch);
        let cpu = match (arch, accel) {
            // QEMU's own pointer-authentication hash: much cheaper under TCG
            // than the architected one, invisible to the guest.
            (Arch::Aarch64, Accel::Tcg) => "max,pauth-impdef=on",
            _ => accel.qemu_cpu(),
        };
        let mut args = vec![
            "-name".into(),
            format!("clawpen-{}", spec.name),
            "-machine".into(),
            arch.qemu_machine().into(),
            "-accel".into(),
            accel.qemu_name().into(),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            spec.cpus.to_string(),
            "-m".into(),
            spec.memory_mib.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            p(&image.kernel()),
            "-initrd".into(),
            p(&image.initrd()),
            "-append".into(),
            image.kernel_cmdline().to_string(),
            "-drive".into(),
            format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                escape_opt(&p(&dir.disk()))
            ),
            "-chardev".into(),
            format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=off",
                escape_opt(&p(&dir.serial_socket())),
                escape_opt(&p(&dir.serial_log()))
            ),
            "-serial".into(),
            "chardev:serial0".into(),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                escape_opt(&p(&dir.qmp_socket()))
            ),
        ];
        // The only NIC: a stream socket the supervisor's egress gateway
        // connects to (QEMU serves it, so a restarted supervisor can connect
        // again to a re-adopted VMM). No ROM: nothing boots from the network.
        args.extend([
            "-netdev".into(),
            format!(
                "stream,id=net0,server=on,addr.type=unix,addr.path={}",
                escape_opt(&p(&dir.net_socket()))
            ),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=net0,mac={},romfile=",
                crate::egress::net::GUEST_MAC
            ),
        ]);
        // The guest agent's channel: mounts and unmounts shares around
        // memory snapshots. x86: the second UART (ttyS1). aarch64: `virt`
        // has one UART, so a virtio-serial port the guest finds by name.
        args.extend([
            "-chardev".into(),
            format!(
                "socket,id=agent0,path={},server=on,wait=off",
                escape_opt(&p(&dir.agent_socket()))
            ),
        ]);
        match arch {
            Arch::X86_64 => args.extend(["-serial".into(), "chardev:agent0".into()]),
            Arch::Aarch64 => args.extend([
                "-device".into(),
                "virtio-serial-pci".into(),
                "-device".into(),
                format!(
                    "virtserialport,chardev=agent0,name={}",
                    clawpen_vmimage::arch::AGENT_PORT_NAME
                ),
            ]),
        }
        // Shares: 9p with security_model=none (the guest sees the host's
        // owners and modes; the VMM creates files as itself) and read-only
        // enforced by QEMU. QEMU's 9p server walks paths component by
        // component without following symlinks, so a symlink in a share is
        // resolved by the guest inside the guest, never to a host file.
        for share in shares {
            let mut fs = format!(
                "local,path={},mount_tag={},security_model=none,multidevs=remap,id=fs-{}",
                escape_opt(&share.host_path),
                share.tag,
                share.tag
            );
            if share.read_only {
                fs.push_str(",readonly=on");
            }
            args.extend(["-virtfs".into(), fs]);
        }
        // The guest's first-boot configuration: the config disk, a second
        // virtio drive (after the root disk, so the root stays `vda`; the
        // guest finds the config by its magic anyway), raw and read-only:
        // `savevm` skips read-only drives, so snapshots still work.
        if dir.guest_config_disk().exists() {
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=virtio,format=raw,readonly=on",
                    escape_opt(&p(&dir.guest_config_disk()))
                ),
            ]);
        }
        if let Some(snapshot) = restore {
            args.extend(["-loadvm".into(), snapshot.to_string()]);
        }
        args
    }

    async fn connect_qmp(&self, dir: &VmDir, exit: &ExitWatch) -> Result<Qmp, BackendError> {
        let deadline = tokio::time::Instant::now() + CONTROL_SOCKET_WAIT;
        loop {
            if exit.has_exited() {
                let mut exit = exit.clone();
                return Err(BackendError::EarlyExit {
                    status: exit.wait().await.detail,
                    log_tail: log_tail(&dir.vmm_log()),
                });
            }
            match Qmp::connect(&dir.qmp_socket()).await {
                Ok(qmp) => return Ok(qmp),
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(_) => {
                    return Err(BackendError::NoControlSocket {
                        secs: CONTROL_SOCKET_WAIT.as_secs(),
                        log_tail: log_tail(&dir.vmm_log()),
                    })
                }
            }
        }
    }
}

/// QEMU option values use `,` as separator; a literal comma is written `,,`.
fn escape_opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// The last lines of a log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let tail = lines.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if tail.is_empty() {
        "(empty)".to_string()
    } else {
        tail
    }
}

/// Runs `qemu-img ARGS` and returns its stdout; a failure carries its stderr.
async fn qemu_img(args: &[&str]) -> Result<String, BackendError> {
    let output = tokio::process::Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|source| BackendError::Io {
            action: "run",
            path: "qemu-img".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(BackendError::Tool {
            command: format!("qemu-img {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The internal snapshots in a qcow2 file, `(tag, has_memory)`. `-U` reads
/// without the write lock, so this works while the VMM runs.
async fn qemu_img_snapshot_list(disk: &str) -> Result<Vec<(String, bool)>, BackendError> {
    let out = qemu_img(&["snapshot", "-U", "-l", disk]).await?;
    Ok(parse_snapshot_table(&out))
}

/// Parses `qemu-img snapshot -l`: a title, a header, then rows of
/// `ID TAG VM-SIZE UNIT DATE TIME VM-CLOCK ICOUNT`; VM SIZE is `0 B` for a
/// disk-only snapshot.
fn parse_snapshot_table(out: &str) -> Vec<(String, bool)> {
    out.lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            cols.next()?.parse::<u32>().ok()?;
            let tag = cols.next()?.to_string();
            let vm_size = cols.next()?;
            Some((tag, vm_size.parse::<f64>().map_or(true, |n| n > 0.0)))
        })
        .collect()
}

async fn qemu_img_snapshots(disk: &str) -> Result<Vec<String>, BackendError> {
    Ok(qemu_img_snapshot_list(disk)
        .await?
        .into_iter()
        .map(|(tag, _)| tag)
        .collect())
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackendError {
    let path = path.to_owned();
    move |source| BackendError::Io {
        action,
        path,
        source,
    }
}

#[async_trait]
impl Hypervisor for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn base_disk_size(&self, image: &Image) -> Result<u64, BackendError> {
        let out = qemu_img(&["info", "--output=json", &image.disk().display().to_string()]).await?;
        let info: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| BackendError::Tool {
                command: "qemu-img info".into(),
                stderr: format!("unreadable answer: {e}"),
            })?;
        info["virtual-size"]
            .as_u64()
            .ok_or_else(|| BackendError::Tool {
                command: "qemu-img info".into(),
                stderr: "no virtual-size in its answer".into(),
            })
    }

    async fn fresh_disk(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
    ) -> Result<(), BackendError> {
        let disk = dir.disk();
        let tmp = disk.with_extension("qcow2.new");
        let _ = std::fs::remove_file(&tmp);
        let base = image.disk().display().to_string();
        let tmp_s = tmp.display().to_string();
        let mut args = vec![
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &tmp_s,
        ];
        let size = spec.disk_gib.map(|g| format!("{g}G"));
        if let Some(size) = &size {
            args.push(size);
        }
        qemu_img(&args).await?;
        // rename(2) is atomic: a crash leaves the old overlay or the new one.
        std::fs::rename(&tmp, &disk).map_err(io_err("rename", &tmp))
    }

    async fn snapshot_disk(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError> {
        let disk = dir.disk().display().to_string();
        // Replace semantics, as savevm has: drop an old one of that name first.
        if qemu_img_snapshots(&disk)
            .await?
            .iter()
            .any(|s| s == name.as_str())
        {
            qemu_img(&["snapshot", "-d", name.as_str(), &disk]).await?;
        }
        qemu_img(&["snapshot", "-c", name.as_str(), &disk])
            .await
            .map(drop)
    }

    async fn revert_disk(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError> {
        let disk = dir.disk().display().to_string();
        qemu_img(&["snapshot", "-a", name.as_str(), &disk])
            .await
            .map(drop)
    }

    async fn delete_snapshot(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError> {
        let disk = dir.disk().display().to_string();
        if !qemu_img_snapshots(&disk)
            .await?
            .iter()
            .any(|s| s == name.as_str())
        {
            return Ok(());
        }
        qemu_img(&["snapshot", "-d", name.as_str(), &disk])
            .await
            .map(drop)
    }

    async fn list_snapshots(&self, dir: &VmDir) -> Result<Vec<(String, bool)>, BackendError> {
        if !dir.disk().exists() {
            return Ok(Vec::new());
        }
        qemu_img_snapshot_list(&dir.disk().display().to_string()).await
    }

    async fn start(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
        restore: Option<&SnapshotName>,
        shares: &[SharedFolder],
    ) -> Result<Box<dyn Instance>, BackendError> {
        for stale in [
            dir.qmp_socket(),
            dir.serial_socket(),
            dir.net_socket(),
            dir.agent_socket(),
            dir.pid_file(),
        ] {
            let _ = std::fs::remove_file(stale);
        }
        let log = std::fs::File::create(dir.vmm_log()).map_err(io_err("create", &dir.vmm_log()))?;
        let log2 = log.try_clone().map_err(io_err("clone", &dir.vmm_log()))?;
        let arch = guest_arch(image);
        let binary = arch.qemu_system();
        let accel = self.accel_for(arch);
        let mut command = tokio::process::Command::new(binary);
        command
            .args(self.args(dir, spec, image, restore, shares))
            .current_dir(dir.root())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Own process group: a Ctrl-C meant for the supervisor does not hit
            // the VMM; the supervisor stops its VMs itself.
            .process_group(0);
        self.jail.apply(command.as_std_mut());
        let child = command.spawn().map_err(|source| BackendError::Io {
            action: "spawn",
            path: binary.into(),
            source,
        })?;
        let child_pid = child.id().unwrap_or_default();
        let exit = ExitWatch::child(child);
        // With pid namespaces the VMM is the child's child; the VM's pid is
        // the VMM's own (host) pid either way.
        let pid = match self.jail.vmm_pid(child_pid).await {
            Ok(pid) => pid,
            Err(e) => {
                let _ = process::kill_and_wait(child_pid).await;
                return Err(BackendError::Jail(e));
            }
        };
        std::fs::write(dir.pid_file(), format!("{pid}\n"))
            .map_err(io_err("write", &dir.pid_file()))?;
        let qmp = match self.connect_qmp(dir, &exit).await {
            Ok(qmp) => qmp,
            Err(e) => {
                let _ = process::kill_and_wait(pid).await;
                return Err(e);
            }
        };
        tracing::debug!(vm = %spec.name, pid, accel = accel.qemu_name(), %arch, "qemu started");
        Ok(Box::new(QemuInstance {
            pid,
            accel: accel.qemu_name().to_string(),
            qmp: Some(qmp),
            exit,
        }))
    }

    async fn adopt(
        &self,
        dir: &VmDir,
        pid: u32,
    ) -> Result<Option<Box<dyn Instance>>, BackendError> {
        let qmp_path = dir.qmp_socket().display().to_string();
        let ours =
            process::is_alive(pid) && process::cmdline(pid).is_some_and(|c| c.contains(&qmp_path));
        if !ours {
            return Ok(None);
        }
        let exit = ExitWatch::foreign(pid);
        let qmp = match Qmp::connect(&dir.qmp_socket()).await {
            Ok(qmp) => qmp,
            Err(e) => {
                tracing::warn!(pid, error = %e, "VMM alive but its QMP socket does not answer");
                return Ok(None);
            }
        };
        let accel = process::cmdline(pid)
            .and_then(|c| {
                c.split_whitespace()
                    .skip_while(|a| *a != "-accel")
                    .nth(1)
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".to_string());
        Ok(Some(Box::new(QemuInstance {
            pid,
            accel,
            qmp: Some(qmp),
            exit,
        })))
    }

    async fn kill_strays(&self, dir: &VmDir, keep: Option<u32>) -> Vec<u32> {
        let needle = dir.qmp_socket().display().to_string();
        let mut killed = Vec::new();
        for pid in process::processes_matching(&needle) {
            if Some(pid) == keep || pid == std::process::id() {
                continue;
            }
            if process::kill_and_wait(pid).await.is_ok() {
                killed.push(pid);
            }
        }
        killed
    }
}

struct QemuInstance {
    pid: u32,
    accel: String,
    qmp: Option<Qmp>,
    exit: ExitWatch,
}

impl QemuInstance {
    /// Runs a human-monitor command (savevm, loadvm, delvm are HMP-only in a
    /// synchronous form). HMP reports failures as text, success as nothing.
    async fn hmp(&mut self, command_line: &str) -> Result<(), BackendError> {
        let qmp = self.qmp.as_mut().ok_or_else(|| BackendError::Monitor {
            command: command_line.to_string(),
            message: "the VMM is stopping".to_string(),
        })?;
        let answer = qmp
            .execute(
                "human-monitor-command",
                Some(serde_json::json!({ "command-line": command_line })),
            )
            .await?;
        let text = answer.as_str().unwrap_or_default().trim();
        if text.is_empty() {
            Ok(())
        } else {
            Err(BackendError::Monitor {
                command: command_line.to_string(),
                message: text.to_string(),
            })
        }
    }
}

#[async_trait]
impl Instance for QemuInstance {
    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn accel(&self) -> &str {
        &self.accel
    }

    async fn exited(&mut self) -> VmExit {
        self.exit.wait().await
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        if self.exit.has_exited() {
            return Ok(());
        }
        if let Some(mut qmp) = self.qmp.take() {
            // `quit` answers and then closes the socket; either outcome is fine.
            let _ = qmp.execute("quit", None).await;
        }
        if !self.exit.wait_timeout(QUIT_WAIT).await {
            tracing::warn!(pid = self.pid, "VMM ignored quit; killing it");
            process::send_kill(self.pid)?;
            self.exit.wait_timeout(QUIT_WAIT).await;
        }
        Ok(())
    }

    async fn save_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError> {
        // savevm pauses the guest, writes RAM + device state into the qcow2
        // file next to an internal disk snapshot, and resumes it.
        self.hmp(&format!("savevm {name}")).await
    }

    async fn restore_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError> {
        self.hmp(&format!("loadvm {name}")).await?;
        // loadvm leaves a VM running if it was running; make sure it is.
        if let Some(qmp) = self.qmp.as_mut() {
            qmp.execute("cont", None).await?;
        }
        Ok(())
    }

    async fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError> {
        self.hmp(&format!("delvm {name}")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawpen_api::VmName;

    fn image(arch: &str) -> Image {
        crate::vm::backend::test_image(arch)
    }

    fn demo_spec() -> VmSpec {
        VmSpec {
            name: VmName::parse("demo").unwrap(),
            image: "tiny".into(),
            cpus: 1,
            memory_mib: 256,
            disk_gib: None,
        }
    }

    fn args_for(accel: Accel, arch: &str) -> Vec<String> {
        let spec = demo_spec();
        let dir = VmDir::new("/vms/demo".into());
        QemuBackend::new(accel, Jail::off()).args(&dir, &spec, &image(arch), None, &[])
    }

    /// The value after `flag`'s first occurrence.
    fn after<'a>(args: &'a [String], flag: &str) -> &'a str {
        let i = args.iter().position(|a| a == flag).unwrap();
        &args[i + 1]
    }

    #[test]
    fn machine_cpu_and_agent_follow_the_guest_arch() {
        let x86 = args_for(Accel::Kvm, "x86_64");
        if Arch::host() == Some(Arch::X86_64) {
            assert_eq!(after(&x86, "-accel"), "kvm");
            assert_eq!(after(&x86, "-cpu"), "host");
        }
        assert_eq!(after(&x86, "-machine"), "q35");
        // x86: the agent is the second UART, no virtio-serial.
        assert_eq!(x86.iter().filter(|a| a.starts_with("chardev:")).count(), 2);
        assert!(!x86.iter().any(|a| a.contains("virtserialport")));

        let arm = args_for(Accel::Kvm, "aarch64");
        assert_eq!(after(&arm, "-machine"), "virt");
        if Arch::host() != Some(Arch::Aarch64) {
            // KVM cannot run another architecture's guest.
            assert_eq!(after(&arm, "-accel"), "tcg");
            assert_eq!(after(&arm, "-cpu"), "max,pauth-impdef=on");
        }
        assert_eq!(
            arm.iter().filter(|a| a.starts_with("chardev:")).count(),
            1,
            "one UART (the console) on virt"
        );
        assert!(arm.iter().any(|a| a == "virtio-serial-pci"));
        assert!(arm.iter().any(|a| a
            == &format!(
                "virtserialport,chardev=agent0,name={}",
                clawpen_vmimage::arch::AGENT_PORT_NAME
            )));
    }

    #[test]
    fn the_config_disk_is_a_read_only_raw_drive_after_the_root_disk() {
        let root = tempfile::tempdir().unwrap();
        let dir = VmDir::new(root.path().join("demo"));
        std::fs::create_dir_all(dir.root()).unwrap();
        let spec = demo_spec();
        let backend = QemuBackend::new(Accel::Tcg, Jail::off());
        for arch in ["x86_64", "aarch64"] {
            // Not written yet (never booted): no drive.
            let args = backend.args(&dir, &spec, &image(arch), None, &[]);
            assert_eq!(args.iter().filter(|a| *a == "-drive").count(), 1);
            std::fs::write(dir.guest_config_disk(), [0u8; 4096]).unwrap();
            let args = backend.args(&dir, &spec, &image(arch), None, &[]);
            let drives: Vec<&String> = args
                .iter()
                .zip(&args[1..])
                .filter(|(flag, _)| *flag == "-drive")
                .map(|(_, value)| value)
                .collect();
            assert_eq!(drives.len(), 2, "{arch}");
            assert!(drives[0].contains("disk.qcow2"), "root first: vda");
            assert_eq!(
                drives[1],
                &format!(
                    "file={},if=virtio,format=raw,readonly=on",
                    dir.guest_config_disk().display()
                )
            );
            // Nothing else carries the config: no fw_cfg, no key in argv.
            assert!(!args.iter().any(|a| a.contains("fw_cfg")));
            std::fs::remove_file(dir.guest_config_disk()).unwrap();
        }
    }

    #[test]
    fn snapshot_table_is_parsed() {
        let out = "Snapshot list:\n\
ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT\n\
1         clean             47.4 MiB 2026-11-24 10:31:15 00:00:06.811           --\n\
2         disk-only            0 B 2026-11-24 10:32:15 00:00:00.000           --\n";
        assert_eq!(
            parse_snapshot_table(out),
            vec![
                ("clean".to_string(), true),
                ("disk-only".to_string(), false)
            ]
        );
        assert!(parse_snapshot_table("").is_empty());
    }
}
