//! Running host tools (apt, dpkg-deb, mkfs.ext4, qemu-img) with errors that
//! say which command failed and what it wrote to stderr, because "exit status
//! 100" alone does not tell a user that their apt lists are stale.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};

/// How much of a failed command's stderr is kept in the error (its tail).
const STDERR_KEEP: usize = 4096;

/// A host command that could not be started or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (usually: not installed).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// The command line as one string, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and returns its stdout; stdin is closed.
pub(crate) fn run(cmd: &mut Command) -> Result<Vec<u8>, CommandError> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(CommandError::Failed {
            command,
            status: out.status,
            stderr: tail(&out.stderr),
        })
    }
}

/// Runs `cmd`, calling `tick` about every 200 ms while it runs, so callers can
/// report progress (e.g. bytes downloaded so far) of a silent command.
pub(crate) fn run_with_ticks(cmd: &mut Command, tick: &dyn Fn()) -> Result<(), CommandError> {
    let command = describe(cmd);
    tracing::debug!(%command, "running");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
    // Drain stderr on a thread so a chatty command cannot block on a full pipe.
    let reader = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                tick();
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CommandError::Spawn { command, source });
            }
        }
    };
    let stderr = reader.and_then(|h| h.join().ok()).unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(CommandError::Failed {
            command,
            status,
            stderr: tail(&stderr),
        })
    }
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_KEEP);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}
