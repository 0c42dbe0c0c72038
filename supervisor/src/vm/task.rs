//! The task that owns one VM: its VMM instance, its state, its commands.
//!
//! Commands arrive on a channel and run one at a time, so two commands never
//! interleave on the same VMM; resets queued while a reset runs are answered
//! with that reset's result instead of running again ("two clicks, one
//! reset"), its error shared so that every caller gets the same kind. Reads
//! do not go through the task: the current [`VmInfo`] is published on a
//! watch channel, so a `GET` never waits behind a slow command.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clawpen_api::{
    Event, ShareTag, SharedFolder, SnapshotInfo, SnapshotName, VmInfo, VmName, VmState,
    CLEAN_SNAPSHOT,
};
use clawpen_vmimage::Image;
use tokio::sync::{mpsc, watch};

use super::agent;
use super::backend::{BackendError, Instance, VmExit};
use super::dir::VmDir;
use super::serial::wait_for_marker;
use super::{Reply, VmCommand, VmContext, VmError, VmHandle};
use crate::crash;

/// How long a guest may take from VMM start to its ready marker. TCG boots of
/// the test guest take about 5 s; this leaves room for a loaded machine.
const BOOT_LIMIT: Duration = Duration::from_secs(180);

/// How long a cold boot of `image` may take to print its ready marker: the
/// OpenClaw guest prints it only once its gateway answers, which under TCG
/// on a busy host takes minutes (the guest's own health wait, plus slack).
fn boot_limit(image: &str) -> Duration {
    use clawpen_vmimage::openclaw;
    if openclaw::is_openclaw_image(image) {
        Duration::from_secs(u64::from(openclaw::HEALTH_TIMEOUT_S + openclaw::READY_TIMEOUT_S) + 60)
    } else {
        BOOT_LIMIT
    }
}

/// Queue depth per VM; senders wait when it is full.
const COMMAND_QUEUE: usize = 16;

pub(super) struct VmTask {
    ctx: Arc<VmContext>,
    dir: VmDir,
    info: watch::Sender<VmInfo>,
    commands: mpsc::Receiver<VmCommand>,
    /// A command taken off the queue while coalescing resets, run next.
    pending: Option<VmCommand>,
    instance: Option<Box<dyn Instance>>,
    /// The egress gateway on the VMM's network socket, while a VMM runs.
    gateway: Option<crate::egress::GatewayHandle>,
}

enum Wake {
    Command(Option<VmCommand>),
    Exited(VmExit),
}

/// What the task does after a command.
enum Flow {
    Continue,
    End,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn clean() -> SnapshotName {
    SnapshotName::parse(CLEAN_SNAPSHOT).expect("valid snapshot name")
}

impl VmTask {
    pub(super) fn new(
        ctx: Arc<VmContext>,
        info: VmInfo,
        dir: VmDir,
        instance: Option<Box<dyn Instance>>,
    ) -> (VmHandle, Self) {
        let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (info, info_rx) = watch::channel(info);
        let handle = VmHandle {
            commands: tx,
            info: info_rx,
        };
        let task = Self {
            ctx,
            dir,
            info,
            commands,
            pending: None,
            instance,
            gateway: None,
        };
        (handle, task)
    }

