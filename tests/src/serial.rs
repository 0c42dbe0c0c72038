//! Typing into a guest's serial console and reading what it answers.
//!
//! Output is read from `serial.log` (QEMU logs everything the guest prints),
//! input goes through `serial.sock`. Commands end by echoing a computed marker
//! (`echo END-$((6*7))` prints `END-42`), so the echo of the typed command
//! itself never matches.
//!
//! QEMU serves one client per serial socket at a time: replace a `Serial`
//! (assign over it) rather than holding two.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Serial {
    log: PathBuf,
    socket: UnixStream,
    counter: u32,
}

impl Serial {
    pub fn connect(vm_dir: &Path) -> Result<Self> {
        let socket = UnixStream::connect(vm_dir.join("serial.sock")).context("serial socket")?;
        // QEMU logs only what the socket took: a client that does not read
        // stalls the guest's UART once the socket buffer fills (one small skb
        // per byte, so after a few hundred bytes). Drain it; output is read
        // from the log.
        let mut drain = socket.try_clone().context("clone serial socket")?;
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut drain, &mut std::io::sink());
        });
        Ok(Self {
            log: vm_dir.join("serial.log"),
            socket,
            counter: 0,
        })
    }

    fn log_len(&self) -> usize {
        std::fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// Types one line without waiting for an answer (for commands that end
    /// the shell, like `kill -9 -1`).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.socket, "{line}").context("write serial")
    }

    /// Runs `command` in the guest shell and returns what it printed.
    pub fn run(&mut self, command: &str, limit: Duration) -> Result<String> {
        self.counter += 1;
        let n = 1000 + self.counter;
        let marker = format!("END-{}", n * 2);
        let start = self.log_len();
        writeln!(self.socket, "{command}; echo END-$(({n}*2))").context("write serial")?;
        let deadline = Instant::now() + limit;
        loop {
            let bytes = std::fs::read(&self.log).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes[start.min(bytes.len())..]).into_owned();
            if let Some(pos) = text.find(&marker) {
                return Ok(text[..pos].to_string());
            }
            if Instant::now() > deadline {
                bail!("guest did not answer {command:?} within {limit:?}; it printed: {text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `command` in the guest shell and returns its exit status.
    pub fn exit_status(&mut self, command: &str, limit: Duration) -> Result<i32> {
        const TAG: &str = "CLAWPEN-STATUS=";
        let out = self.run(&format!("{command}; echo {TAG}$?"), limit)?;
        out.rsplit_once(TAG)
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no exit status for {command:?} in {out:?}"))
    }
}

/// True if `marker` appears anywhere in the VM's serial log.
pub fn log_contains(vm_dir: &Path, marker: &str) -> bool {
    std::fs::read(vm_dir.join("serial.log"))
        .map(|b| String::from_utf8_lossy(&b).contains(marker))
        .unwrap_or(false)
}

impl Drop for Serial {
    fn drop(&mut self) {
        // Closes the drain thread's clone too, so QEMU sees the client leave
        // and accepts the next one.
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}
