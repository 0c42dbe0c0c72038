//! macOS only: one `VZVirtualMachine` on its own serial dispatch queue.
//!
//! Virtualization.framework requires every call on a VM to happen on the
//! queue it was made with, and answers through completion handlers on that
//! queue. [`Machine`] hides both: each operation is sent to the queue as a
//! closure, and its completion handler sends the result back over a oneshot
//! channel to the async caller. Compile-checked in CI, not run here.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use block2::RcBlock;
use dispatch2::{DispatchQueue, DispatchRetained};
use objc2::rc::Retained;
use objc2::AllocAnyThread;
use objc2_foundation::{NSError, NSString, NSURL};
use objc2_virtualization::{
    VZMacOSInstaller, VZVirtualMachine, VZVirtualMachineConfiguration, VZVirtualMachineState,
};
use tokio::sync::oneshot;

use super::objc::describe_error;

/// How often a running macOS install's progress is read.
const INSTALL_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// A value that may only be used on the VM's queue.
struct OnQueue<T>(T);

// SAFETY: the wrapped Objective-C object is only ever touched inside closures
// run on the VM's serial dispatch queue (see `Machine::on_queue`), which is
// what Virtualization.framework requires; moving the pointer between threads
// without using it is sound (Retained's refcounting is atomic).
unsafe impl<T> Send for OnQueue<T> {}
// SAFETY: as above: shared references are only dereferenced on the queue.
unsafe impl<T> Sync for OnQueue<T> {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    Stopped,
    Error,
    /// Starting, pausing, resuming, stopping, saving, restoring.
    Busy,
}

enum Op {
    Start,
    Stop,
    Pause,
    Resume,
    Save(PathBuf),
    Restore(PathBuf),
}

pub struct Machine {
    queue: DispatchRetained<DispatchQueue>,
    vm: Arc<OnQueue<Retained<VZVirtualMachine>>>,
}

impl Machine {
    pub fn new(config: &VZVirtualMachineConfiguration, label: &str) -> Self {
        let queue = DispatchQueue::new(label, None);
        // SAFETY: `config` was validated by `objc::build`; the VM is created
        // bound to `queue`, a serial queue (no attribute = serial), and is
        // used only on it from here on.
        let vm = unsafe {
            VZVirtualMachine::initWithConfiguration_queue(VZVirtualMachine::alloc(), config, &queue)
        };
        Self {
            queue,
            vm: Arc::new(OnQueue(vm)),
        }
    }

