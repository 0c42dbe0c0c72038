//! macOS only: [`VzBackend`], the [`Hypervisor`] on Virtualization.framework.
//! Compile-checked in CI for `aarch64-apple-darwin`; not run there (no Mac).
//!
//! The VM lives in the supervisor's process, so there is no VMM pid, nothing
//! to adopt after a supervisor restart (its VMs ended with it) and no strays
//! to kill.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use clawpen_api::{SharedFolder, SnapshotName, VmSpec};
use clawpen_vmimage::Image;

use super::agent_bridge::AgentBridge;
use super::disk::{Apfs, VzDisks, VzPaths, RAW_BASE};
use super::machine::{Machine, RunState};
use super::{objc, spec};
use crate::egress::{datagram_pair, LinkSource};
use crate::vm::backend::{BackendError, Hypervisor, Instance, VmExit};
use crate::vm::dir::VmDir;

/// How often a running VM's state is read to notice that it stopped.
const EXIT_POLL: Duration = Duration::from_millis(250);

fn vz(e: impl std::fmt::Display) -> BackendError {
    BackendError::Vz(e.to_string())
}

#[derive(Default)]
pub struct VzBackend;

impl VzBackend {
    pub fn new() -> Self {
        Self
    }

    /// The image's raw base (VZ reads no qcow2), converted once next to the
    /// qcow2 base with `qemu-img` (Homebrew's `qemu`), then only cloned.
    async fn raw_base(&self, image: &Image) -> Result<PathBuf, BackendError> {
        let raw = image.dir.join(RAW_BASE);
        if raw.is_file() {
            return Ok(raw);
        }
        let tmp = VzPaths::temp(&raw);
        let out = tokio::process::Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(image.disk())
            .arg(&tmp)
            .output()
            .await
            .map_err(|source| BackendError::Io {
                action: "run qemu-img for",
                path: image.disk(),
                source,
            })?;
        if !out.status.success() {
            return Err(BackendError::Tool {
                command: format!("qemu-img convert -O raw {}", image.disk().display()),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        std::fs::rename(&tmp, &raw).map_err(|source| BackendError::Io {
            action: "rename",
            path: tmp,
            source,
        })?;
        Ok(raw)
    }

    async fn disks<T: Send + 'static>(
        dir: &VmDir,
        work: impl FnOnce(&VzDisks<'_, Apfs>) -> Result<T, super::disk::VzDiskError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let paths = VzPaths::new(dir.root());
        tokio::task::spawn_blocking(move || {
            work(&VzDisks {
                paths: &paths,
                cloner: &Apfs,
            })
        })
        .await
        .map_err(vz)?
        .map_err(BackendError::from)
    }
}

#[async_trait]
impl Hypervisor for VzBackend {
    fn name(&self) -> &'static str {
        "vz"
    }

    /// Shares are `VZVirtioFileSystemDeviceConfiguration`s: virtio-fs.
    fn guest_share_fs(&self) -> clawpen_vmimage::ShareFs {
        clawpen_vmimage::ShareFs::Virtiofs
    }

    async fn base_disk_size(&self, image: &Image) -> Result<u64, BackendError> {
        let raw = self.raw_base(image).await?;
        std::fs::metadata(&raw)
            .map(|m| m.len())
            .map_err(|source| BackendError::Io {
                action: "stat",
                path: raw,
                source,
            })
    }

    async fn fresh_disk(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
    ) -> Result<(), BackendError> {
        let raw = self.raw_base(image).await?;
        let size = spec.disk_gib.map(|gib| u64::from(gib) << 30);
        Self::disks(dir, move |d| d.fresh(&raw, size)).await
    }

    async fn start(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
        restore: Option<&SnapshotName>,
        shares: &[SharedFolder],
    ) -> Result<Box<dyn Instance>, BackendError> {
        let paths = VzPaths::new(dir.root());
        let config = if spec::is_macos_image(&image.dir) {
            spec::describe_macos(spec, &image.dir, &paths, shares)?
        } else {
            spec::describe_linux(spec, image, &paths, shares, spec::host_arch())?
        };
        let (gateway, vmm) = datagram_pair().map_err(|source| BackendError::Io {
            action: "create the network socketpair for",
            path: dir.root().to_path_buf(),
            source,
        })?;
        // The agent port's socketpair: the VM gets one end, the bridge
        // serves the other on `agent.sock`, where QEMU VMs have theirs.
        let (agent_vmm, agent) = match &config.agent {
            Some(port) => {
                let (host, vmm) =
                    std::os::unix::net::UnixStream::pair().map_err(|source| BackendError::Io {
                        action: "create the agent socketpair for",
                        path: dir.root().to_path_buf(),
                        source,
                    })?;
                let bridge =
                    AgentBridge::serve(&port.socket, host).map_err(|source| BackendError::Io {
                        action: "serve the guest agent on",
                        path: port.socket.clone(),
                        source,
                    })?;
                (Some(vmm.into()), Some(bridge))
            }
            None => (None, None),
        };
        // The configuration object is not `Send`: it is dropped before the
        // first await (the VM keeps its own copy).
        let machine = {
            let built = objc::build(&config, vmm.into(), agent_vmm).map_err(vz)?;
            Machine::new(&built, &format!("clawpen.vz.{}", spec.name))
        };
        if let Some(name) = restore {
            let state = paths.snapshot_state(name);
            let name = name.clone();
            Self::disks(dir, move |d| d.revert(&name)).await?;
            machine.restore(state).await.map_err(vz)?;
            machine.resume().await.map_err(vz)?;
        } else {
            machine.start().await.map_err(vz)?;
        }
        Ok(Box::new(VzInstance {
            machine,
            dir: dir.clone(),
            link: gateway,
            _agent: agent,
        }))
    }

    async fn snapshot_disk(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError> {
        let name = name.clone();
        Self::disks(dir, move |d| d.snapshot(&name)).await
    }

    async fn revert_disk(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError> {
        let name = name.clone();
        Self::disks(dir, move |d| d.revert(&name)).await
    }

    async fn delete_snapshot(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError> {
        let name = name.clone();
        Self::disks(dir, move |d| d.delete(&name)).await
    }

    async fn list_snapshots(&self, dir: &VmDir) -> Result<Vec<(String, bool)>, BackendError> {
        Self::disks(dir, |d| d.list()).await
    }

    async fn adopt(
        &self,
        _dir: &VmDir,
        _pid: u32,
    ) -> Result<Option<Box<dyn Instance>>, BackendError> {
        // The VM ran inside the previous supervisor process and ended with it.
        Ok(None)
    }

    async fn kill_strays(&self, _dir: &VmDir, _keep: Option<u32>) -> Vec<u32> {
        Vec::new()
    }
}

pub struct VzInstance {
    machine: Machine,
    dir: VmDir,
    /// The gateway's end of the network socketpair (the VM holds the other).
    link: std::os::unix::net::UnixDatagram,
    /// Serves the guest agent's port on `agent.sock` while the VM lives
    /// (the same port across warm restores: the VM object is kept).
    _agent: Option<AgentBridge>,
}

impl VzInstance {
    fn paths(&self) -> VzPaths {
        VzPaths::new(self.dir.root())
    }
}

fn state_tmp(path: &Path) -> PathBuf {
    VzPaths::temp(path)
}

#[async_trait]
impl Instance for VzInstance {
    fn pid(&self) -> Option<u32> {
        None
    }

    fn accel(&self) -> &str {
        "vz"
    }

    fn network(&self) -> Option<LinkSource> {
        self.link.try_clone().ok().map(LinkSource::Datagram)
    }

    async fn exited(&mut self) -> VmExit {
        loop {
            match self.machine.state().await {
                RunState::Stopped => {
                    return VmExit {
                        clean: true,
                        detail: "the guest stopped".into(),
                    }
                }
                RunState::Error => {
                    return VmExit {
                        clean: false,
                        detail: "Virtualization.framework reported an error state".into(),
                    }
                }
                _ => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        if self.machine.state().await == RunState::Stopped {
            return Ok(());
        }
        self.machine.stop().await.map_err(vz)
    }

    /// Pause, clone the disk, save the machine state (macOS 14+), resume: the
    /// disk clone and the memory state are of the same instant.
    async fn save_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError> {
        self.machine.pause().await.map_err(vz)?;
        let result = async {
            let n = name.clone();
            VzBackend::disks(&self.dir, move |d| d.snapshot(&n)).await?;
            let state = self.paths().snapshot_state(name);
            let tmp = state_tmp(&state);
            self.machine.save(tmp.clone()).await.map_err(vz)?;
            std::fs::rename(&tmp, &state).map_err(|source| BackendError::Io {
                action: "rename",
                path: tmp,
                source,
            })
        }
        .await;
        let resumed = self.machine.resume().await.map_err(vz);
        result.and(resumed)
    }

    /// Warm reset: stop, clone the snapshot's disk again, restore its memory
    /// state into the same VM object (same devices, same socketpair: the
    /// gateway stays attached), resume.
    async fn restore_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError> {
        let state = self.paths().snapshot_state(name);
        if !state.is_file() {
            return Err(BackendError::Vz(format!(
                "snapshot {name} has no memory state (disk only); a cold reset is needed"
            )));
        }
        self.stop().await?;
        let n = name.clone();
        VzBackend::disks(&self.dir, move |d| d.revert(&n)).await?;
        self.machine.restore(state).await.map_err(vz)?;
        self.machine.resume().await.map_err(vz)
    }

    async fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError> {
        let name = name.clone();
        VzBackend::disks(&self.dir, move |d| d.delete(&name)).await
    }
}
