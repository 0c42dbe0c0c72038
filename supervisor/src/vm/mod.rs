//! VM lifecycle: one task per VM owns its VMM and serialises every command for
//! that VM; the [`VmManager`] maps names to those tasks.
//!
//! States (DESIGN.md): `Created → Starting → Running → Stopping → Stopped`,
//! `Resetting`, `Failed{reason}`. Every change is written to the store before
//! it is announced (watch channel + event bus).

pub mod backend;
pub mod dir;
pub mod serial;
mod task;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use clawpen_api::{ResetRequest, VmInfo, VmName, VmSpec, VmState};
use clawpen_vmimage::ImageStore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::events::EventBus;
use crate::paths::StateDir;
use crate::store::{Store, StoreError};
use backend::{BackendError, Hypervisor};
use dir::{VmDir, VmDirError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no VM named {0}")]
    NotFound(VmName),
    #[error("VM {name} is {state}; {wanted} needs it {needs}")]
    Conflict {
        name: VmName,
        state: VmState,
        wanted: &'static str,
        needs: &'static str,
    },
    #[error("VM {0} already exists")]
    Exists(VmName),
    #[error("image {image} of VM {name} is not in the image store")]
    NoImage { name: VmName, image: String },
    #[error("image store: {0}")]
    Image(#[from] clawpen_vmimage::ImageError),
    #[error("VM {name}: {source}")]
    Backend { name: VmName, source: BackendError },
    #[error("VM {name} did not come up: {reason}")]
    Boot { name: VmName, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Dir(#[from] VmDirError),
    #[error("VM {0}'s task has stopped (supervisor shutting down)")]
    TaskGone(VmName),
}

/// A command for one VM's task; the answer comes back on `reply`.
pub(crate) enum VmCommand {
    Start(oneshot::Sender<Result<VmInfo, VmError>>),
    Stop(oneshot::Sender<Result<VmInfo, VmError>>),
    Reset(ResetRequest, oneshot::Sender<Result<VmInfo, VmError>>),
    /// Supervisor exit: stop the VMM, record `Stopped`, end the task.
    Shutdown(oneshot::Sender<Result<VmInfo, VmError>>),
}

/// Everything a VM task needs from the supervisor.
pub struct VmContext {
    pub store: Arc<Store>,
    pub events: EventBus,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub images: ImageStore,
    pub state_dir: StateDir,
}

#[derive(Clone)]
struct VmHandle {
    commands: mpsc::Sender<VmCommand>,
    info: watch::Receiver<VmInfo>,
}

pub struct VmManager {
    ctx: Arc<VmContext>,
    // Never held across an await: lookups clone the handle out.
    vms: RwLock<BTreeMap<VmName, VmHandle>>,
}

impl VmManager {
    /// Loads every VM from the store and brings each one to a true state:
    /// a VMM left running by a previous supervisor is re-adopted when the VM
    /// was `Running`, every other leftover VMM process is killed, and VMs that
    /// were mid-command are recorded as `Stopped`.
    pub async fn recover(ctx: Arc<VmContext>) -> Result<Arc<Self>, VmError> {
        let manager = Arc::new(Self {
            ctx: ctx.clone(),
            vms: RwLock::new(BTreeMap::new()),
        });
        for record in ctx.store.vms()? {
            let name = record.spec.name.clone();
            let dir = VmDir::new(ctx.state_dir.vm(&name));
            let instance = match (record.state.clone(), record.pid) {
                (VmState::Running, Some(pid)) => {
                    ctx.hypervisor
                        .adopt(&dir, pid)
                        .await
                        .map_err(|source| VmError::Backend {
                            name: name.clone(),
                            source,
                        })?
                }
                _ => None,
            };
            let keep = instance.as_ref().and_then(|i| i.pid());
            let killed = ctx.hypervisor.kill_strays(&dir, keep).await;
            if !killed.is_empty() {
                tracing::warn!(vm = %name, ?killed, "killed VMM processes left by a crash");
            }
            let state = match (&instance, &record.state) {
                (Some(_), _) => VmState::Running,
                (None, VmState::Created) => VmState::Created,
                (None, VmState::Failed { reason }) => VmState::Failed {
                    reason: reason.clone(),
                },
                (None, _) => VmState::Stopped,
            };
            if instance.is_some() {
                tracing::info!(vm = %name, pid = ?keep, "re-adopted running VM");
            }
            let accel = instance.as_ref().map(|i| i.accel().to_string());
            ctx.store.set_state(&name, &state, keep, accel.as_deref())?;
            let info = VmInfo {
                spec: record.spec,
                state,
                pid: keep,
                accel,
            };
            manager.spawn_task(info, dir, instance);
        }
        Ok(manager)
    }

    fn spawn_task(&self, info: VmInfo, dir: VmDir, instance: Option<Box<dyn backend::Instance>>) {
        let name = info.spec.name.clone();
        let (handle, task) = task::VmTask::new(self.ctx.clone(), info, dir, instance);
        tokio::spawn(task.run());
        self.vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, handle);
    }

    /// Registers a new VM (directory, config, store row) in state `Created`.
    pub fn create(&self, spec: VmSpec) -> Result<VmInfo, VmError> {
        if self.ctx.images.get(&spec.image)?.is_none() {
            return Err(VmError::NoImage {
                name: spec.name.clone(),
                image: spec.image.clone(),
            });
        }
        if self.handle(&spec.name).is_ok() {
            return Err(VmError::Exists(spec.name));
        }
        let dir = VmDir::new(self.ctx.state_dir.vm(&spec.name));
        dir.create(&spec)?;
        let record = self.ctx.store.insert_vm(&spec).map_err(|e| match e {
            StoreError::Exists(name) => VmError::Exists(name),
            other => other.into(),
        })?;
        let info = record.info();
        self.spawn_task(info.clone(), dir, None);
        Ok(info)
    }

    fn handle(&self, name: &VmName) -> Result<VmHandle, VmError> {
        self.vms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| VmError::NotFound(name.clone()))
    }

    pub fn get(&self, name: &VmName) -> Result<VmInfo, VmError> {
        Ok(self.handle(name)?.info.borrow().clone())
    }

    pub fn list(&self) -> Vec<VmInfo> {
        self.vms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|h| h.info.borrow().clone())
            .collect()
    }

    async fn send(
        &self,
        name: &VmName,
        make: impl FnOnce(oneshot::Sender<Result<VmInfo, VmError>>) -> VmCommand,
    ) -> Result<VmInfo, VmError> {
        let handle = self.handle(name)?;
        let (reply, answer) = oneshot::channel();
        handle
            .commands
            .send(make(reply))
            .await
            .map_err(|_| VmError::TaskGone(name.clone()))?;
        answer.await.map_err(|_| VmError::TaskGone(name.clone()))?
    }

    pub async fn start(&self, name: &VmName) -> Result<VmInfo, VmError> {
        self.send(name, VmCommand::Start).await
    }

    pub async fn stop(&self, name: &VmName) -> Result<VmInfo, VmError> {
        self.send(name, VmCommand::Stop).await
    }

    pub async fn reset(&self, name: &VmName, request: ResetRequest) -> Result<VmInfo, VmError> {
        self.send(name, |reply| VmCommand::Reset(request, reply))
            .await
    }

    /// Stops every VM (supervisor exit). Errors are logged, not returned: one
    /// stuck VM must not keep the others running.
    pub async fn shutdown(&self) {
        let names: Vec<VmName> = self
            .vms
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let stops = names.iter().map(|name| async move {
            if let Err(e) = self.send(name, VmCommand::Shutdown).await {
                tracing::warn!(vm = %name, error = %e, "stop at shutdown failed");
            }
        });
        futures::future::join_all(stops).await;
    }
}