    pub(super) async fn run(mut self) {
        // A VMM re-adopted from a previous supervisor needs its gateway again.
        if self.instance.is_some() {
            self.attach_gateway();
        }
        loop {
            let wake = match self.pending.take() {
                Some(command) => Wake::Command(Some(command)),
                None => {
                    let commands = &mut self.commands;
                    let instance = &mut self.instance;
                    let exited = async {
                        match instance {
                            Some(instance) => instance.exited().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        command = commands.recv() => Wake::Command(command),
                        exit = exited => Wake::Exited(exit),
                    }
                }
            };
            match wake {
                Wake::Command(None) => break,
                Wake::Command(Some(command)) => {
                    if let Flow::End = self.handle(command).await {
                        break;
                    }
                }
                Wake::Exited(exit) => self.on_exit(exit),
            }
        }
    }

    fn name(&self) -> VmName {
        self.info.borrow().spec.name.clone()
    }

    async fn handle(&mut self, command: VmCommand) -> Flow {
        match command {
            VmCommand::Start(reply) => {
                let result = if self.instance.is_some() {
                    Err(self.conflict("start", "stopped"))
                } else {
                    self.boot(VmState::Starting).await
                };
                let _ = reply.send(result);
            }
            VmCommand::Stop(reply) => {
                let result = if self.instance.is_none() {
                    Err(self.conflict("stop", "running"))
                } else {
                    self.stop_vmm().await
                };
                let _ = reply.send(result);
            }
            VmCommand::Reset(request, reply) => {
                let result = self.restore(&clean(), request.cold, true).await;
                let mut replies = vec![reply];
                replies.extend(self.take_queued_resets());
                answer_resets(result, replies);
            }
            VmCommand::RestoreSnapshot(name, request, reply) => {
                let _ = reply.send(self.restore(&name, request.cold, false).await);
            }
            VmCommand::TakeSnapshot(name, reply) => {
                let _ = reply.send(self.take_snapshot(&name).await);
            }
            VmCommand::DeleteSnapshot(name, reply) => {
                let _ = reply.send(self.delete_snapshot(&name).await);
            }
            VmCommand::AddShare(share, reply) => {
                let result = self
                    .change_shares(Some(share.clone()), None)
                    .map(|()| share);
                let _ = reply.send(result);
            }
            VmCommand::RemoveShare(tag, reply) => {
                let _ = reply.send(self.change_shares(None, Some(tag)));
            }
            VmCommand::Delete(reply) => {
                let result = self.delete().await;
                let done = result.is_ok();
                let _ = reply.send(result);
                if done {
                    return Flow::End;
                }
            }
            VmCommand::Shutdown(reply) => {
                let _ = reply.send(self.stop_vmm().await);
                return Flow::End;
            }
        }
        Flow::Continue
    }

    /// The replies of the resets queued while a reset ran: the user clicked
    /// twice, they get one reset. The first other command found is kept in
    /// `pending`, to run next, so commands keep their order.
    fn take_queued_resets(&mut self) -> Vec<Reply<VmInfo>> {
        let mut replies = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                VmCommand::Reset(_, reply) => replies.push(reply),
                other => {
                    self.pending = Some(other);
                    break;
                }
            }
        }
        replies
    }

    fn conflict(&self, wanted: &'static str, needs: &'static str) -> VmError {
        let info = self.info.borrow();
        VmError::Conflict {
            name: info.spec.name.clone(),
            state: info.state.clone(),
            wanted,
            needs,
        }
    }

    /// Writes the new state to the store, then announces it.
    fn record(&mut self, state: VmState) -> Result<VmInfo, VmError> {
        let pid = self.instance.as_ref().and_then(|i| i.pid());
        let accel = self.instance.as_ref().map(|i| i.accel().to_string());
        let mut info = self.info.borrow().clone();
        self.ctx
            .store
            .set_state(&info.spec.name, &state, pid, accel.as_deref())?;
        info.state = state.clone();
        info.pid = pid;
        info.accel = accel;
        self.info.send_replace(info.clone());
        tracing::info!(vm = %info.spec.name, state = %state, "state");
        self.ctx.events.publish(Event::VmState {
            name: info.spec.name.clone(),
            state,
        });
        Ok(info)
    }

    fn progress(&self, task: &str, step: &str, done: u64, total: u64) {
        self.ctx.events.publish(Event::Progress {
            task: format!("{}: {task}", self.name()),
            step: step.to_string(),
            done,
            total: Some(total),
        });
    }

    /// Records `Failed` with the error as reason and hands the error back.
    fn fail(&mut self, error: VmError) -> VmError {
        if let Err(store_error) = self.record(VmState::Failed {
            reason: error.to_string(),
        }) {
            tracing::error!(error = %store_error, "cannot record failure");
        }
        error
    }

    fn backend_error(&self, source: BackendError) -> VmError {
        VmError::Backend {
            name: self.name(),
            source,
        }
    }

