//! The QEMU backend: spawns `qemu-system-x86_64`, drives it over QMP on a unix
//! socket in the VM directory, and keeps disks as qcow2 overlays on the
//! read-only base image.
//!
//! The VMM runs in its own process group with its output in `vmm.log`, so it
//! outlives a crashed supervisor; the next supervisor re-adopts it by pid
//! (checked against the command line, so a recycled pid is never mistaken for
//! it).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use clawpen_api::VmSpec;
use clawpen_vmimage::Image;

use super::accel::Accel;
use super::process::{self, ExitWatch};
use super::qmp::Qmp;
use super::{BackendError, Hypervisor, Instance, VmExit};
use crate::vm::dir::VmDir;

/// How long the VMM gets to open its QMP socket after spawning.
const CONTROL_SOCKET_WAIT: Duration = Duration::from_secs(15);
/// How long `quit` may take before the VMM is killed.
const QUIT_WAIT: Duration = Duration::from_secs(10);

pub struct QemuBackend {
    binary: String,
    accel: Accel,
}

impl QemuBackend {
    pub fn new(accel: Accel) -> Self {
        Self {
            binary: "qemu-system-x86_64".to_string(),
            accel,
        }
    }

    /// The full argument list for one VM. Public for tests and for people who
    /// want to see exactly what runs.
    pub fn args(&self, dir: &VmDir, spec: &VmSpec, image: &Image) -> Vec<String> {
        let p = |path: &Path| path.display().to_string();
        let mut args = vec![
            "-name".into(),
            format!("clawpen-{}", spec.name),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            self.accel.qemu_name().into(),
            "-cpu".into(),
            self.accel.qemu_cpu().into(),
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
            "-pidfile".into(),
            p(&dir.pid_file()),
        ];
        // No NIC until the egress gateway exists: the VM has no network at all,
        // which is the strictest possible default-deny.
        args.extend(["-nic".into(), "none".into()]);
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

    async fn fresh_disk(&self, dir: &VmDir, image: &Image) -> Result<(), BackendError> {
        let disk = dir.disk();
        let tmp = disk.with_extension("qcow2.new");
        let _ = std::fs::remove_file(&tmp);
        let base = image.disk();
        let output = tokio::process::Command::new("qemu-img")
            .arg("create")
            .args(["-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&tmp)
            .output()
            .await
            .map_err(io_err("run qemu-img for", &tmp))?;
        if !output.status.success() {
            return Err(BackendError::Tool {
                command: format!("qemu-img create -b {} {}", base.display(), tmp.display()),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        // rename(2) is atomic: a crash leaves the old overlay or the new one.
        std::fs::rename(&tmp, &disk).map_err(io_err("rename", &tmp))
    }

    async fn start(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
    ) -> Result<Box<dyn Instance>, BackendError> {
        for stale in [dir.qmp_socket(), dir.serial_socket(), dir.pid_file()] {
            let _ = std::fs::remove_file(stale);
        }
        let log = std::fs::File::create(dir.vmm_log()).map_err(io_err("create", &dir.vmm_log()))?;
        let log2 = log.try_clone().map_err(io_err("clone", &dir.vmm_log()))?;
        let child = tokio::process::Command::new(&self.binary)
            .args(self.args(dir, spec, image))
            .current_dir(dir.root())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Own process group: a Ctrl-C meant for the supervisor does not hit
            // the VMM; the supervisor stops its VMs itself.
            .process_group(0)
            .spawn()
            .map_err(|source| BackendError::Io {
                action: "spawn",
                path: self.binary.clone().into(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        let exit = ExitWatch::child(child);
        let qmp = match self.connect_qmp(dir, &exit).await {
            Ok(qmp) => qmp,
            Err(e) => {
                let _ = process::kill_and_wait(pid).await;
                return Err(e);
            }
        };
        tracing::debug!(vm = %spec.name, pid, accel = self.accel.qemu_name(), "qemu started");
        Ok(Box::new(QemuInstance {
            pid,
            accel: self.accel.qemu_name().to_string(),
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
}
