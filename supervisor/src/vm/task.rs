//! The task that owns one VM: its VMM instance, its state, its commands.
//!
//! Commands arrive on a channel and run one at a time, so two resets clicked at
//! once run one after the other and never interleave on the same VMM. Reads do
//! not go through the task: the current [`VmInfo`] is published on a watch
//! channel, so a `GET` never waits behind a slow reset.

use std::sync::Arc;
use std::time::Duration;

use clawpen_api::{Event, ResetRequest, VmInfo, VmState};
use clawpen_vmimage::Image;
use tokio::sync::{mpsc, watch};

use super::backend::{Instance, VmExit};
use super::dir::VmDir;
use super::serial::wait_for_marker;
use super::{VmCommand, VmContext, VmError, VmHandle};

/// How long a guest may take from VMM start to its ready marker. TCG boots of
/// the test guest take about 5 s; this leaves room for a loaded machine.
const BOOT_LIMIT: Duration = Duration::from_secs(180);

/// Queue depth per VM; senders wait when it is full.
const COMMAND_QUEUE: usize = 16;

pub(super) struct VmTask {
    ctx: Arc<VmContext>,
    dir: VmDir,
    info: watch::Sender<VmInfo>,
    commands: mpsc::Receiver<VmCommand>,
    instance: Option<Box<dyn Instance>>,
}

enum Wake {
    Command(Option<VmCommand>),
    Exited(VmExit),
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
            instance,
        };
        (handle, task)
    }

    pub(super) async fn run(mut self) {
        loop {
            let wake = {
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
            };
            match wake {
                Wake::Command(None) => break,
                Wake::Command(Some(VmCommand::Shutdown(reply))) => {
                    let _ = reply.send(self.stop_vmm().await);
                    break;
                }
                Wake::Command(Some(command)) => self.handle(command).await,
                Wake::Exited(exit) => self.on_exit(exit),
            }
        }
    }

    async fn handle(&mut self, command: VmCommand) {
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
                let _ = reply.send(self.reset(request).await);
            }
            VmCommand::Shutdown(reply) => {
                let _ = reply.send(self.stop_vmm().await);
            }
        }
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
        self.record_with(state, pid, accel)
    }

    fn record_with(
        &mut self,
        state: VmState,
        pid: Option<u32>,
        accel: Option<String>,
    ) -> Result<VmInfo, VmError> {
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

    /// Records `Failed` with the error as reason and hands the error back.
    fn fail(&mut self, error: VmError) -> VmError {
        if let Err(store_error) = self.record(VmState::Failed {
            reason: error.to_string(),
        }) {
            tracing::error!(error = %store_error, "cannot record failure");
        }
        error
    }

    fn on_exit(&mut self, exit: VmExit) {
        self.instance = None;
        let state = if exit.clean {
            VmState::Stopped
        } else {
            VmState::Failed {
                reason: exit.detail.clone(),
            }
        };
        tracing::warn!(vm = %self.info.borrow().spec.name, detail = %exit.detail, "VM ended by itself");
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

    fn backend_error(&self, source: super::backend::BackendError) -> VmError {
        VmError::Backend {
            name: self.info.borrow().spec.name.clone(),
            source,
        }
    }

    /// Starts the VMM and waits for the guest to be ready. `during` is the
    /// state shown meanwhile (`Starting`, or `Resetting` for a reset).
    async fn boot(&mut self, during: VmState) -> Result<VmInfo, VmError> {
        self.record_with(during.clone(), None, None)?;
        match self.boot_inner(during).await {
            Ok(info) => Ok(info),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn boot_inner(&mut self, during: VmState) -> Result<VmInfo, VmError> {
        let image = self.image()?;
        let spec = self.info.borrow().spec.clone();
        if !self.dir.disk().exists() {
            self.ctx
                .hypervisor
                .fresh_disk(&self.dir, &image)
                .await
                .map_err(|e| self.backend_error(e))?;
        }
        let instance = self
            .ctx
            .hypervisor
            .start(&self.dir, &spec, &image)
            .await
            .map_err(|e| self.backend_error(e))?;
        // Record the pid before waiting on the guest, so a supervisor crash
        // now leaves a VMM the next supervisor knows about.
        self.instance = Some(instance);
        self.record(during)?;
        if let Some(marker) = image.ready_marker() {
            let instance = self.instance.as_mut().expect("set above");
            let serial_log = self.dir.serial_log();
            let ready = tokio::select! {
                ready = wait_for_marker(&serial_log, marker, BOOT_LIMIT) => ready
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
        self.record(VmState::Running)
    }

    /// Stops the VMM if one runs (no state change).
    async fn stop_instance(&mut self) {
        if let Some(mut instance) = self.instance.take() {
            if let Err(e) = instance.stop().await {
                tracing::error!(error = %e, "stopping the VMM failed");
            }
        }
    }

    async fn stop_vmm(&mut self) -> Result<VmInfo, VmError> {
        if self.instance.is_none() {
            return Ok(self.info.borrow().clone());
        }
        self.record(VmState::Stopping)?;
        if let Some(mut instance) = self.instance.take() {
            if let Err(e) = instance.stop().await {
                let e = self.backend_error(e);
                return Err(self.fail(e));
            }
        }
        self.record_with(VmState::Stopped, None, None)
    }

    /// Cold reset: stop, fresh overlay on the base image, boot.
    async fn reset(&mut self, _request: ResetRequest) -> Result<VmInfo, VmError> {
        let pid = self.instance.as_ref().and_then(|i| i.pid());
        let accel = self.instance.as_ref().map(|i| i.accel().to_string());
        self.record_with(VmState::Resetting, pid, accel)?;
        self.stop_instance().await;
        let image = match self.image() {
            Ok(image) => image,
            Err(e) => return Err(self.fail(e)),
        };
        if let Err(e) = self.ctx.hypervisor.fresh_disk(&self.dir, &image).await {
            let e = self.backend_error(e);
            return Err(self.fail(e));
        }
        self.boot(VmState::Resetting).await
    }
}
