//! VM lifecycle: one task per VM owns its VMM and serialises every command for
//! that VM; the [`VmManager`] maps names to those tasks.
//!
//! States: `Created → Starting → Running → Stopping → Stopped`,
//! `Resetting`, `Failed{reason}`. Every change is written to the store before
//! it is announced (watch channel + event bus).

pub mod agent;
pub mod backend;
pub mod dir;
pub mod guest_config;
pub mod serial;
mod task;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use clawpen_api::{
    AddShareRequest, CreateVmRequest, ResetRequest, RestoreRequest, ShareTag, SharedFolder,
    SnapshotInfo, SnapshotName, VmInfo, VmName, VmSpec, VmState,
};
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
    #[error(transparent)]
    GuestConfig(#[from] guest_config::GuestConfigError),
    #[error("VM {0}'s task has stopped (supervisor shutting down)")]
    TaskGone(VmName),
    #[error("VM {name} has no snapshot named {snapshot}")]
    NoSnapshot {
        name: VmName,
        snapshot: SnapshotName,
    },
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The error of one reset answered to several callers: resets queued
    /// behind a running reset get its answer ("two clicks, one reset"). A
    /// `VmError` is not `Clone` (its sources are I/O errors and the like), so
    /// the callers share it; it reads and maps to HTTP exactly as the error
    /// inside, so every caller gets the same status and code (a refused reset
    /// is a 409 for all of them, not a 500 for all but the first).
    #[error(transparent)]
    Shared(Arc<VmError>),
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
    #[error("VM {name} has no share tagged {tag}")]
    NoShare { name: VmName, tag: ShareTag },
    #[error("VM {name} already has a share tagged {tag}")]
    ShareExists { name: VmName, tag: ShareTag },
    #[error("VM {name}'s share {tag} cannot be attached: {source}; restore the folder, or remove the share")]
    ShareChanged {
        name: VmName,
        tag: ShareTag,
        source: crate::share::ShareError,
    },
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
}

type Reply<T> = oneshot::Sender<Result<T, VmError>>;

/// A command for one VM's task; the answer comes back on `reply`.
pub(crate) enum VmCommand {
    Start(Reply<VmInfo>),
    Stop(Reply<VmInfo>),
    Reset(ResetRequest, Reply<VmInfo>),
    TakeSnapshot(SnapshotName, Reply<SnapshotInfo>),
    RestoreSnapshot(SnapshotName, RestoreRequest, Reply<VmInfo>),
    DeleteSnapshot(SnapshotName, Reply<()>),
    /// Stop, remove the folder and the store rows, end the task.
    Delete(Reply<()>),
    AddShare(SharedFolder, Reply<SharedFolder>),
    RemoveShare(ShareTag, Reply<()>),
    /// Supervisor exit: stop the VMM, record `Stopped`, end the task.
    Shutdown(Reply<VmInfo>),
}

/// Defaults and limits for `vm create`.
pub const DEFAULT_CPUS: u32 = 1;
pub const DEFAULT_MEMORY_MIB: u32 = 256;
const MAX_CPUS: u32 = 64;
const MIN_MEMORY_MIB: u32 = 64;
const MAX_MEMORY_MIB: u32 = 1024 * 1024;
const MAX_DISK_GIB: u32 = 64 * 1024;