    /// Starts the egress gateway for the VMM that just started (or was
    /// adopted). Without one the guest has no network, which is safe, so a
    /// failure is logged, not fatal.
    fn attach_gateway(&mut self) {
        let name = self.name();
        let link = self
            .instance
            .as_ref()
            .and_then(|i| i.network())
            .unwrap_or_else(|| crate::egress::LinkSource::Stream(self.dir.net_socket()));
        match self.ctx.egress.attach_link(&name, link) {
            Ok(gateway) => self.gateway = Some(gateway),
            Err(e) => tracing::error!(vm = %name, error = %e, "no egress gateway"),
        }
        // An agent image's gateway UI: reachable from this host only, via a
        // loopback forward (listed at /vms/NAME/forwards).
        let image = self.info.borrow().spec.image.clone();
        if clawpen_vmimage::openclaw::is_openclaw_image(&image) {
            let egress = self.ctx.egress.clone();
            tokio::spawn(async move {
                let port = clawpen_vmimage::openclaw::DEFAULT_GATEWAY_PORT;
                match egress.forward(&name, port).await {
                    Ok(addr) => tracing::info!(vm = %name, %addr, "agent gateway forwarded"),
                    Err(e) => {
                        tracing::warn!(vm = %name, error = %e, "no forward to the agent gateway")
                    }
                }
            });
        }
    }

    fn on_exit(&mut self, exit: VmExit) {
        self.instance = None;
        self.gateway = None;
        self.dir.remove_runtime_files();
        let state = if exit.clean {
            VmState::Stopped
        } else {
            VmState::Failed {
                reason: exit.detail.clone(),
            }
        };
        tracing::warn!(vm = %self.name(), detail = %exit.detail, "VM ended by itself");
        if let Err(e) = self.record(state) {
            tracing::error!(error = %e, "cannot record VM exit");
        }
    }

    fn image(&self) -> Result<Image, VmError> {
        let spec = self.info.borrow().spec.clone();
        self.ctx.images.get(&spec.image)?.ok_or(VmError::NoImage {
            name: spec.name,
            image: spec.image,
        })
    }

    fn snapshot(&self, name: &SnapshotName) -> Result<Option<SnapshotInfo>, VmError> {
        Ok(self
            .ctx
            .store
            .snapshots(&self.name())?
            .into_iter()
            .find(|s| &s.name == name))
    }