    /// Runs `work` on the VM's queue and returns its answer.
    async fn on_queue<T: Send + 'static>(
        &self,
        work: impl FnOnce(&VZVirtualMachine, oneshot::Sender<T>) + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let vm = self.vm.clone();
        self.queue.exec_async(move || work(&vm.0, tx));
        rx.await.ok()
    }

    async fn run(&self, op: Op) -> Result<(), String> {
        self.on_queue(move |vm, tx| {
            let tx = Mutex::new(Some(tx));
            let done = RcBlock::new(move |error: *mut NSError| {
                // SAFETY: the framework passes nil or a valid NSError that
                // lives for the duration of the handler.
                let result = match unsafe { error.as_ref() } {
                    None => Ok(()),
                    Some(error) => Err(describe_error(error)),
                };
                if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = tx.send(result);
                }
            });
            let url = |path: &PathBuf| {
                NSURL::fileURLWithPath(&NSString::from_str(&path.to_string_lossy()))
            };
            // SAFETY: we are on the VM's queue (this closure runs there), and
            // each method gets the completion block type it declares.
            unsafe {
                match op {
                    Op::Start => vm.startWithCompletionHandler(&done),
                    Op::Stop => vm.stopWithCompletionHandler(&done),
                    Op::Pause => vm.pauseWithCompletionHandler(&done),
                    Op::Resume => vm.resumeWithCompletionHandler(&done),
                    // macOS 14+; older systems answer with an error, and the
                    // VM task falls back to cold resets.
                    Op::Save(path) => {
                        vm.saveMachineStateToURL_completionHandler(&url(&path), &done)
                    }
                    Op::Restore(path) => {
                        vm.restoreMachineStateFromURL_completionHandler(&url(&path), &done)
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|| Err("the VM's queue dropped the operation".into()))
    }

    pub async fn start(&self) -> Result<(), String> {
        self.run(Op::Start).await
    }
    pub async fn stop(&self) -> Result<(), String> {
        self.run(Op::Stop).await
    }
    pub async fn pause(&self) -> Result<(), String> {
        self.run(Op::Pause).await
    }
    pub async fn resume(&self) -> Result<(), String> {
        self.run(Op::Resume).await
    }
    pub async fn save(&self, path: PathBuf) -> Result<(), String> {
        self.run(Op::Save(path)).await
    }
    /// The VM must be stopped; it is left paused.
    pub async fn restore(&self, path: PathBuf) -> Result<(), String> {
        self.run(Op::Restore(path)).await
    }

    /// Installs macOS from the restore image `ipsw` onto this stopped VM
    /// (`VZMacOSInstaller`), calling `on_fraction` with the installer's
    /// `fractionCompleted` every [`INSTALL_POLL`] until it ends.
    pub async fn install_macos(
        &self,
        ipsw: PathBuf,
        mut on_fraction: impl FnMut(f64),
    ) -> Result<(), String> {
        let (done_tx, mut done_rx) = oneshot::channel::<Result<(), String>>();
        let started = self
            .on_queue(move |vm, tx| {
                let url = NSURL::fileURLWithPath(&NSString::from_str(&ipsw.to_string_lossy()));
                let done_tx = Mutex::new(Some(done_tx));
                let done = RcBlock::new(move |error: *mut NSError| {
                    // SAFETY: the framework passes nil or a valid NSError that
                    // lives for the duration of the handler.
                    let result = match unsafe { error.as_ref() } {
                        None => Ok(()),
                        Some(error) => Err(describe_error(error)),
                    };
                    if let Some(tx) = done_tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                        let _ = tx.send(result);
                    }
                });
                // SAFETY: we are on the VM's queue, where both calls must be
                // made; the VM was built from a macOS platform configuration
                // and is stopped, and `url` is a file URL, as the installer
                // requires (it raises otherwise); `install` is called once.
                let installer = unsafe {
                    let installer = VZMacOSInstaller::initWithVirtualMachine_restoreImageURL(
                        VZMacOSInstaller::alloc(),
                        vm,
                        &url,
                    );
                    installer.installWithCompletionHandler(&done);
                    installer
                };
                // SAFETY: on the VM's queue.
                let progress = unsafe { installer.progress() };
                // The installer stays alive (on the queue's side) until the
                // install ends; the progress object is thread-safe.
                let _ = tx.send((OnQueue(installer), progress));
            })
            .await
            .ok_or_else(|| "the VM's queue dropped the install".to_string())?;
        let (installer, progress) = started;
        let mut tick = tokio::time::interval(INSTALL_POLL);
        let result = loop {
            tokio::select! {
                result = &mut done_rx => {
                    break result
                        .unwrap_or_else(|_| Err("the installer ended without an answer".into()));
                }
                _ = tick.tick() => on_fraction(progress.fractionCompleted()),
            }
        };
        // Released where it lived.
        self.queue.exec_async(move || drop(installer));
        if result.is_ok() {
            on_fraction(1.0);
        }
        result
    }

    pub async fn state(&self) -> RunState {
        self.on_queue(|vm, tx| {
            // SAFETY: on the VM's queue.
            let state = unsafe { vm.state() };
            let _ = tx.send(match state {
                VZVirtualMachineState::Running => RunState::Running,
                VZVirtualMachineState::Paused => RunState::Paused,
                VZVirtualMachineState::Stopped => RunState::Stopped,
                VZVirtualMachineState::Error => RunState::Error,
                _ => RunState::Busy,
            });
        })
        .await
        .unwrap_or(RunState::Error)
    }
}