/// Everything a VM task needs from the supervisor.
pub struct VmContext {
    pub store: Arc<Store>,
    pub events: EventBus,
    pub hypervisor: Arc<dyn Hypervisor>,
    pub images: ImageStore,
    pub state_dir: StateDir,
    /// Each running VM's network goes through its egress gateway.
    pub egress: Arc<crate::egress::Egress>,
    /// Which host folders may be shared.
    pub share_scope: crate::share::ShareScope,
    /// The inference service's key table: each VM's key maps to its name
    /// while the VM exists.
    pub inference_keys: clawpen_inference::keys::ApiKeys,
    /// The model guests are told to use (set once inference is configured).
    pub served_model: RwLock<guest_config::ServedModel>,
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
            let key = ctx.store.ensure_inference_key(&name)?;
            ctx.inference_keys.insert(&key, name.as_str());
            let dir = VmDir::new(ctx.state_dir.vm(&name));
            // A live VMM is the truth for every state but `Stopping` (the user
            // asked for it to go): re-adopt it. A crash mid-reset thus leaves
            // a running VM, before or after the reset, never a broken one.
            let instance =
                match (&record.state, record.pid) {
                    (VmState::Stopping, _) | (_, None) => None,
                    (_, Some(pid)) => ctx.hypervisor.adopt(&dir, pid).await.map_err(|source| {
                        VmError::Backend {
                            name: name.clone(),
                            source,
                        }
                    })?,
                };
            let keep = instance.as_ref().and_then(|i| i.pid());
            let killed = ctx.hypervisor.kill_strays(&dir, keep).await;
            if !killed.is_empty() {
                tracing::warn!(vm = %name, ?killed, "killed VMM processes left by a crash");
            }
            if instance.is_none() {
                dir.remove_runtime_files();
            }
            manager.reconcile_snapshots(&name, &dir).await?;
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