    /// Starts the VMM and waits for the guest to be ready (a cold boot).
    /// `during` is the state shown meanwhile (`Starting` or `Resetting`).
    async fn boot(&mut self, during: VmState) -> Result<VmInfo, VmError> {
        self.record(during.clone())?;
        match self.boot_inner(during).await {
            Ok(info) => Ok(info),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn boot_inner(&mut self, during: VmState) -> Result<VmInfo, VmError> {
        let image = self.image()?;
        let spec = self.info.borrow().spec.clone();
        if !self.dir.disk().exists() || self.base_changed(&image) {
            self.fresh_disk(&image).await?;
        }
        let shares = self.attachable_shares()?;
        self.write_guest_config(&shares)?;
        let instance = self
            .ctx
            .hypervisor
            .start(&self.dir, &spec, &image, None, &shares)
            .await
            .map_err(|e| self.backend_error(e))?;
        // Record the pid before waiting on the guest, so a supervisor crash
        // now leaves a VMM the next supervisor knows about.
        self.instance = Some(instance);
        self.attach_gateway();
        self.record(during)?;
        if let Some(marker) = image.ready_marker() {
            let instance = self.instance.as_mut().expect("set above");
            let serial_log = self.dir.serial_log();
            let ready = tokio::select! {
                ready = wait_for_marker(&serial_log, marker, boot_limit(&spec.image)) => ready
                    .map_err(|limit| format!("no {marker:?} on the serial console within {} s", limit.as_secs())),
                exit = instance.exited() => Err(format!("{} during boot", exit.detail)),
            };
            if let Err(reason) = ready {
                self.stop_instance().await;
                return Err(VmError::Boot {
                    name: spec.name,
                    reason,
                });
            }
        }
        if self.snapshot(&clean())?.is_none() {
            self.take_clean_snapshot().await;
        }
        self.record(VmState::Running)
    }

    /// The VM's shares, each checked again now that a VMM is about to open
    /// it (see [`crate::share::ShareScope::recheck`]).
    fn attachable_shares(&self) -> Result<Vec<clawpen_api::SharedFolder>, VmError> {
        let shares = self.ctx.store.shares(&self.name())?;
        for share in &shares {
            self.ctx
                .share_scope
                .recheck(&share.host_path)
                .map_err(|source| VmError::ShareChanged {
                    name: self.name(),
                    tag: share.tag.clone(),
                    source,
                })?;
        }
        Ok(shares)
    }

    /// Hands the guest its VM's inference key, model and shares for this
    /// boot (the config disk every backend attaches).
    fn write_guest_config(&self, shares: &[clawpen_api::SharedFolder]) -> Result<(), VmError> {
        let name = self.name();
        let key = self.ctx.store.ensure_inference_key(&name)?;
        let served = self
            .ctx
            .served_model
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let config = super::guest_config::for_vm(
            name.as_str(),
            &key,
            &served,
            shares,
            self.ctx.hypervisor.guest_share_fs(),
        );
        super::guest_config::write(
            &config,
            &self.dir.guest_config(),
            &self.dir.guest_config_disk(),
        )?;
        Ok(())
    }

    /// The base disk's checksum the VM's disk was made on.
    fn base_stamp(&self) -> std::path::PathBuf {
        self.dir.root().join("base.sha256")
    }

    fn image_disk_sha(image: &Image) -> Option<&str> {
        image
            .manifest
            .files
            .iter()
            .find(|f| f.role == clawpen_vmimage::FileRole::Disk)
            .map(|f| f.sha256.as_str())
    }

    /// True when the image's base disk is not the one the VM's disk was made
    /// on: an image rebuild replaces the base in place, and an overlay on the
    /// old base would read garbage. A disk from before stamps existed is
    /// taken as matching (and stamped).
    fn base_changed(&self, image: &Image) -> bool {
        let Some(current) = Self::image_disk_sha(image) else {
            return false;
        };
        match std::fs::read_to_string(self.base_stamp()) {
            Ok(recorded) => recorded.trim() != current,
            Err(_) => {
                let _ = std::fs::write(self.base_stamp(), current);
                false
            }
        }
    }

    /// A fresh overlay on the image's base (its snapshots go with the old
    /// one), stamped with the base it was made on.
    async fn fresh_disk(&mut self, image: &Image) -> Result<(), VmError> {
        let spec = self.info.borrow().spec.clone();
        if self.dir.disk().exists() && self.base_changed(image) {
            tracing::warn!(vm = %spec.name, "the base image was rebuilt: the VM gets a fresh disk");
            self.progress("disk", "base image rebuilt: fresh disk", 1, 1);
        }
        self.ctx
            .hypervisor
            .fresh_disk(&self.dir, &spec, image)
            .await
            .map_err(|e| self.backend_error(e))?;
        self.ctx.store.clear_snapshots(&spec.name)?;
        if let Some(sha) = Self::image_disk_sha(image) {
            let _ = std::fs::write(self.base_stamp(), sha);
        }
        Ok(())
    }

    /// Saves disk + memory. QEMU refuses `savevm` while a 9p share is
    /// mounted in the guest, so with shares the guest agent unmounts them
    /// first and mounts them again after: memory states never hold a mount.
    async fn save_memory_snapshot(&mut self, name: &SnapshotName) -> Result<(), VmError> {
        let has_shares = !self.ctx.store.shares(&self.name())?.is_empty();
        if has_shares {
            agent::call(&self.dir.agent_socket(), "umount-shares").await?;
        }
        let saved = match self.instance.as_mut() {
            Some(instance) => instance.save_snapshot(name).await,
            None => return Err(self.conflict("snapshot", "running")),
        };
        if has_shares {
            self.mount_shares().await;
        }
        saved.map_err(|e| self.backend_error(e))
    }

    /// Asks the guest agent to mount the VM's shares (after a restore or a
    /// snapshot). A failure is logged: the VM runs, its shares are missing.
    async fn mount_shares(&mut self) {
        match self.ctx.store.shares(&self.name()) {
            Ok(shares) if shares.is_empty() => {}
            Ok(_) => {
                if let Err(e) = agent::call(&self.dir.agent_socket(), "mount-shares").await {
                    tracing::warn!(vm = %self.name(), error = %e, "shares not mounted in the guest");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read shares"),
        }
    }

    /// Shares change only while the VM is stopped (they are VMM devices), and
    /// a change makes every memory state unusable (it restores only into the
    /// same devices): snapshots become disk-only.
    fn change_shares(
        &mut self,
        add: Option<SharedFolder>,
        remove: Option<ShareTag>,
    ) -> Result<(), VmError> {
        if self.instance.is_some() {
            return Err(self.conflict("change shares", "stopped"));
        }
        let name = self.name();
        if let Some(share) = add {
            if !self.ctx.store.add_share(&name, &share)? {
                return Err(VmError::ShareExists {
                    name,
                    tag: share.tag,
                });
            }
        }
        if let Some(tag) = remove {
            if !self.ctx.store.remove_share(&name, &tag)? {
                return Err(VmError::NoShare { name, tag });
            }
        }
        self.ctx.store.forget_memory_states(&name)?;
        Ok(())
    }

    /// The `clean` snapshot, right after the first boot: what reset returns
    /// to. A failure is logged, not fatal: reset then falls back to a fresh
    /// disk and a cold boot.
    async fn take_clean_snapshot(&mut self) {
        let name = clean();
        self.progress("snapshot clean", "saving disk and memory", 0, 1);
        match self.save_memory_snapshot(&name).await {
            Ok(()) => {
                let info = SnapshotInfo {
                    name,
                    has_memory: true,
                    created_unix: now_unix(),
                };
                if let Err(e) = self.ctx.store.put_snapshot(&self.name(), &info) {
                    tracing::error!(error = %e, "cannot record the clean snapshot");
                }
                self.progress("snapshot clean", "saved", 1, 1);
            }
            Err(e) => tracing::warn!(vm = %self.name(), error = %e, "no clean snapshot"),
        }
    }

    /// Stops the VMM if one runs (no state change).
    async fn stop_instance(&mut self) {
        self.gateway = None;
        if let Some(mut instance) = self.instance.take() {
            if let Err(e) = instance.stop().await {
                tracing::error!(error = %e, "stopping the VMM failed");
            }
        }
        self.dir.remove_runtime_files();
    }

    async fn stop_vmm(&mut self) -> Result<VmInfo, VmError> {
        if self.instance.is_none() {
            return Ok(self.info.borrow().clone());
        }
        self.record(VmState::Stopping)?;
        self.gateway = None;
        if let Some(mut instance) = self.instance.take() {
            if let Err(e) = instance.stop().await {
                let e = self.backend_error(e);
                return Err(self.fail(e));
            }
        }
        self.dir.remove_runtime_files();
        self.record(VmState::Stopped)
    }

    /// Returns the VM to snapshot `name`, running: **warm** (memory state
    /// restored, no boot) when the snapshot has one and `cold` is not asked,
    /// **cold** (the snapshot's disk, full boot) otherwise. With
    /// `fresh_if_missing` (reset) and no such snapshot, a fresh disk from the
    /// base image and a boot.
    async fn restore(
        &mut self,
        name: &SnapshotName,
        cold: bool,
        fresh_if_missing: bool,
    ) -> Result<VmInfo, VmError> {
        if self.instance.is_none() && self.dir.disk().exists() {
            // Snapshots of a disk whose base image was rebuilt are unusable.
            let image = self.image()?;
            if self.base_changed(&image) {
                self.fresh_disk(&image).await?;
            }
        }
        let snapshot = self.snapshot(name)?;
        if snapshot.is_none() && !fresh_if_missing {
            return Err(VmError::NoSnapshot {
                name: self.name(),
                snapshot: name.clone(),
            });
        }
        self.record(VmState::Resetting)?;
        crash::point("reset:before-stop");
        let warm = snapshot.as_ref().is_some_and(|s| s.has_memory) && !cold;
        let result = match snapshot {
            Some(snapshot) if warm => match self.restore_warm(name).await {
                Ok(info) => Ok(info),
                Err(e) => self.restore_cold_instead(snapshot, e).await,
            },
            snapshot => self.restore_cold(snapshot.map(|s| s.name)).await,
        };
        match result {
            Ok(info) => Ok(info),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn restore_warm(&mut self, name: &SnapshotName) -> Result<VmInfo, VmError> {
        self.progress("restore", &format!("loading snapshot {name}"), 0, 1);
        if let Some(instance) = self.instance.as_mut() {
            crash::point_after("reset:during-restore", Duration::from_millis(30));
            let restored = instance.restore_snapshot(name).await;
            restored.map_err(|e| self.backend_error(e))?;
        } else {
            let image = self.image()?;
            let spec = self.info.borrow().spec.clone();
            crash::point_after("reset:during-restore", Duration::from_millis(30));
            let instance = self
                .ctx
                .hypervisor
                .start(
                    &self.dir,
                    &spec,
                    &image,
                    Some(name),
                    &self.attachable_shares()?,
                )
                .await
                .map_err(|e| self.backend_error(e))?;
            self.instance = Some(instance);
            self.attach_gateway();
        }
        // The memory state was saved with the shares unmounted.
        self.mount_shares().await;
        self.progress("restore", "done", 1, 1);
        self.record(VmState::Running)
    }

    /// A memory state restores only into the VMM that saved it: the same
    /// devices (a clawpen upgrade that adds one, like the config disk, makes
    /// older ones unusable) and a VMM that reads its format. When it does
    /// not restore, the snapshot's disk still boots, so a reset still ends
    /// in a running VM: the snapshot becomes disk-only, the VM boots from
    /// its disk, and `clean` is saved again with memory, so the next reset
    /// is warm again.
    async fn restore_cold_instead(
        &mut self,
        snapshot: SnapshotInfo,
        warm_error: VmError,
    ) -> Result<VmInfo, VmError> {
        let name = snapshot.name.clone();
        tracing::warn!(
            vm = %self.name(),
            snapshot = %name,
            error = %warm_error,
            "the memory state does not restore; cold reset from the snapshot's disk"
        );
        self.progress("restore", "memory state unusable: booting its disk", 0, 1);
        self.ctx.store.put_snapshot(
            &self.name(),
            &SnapshotInfo {
                has_memory: false,
                ..snapshot
            },
        )?;
        let info = self.restore_cold(Some(name.clone())).await?;
        if name == clean() {
            self.take_clean_snapshot().await;
        }
        Ok(info)
    }

    async fn restore_cold(&mut self, snapshot: Option<SnapshotName>) -> Result<VmInfo, VmError> {
        self.progress("cold reset", "stopping the VMM", 0, 3);
        self.stop_instance().await;
        self.record(VmState::Resetting)?;
        crash::point("reset:after-stop");
        let image = self.image()?;
        self.progress("cold reset", "restoring the disk", 1, 3);
        match &snapshot {
            Some(name) => self
                .ctx
                .hypervisor
                .revert_disk(&self.dir, name)
                .await
                .map_err(|e| self.backend_error(e))?,
            None => self.fresh_disk(&image).await?,
        }
        crash::point("reset:after-disk");
        self.progress("cold reset", "booting", 2, 3);
        self.boot_inner(VmState::Resetting).await
    }

    async fn take_snapshot(&mut self, name: &SnapshotName) -> Result<SnapshotInfo, VmError> {
        let task = format!("snapshot {name}");
        self.progress(&task, "saving", 0, 1);
        let has_memory = if self.instance.is_some() {
            self.save_memory_snapshot(name).await?;
            true
        } else if self.dir.disk().exists() {
            self.ctx
                .hypervisor
                .snapshot_disk(&self.dir, name)
                .await
                .map_err(|e| self.backend_error(e))?;
            false
        } else {
            return Err(self.conflict("snapshot", "booted at least once (it has no disk yet)"));
        };
        let info = SnapshotInfo {
            name: name.clone(),
            has_memory,
            created_unix: now_unix(),
        };
        self.ctx.store.put_snapshot(&self.name(), &info)?;
        self.progress(&task, "saved", 1, 1);
        Ok(info)
    }

    async fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), VmError> {
        if self.snapshot(name)?.is_none() {
            return Err(VmError::NoSnapshot {
                name: self.name(),
                snapshot: name.clone(),
            });
        }
        let deleted = match self.instance.as_mut() {
            Some(instance) => instance.delete_snapshot(name).await,
            None => self.ctx.hypervisor.delete_snapshot(&self.dir, name).await,
        };
        deleted.map_err(|e| self.backend_error(e))?;
        self.ctx.store.delete_snapshot(&self.name(), name)?;
        Ok(())
    }

    /// Stops the VMM, removes the VM's folder and its store rows. The store
    /// row goes last, so a crash half-way leaves a VM that can be deleted again.
    async fn delete(&mut self) -> Result<(), VmError> {
        if self.instance.is_some() {
            self.stop_vmm().await?;
        }
        self.ctx.hypervisor.kill_strays(&self.dir, None).await;
        self.dir.remove()?;
        let name = self.name();
        self.ctx.store.delete_vm(&name)?;
        self.ctx.egress.forget(&name);
        self.ctx.events.publish(Event::VmDeleted { name });
        Ok(())
    }
}

/// Answers every caller of one coalesced reset with its result. A lone
/// caller gets the error itself; several share it as [`VmError::Shared`],
/// which keeps its kind, so all of them get the same HTTP status and code.
fn answer_resets(result: Result<VmInfo, VmError>, mut replies: Vec<Reply<VmInfo>>) {
    if replies.len() <= 1 {
        if let Some(reply) = replies.pop() {
            let _ = reply.send(result);
        }
        return;
    }
    let result = result.map_err(Arc::new);
    for reply in replies {
        let _ = reply.send(match &result {
            Ok(info) => Ok(info.clone()),
            Err(error) => Err(VmError::Shared(error.clone())),
        });
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use clawpen_api::{ShareTag, VmInfo, VmName, VmSpec, VmState};
    use tokio::sync::oneshot;

    use super::{answer_resets, Reply, VmError};
    use crate::api::HttpError;
    use crate::share::ShareError;

    fn name() -> VmName {
        VmName::parse("box").expect("valid name")
    }

    fn info() -> VmInfo {
        VmInfo {
            spec: VmSpec {
                name: name(),
                image: "alpine".into(),
                cpus: 1,
                memory_mib: 256,
                disk_gib: None,
            },
            state: VmState::Running,
            pid: Some(42),
            accel: Some("tcg".into()),
        }
    }

    /// `callers` coalesced resets answered with `result`; each one's answer.
    fn coalesce(result: Result<VmInfo, VmError>, callers: usize) -> Vec<Result<VmInfo, VmError>> {
        let (replies, answers): (Vec<Reply<VmInfo>>, Vec<_>) =
            (0..callers).map(|_| oneshot::channel()).unzip();
        answer_resets(result, replies);
        answers
            .into_iter()
            .map(|mut answer| answer.try_recv().expect("every caller is answered"))
            .collect()
    }

    /// Every caller's HTTP answer: status, code, message.
    fn http(answers: Vec<Result<VmInfo, VmError>>) -> Vec<(StatusCode, String, String)> {
        answers
            .into_iter()
            .map(|answer| {
                let error = HttpError::from(answer.expect_err("the reset failed"));
                (
                    error.status,
                    error.body.error.code,
                    error.body.error.message,
                )
            })
            .collect()
    }

    #[test]
    fn coalesced_reset_conflict_is_409_for_every_caller() {
        let conflict = VmError::Conflict {
            name: name(),
            state: VmState::Stopping,
            wanted: "reset",
            needs: "running",
        };
        let message = conflict.to_string();
        let answers = http(coalesce(Err(conflict), 3));
        assert_eq!(answers.len(), 3);
        for answer in answers {
            assert_eq!(
                answer,
                (
                    StatusCode::CONFLICT,
                    "conflict".to_string(),
                    message.clone()
                )
            );
        }
    }

    #[test]
    fn coalesced_reset_share_changed_is_409_for_every_caller() {
        let changed = VmError::ShareChanged {
            name: name(),
            tag: ShareTag::parse("work").expect("valid tag"),
            source: ShareError::Root,
        };
        let answers = http(coalesce(Err(changed), 2));
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[1].0, StatusCode::CONFLICT);
        assert_eq!(answers[1].1, "share_changed");
    }

    #[test]
    fn coalesced_reset_failure_keeps_its_500() {
        let boot = VmError::Boot {
            name: name(),
            reason: "no marker".into(),
        };
        let answers = http(coalesce(Err(boot), 2));
        assert_eq!(answers[0], answers[1]);
        assert_eq!(answers[1].0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(answers[1].1, "vm_failed");
    }

    #[test]
    fn coalesced_reset_success_answers_every_caller_the_same_info() {
        for answer in coalesce(Ok(info()), 3) {
            assert_eq!(answer.expect("the reset worked"), info());
        }
    }

    #[test]
    fn lone_reset_gets_its_own_error() {
        let answers = coalesce(
            Err(VmError::NoImage {
                name: name(),
                image: "gone".into(),
            }),
            1,
        );
        assert!(matches!(answers[0], Err(VmError::NoImage { .. })));
    }

    #[test]
    fn reset_with_no_caller_left_is_a_no_op() {
        answer_resets(Ok(info()), Vec::new());
    }
}
