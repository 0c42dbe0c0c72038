//! Watching and ending a VMM process, whether we spawned it (a child we must
//! reap) or adopted it after a supervisor restart (someone else's child).

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::{BackendError, VmExit};

/// The exit of a VMM process, observable from many places.
#[derive(Clone)]
pub struct ExitWatch {
    rx: watch::Receiver<Option<VmExit>>,
}

impl ExitWatch {
    /// Reaps `child` in a background task.
    pub fn child(mut child: tokio::process::Child) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let exit = match child.wait().await {
                Ok(status) => VmExit {
                    clean: status.success(),
                    detail: format!("VMM {status}"),
                },
                Err(e) => VmExit {
                    clean: false,
                    detail: format!("waiting for the VMM failed: {e}"),
                },
            };
            let _ = tx.send(Some(exit));
        });
        Self { rx }
    }

    /// Polls `/proc` for a process that is not our child (we cannot wait on it).
    pub fn foreign(pid: u32) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            while is_alive(pid) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // Not our child: its exit status went to its real parent.
            let _ = tx.send(Some(VmExit {
                clean: false,
                detail: format!("VMM process {pid} exited"),
            }));
        });
        Self { rx }
    }

    pub fn has_exited(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// Cancel-safe wait for the exit.
    pub async fn wait(&mut self) -> VmExit {
        match self.rx.wait_for(|s| s.is_some()).await {
            Ok(s) => s.clone().expect("checked by wait_for"),
            Err(_) => VmExit {
                clean: false,
                detail: "the VMM watcher ended".to_string(),
            },
        }
    }

    /// Waits at most `limit`; true if the process exited in time.
    pub async fn wait_timeout(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait()).await.is_ok()
    }
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command name) is the state letter.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Every live process whose command line contains `needle`.
pub fn processes_matching(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_alive(*pid) && cmdline(*pid).is_some_and(|c| c.contains(needle)))
        .collect()
}

pub fn send_kill(pid: u32) -> Result<(), BackendError> {
    match kill(Pid::from_raw(pid as i32), Signal::SIGKILL) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(source) => Err(BackendError::Signal { pid, source }),
    }
}

/// SIGKILLs `pid` and waits (bounded) until it is gone.
pub async fn kill_and_wait(pid: u32) -> Result<(), BackendError> {
    send_kill(pid)?;
    for _ in 0..100 {
        if !is_alive(pid) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