    /// Makes the snapshot index agree with the snapshots stored with the disk
    /// (a crash can fall between saving a snapshot and recording it).
    async fn reconcile_snapshots(&self, name: &VmName, dir: &VmDir) -> Result<(), VmError> {
        let on_disk = match self.ctx.hypervisor.list_snapshots(dir).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(vm = %name, error = %e, "cannot list snapshots; index kept");
                return Ok(());
            }
        };
        let indexed = self.ctx.store.snapshots(name)?;
        for snapshot in &indexed {
            if !on_disk.iter().any(|(tag, _)| tag == snapshot.name.as_str()) {
                self.ctx.store.delete_snapshot(name, &snapshot.name)?;
            }
        }
        for (tag, has_memory) in on_disk {
            let Ok(snapshot) = SnapshotName::parse(&tag) else {
                continue;
            };
            if !indexed.iter().any(|s| s.name == snapshot) {
                self.ctx.store.put_snapshot(
                    name,
                    &SnapshotInfo {
                        name: snapshot,
                        has_memory,
                        created_unix: 0,
                    },
                )?;
            }
        }
        Ok(())
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

    /// Checks a create request completely before anything is written.
    pub async fn validate(&self, request: CreateVmRequest) -> Result<VmSpec, VmError> {
        let invalid = |field, message: String| VmError::Invalid { field, message };
        let name = VmName::parse(&request.name).map_err(|e| invalid("name", e.to_string()))?;
        let cpus = request.cpus.unwrap_or(DEFAULT_CPUS);
        if !(1..=MAX_CPUS).contains(&cpus) {
            return Err(invalid(
                "cpus",
                format!("cpus must be 1 to {MAX_CPUS}, not {cpus}"),
            ));
        }
        let memory_mib = request.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(invalid(
                "memory_mib",
                format!(
                    "memory must be {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} MiB, not {memory_mib}"
                ),
            ));
        }
        let image = self.ctx.images.get(&request.image)?.ok_or_else(|| {
            invalid(
                "image",
                format!("no image named {:?} in the image store", request.image),
            )
        })?;
        if let Some(why) = backend::unsupported_image(self.ctx.hypervisor.name(), &image) {
            return Err(invalid("image", why));
        }
        if let Some(disk_gib) = request.disk_gib {
            let base = self
                .ctx
                .hypervisor
                .base_disk_size(&image)
                .await
                .map_err(|source| VmError::Backend {
                    name: name.clone(),
                    source,
                })?;
            let wanted = u64::from(disk_gib) << 30;
            if disk_gib == 0 || disk_gib > MAX_DISK_GIB || wanted < base {
                return Err(invalid(
                    "disk_gib",
                    format!(
                        "disk must be at least the base image's {} MiB and at most {MAX_DISK_GIB} GiB, not {disk_gib} GiB",
                        base >> 20
                    ),
                ));
            }
        }
        if self.handle(&name).is_ok() {
            return Err(VmError::Exists(name));
        }
        Ok(VmSpec {
            name,
            image: request.image,
            cpus,
            memory_mib,
            disk_gib: request.disk_gib,
        })
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
        let record = self.ctx.store.insert_vm(&spec).map_err(|e| match e {
            StoreError::Exists(name) => VmError::Exists(name),
            other => other.into(),
        })?;
        let made = dir
            .create(&spec)
            .map_err(VmError::from)
            .and_then(|()| Ok(self.ctx.store.ensure_inference_key(&spec.name)?));
        let key = match made {
            Ok(key) => key,
            Err(e) => {
                // Keep "bad input changes nothing": undo the row.
                let _ = self.ctx.store.delete_vm(&spec.name);
                return Err(e);
            }
        };
        self.ctx.inference_keys.insert(&key, spec.name.as_str());
        let info = record.info();
        self.spawn_task(info.clone(), dir, None);
        Ok(info)
    }

    /// Stops and removes a VM with its folder and snapshots.
    pub async fn delete(&self, name: &VmName) -> Result<(), VmError> {
        self.send(name, VmCommand::Delete).await?;
        self.ctx.inference_keys.remove_client(name.as_str());
        self.vms
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    pub fn snapshots(&self, name: &VmName) -> Result<Vec<SnapshotInfo>, VmError> {
        self.handle(name)?;
        Ok(self.ctx.store.snapshots(name)?)
    }

    pub async fn take_snapshot(
        &self,
        name: &VmName,
        snapshot: SnapshotName,
    ) -> Result<SnapshotInfo, VmError> {
        self.send(name, |reply| VmCommand::TakeSnapshot(snapshot, reply))
            .await
    }

    pub async fn restore_snapshot(
        &self,
        name: &VmName,
        snapshot: SnapshotName,
        request: RestoreRequest,
    ) -> Result<VmInfo, VmError> {
        self.send(name, |reply| {
            VmCommand::RestoreSnapshot(snapshot, request, reply)
        })
        .await
    }

    pub async fn delete_snapshot(
        &self,
        name: &VmName,
        snapshot: SnapshotName,
    ) -> Result<(), VmError> {
        self.send(name, |reply| VmCommand::DeleteSnapshot(snapshot, reply))
            .await
    }

    /// Checks the host path and tag, then attaches the share (VM stopped).
    pub async fn add_share(
        &self,
        name: &VmName,
        request: AddShareRequest,
    ) -> Result<SharedFolder, VmError> {
        let tag = ShareTag::parse(&request.tag).map_err(|e| VmError::Invalid {
            field: "tag",
            message: e.to_string(),
        })?;
        self.handle(name)?;
        let path = self.ctx.share_scope.check(&request.host_path)?;
        let share = SharedFolder {
            tag,
            host_path: path.display().to_string(),
            read_only: !request.rw,
        };
        self.send(name, |reply| VmCommand::AddShare(share, reply))
            .await
    }

    pub async fn remove_share(&self, name: &VmName, tag: ShareTag) -> Result<(), VmError> {
        self.send(name, |reply| VmCommand::RemoveShare(tag, reply))
            .await
    }

    /// Tells guests booted from now on which model to use.
    pub fn set_served_model(&self, served: guest_config::ServedModel) {
        *self
            .ctx
            .served_model
            .write()
            .unwrap_or_else(|p| p.into_inner()) = served;
    }

    /// The VM's inference API key (what its guest sends to the service).
    pub fn inference_key(&self, name: &VmName) -> Result<String, VmError> {
        self.handle(name)?;
        Ok(self.ctx.store.ensure_inference_key(name)?)
    }

    pub fn shares(&self, name: &VmName) -> Result<Vec<SharedFolder>, VmError> {
        self.handle(name)?;
        Ok(self.ctx.store.shares(name)?)
    }

    /// The VM's directory (for logs).
    pub fn dir(&self, name: &VmName) -> Result<VmDir, VmError> {
        self.handle(name)?;
        Ok(VmDir::new(self.ctx.state_dir.vm(name)))
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

    async fn send<T>(
        &self,
        name: &VmName,
        make: impl FnOnce(Reply<T>) -> VmCommand,
    ) -> Result<T, VmError> {
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
