//! The guest agent: a tiny command loop the test guest runs on its second
//! serial port (`agent.sock`). One line in, one line out (`ok CMD` or
//! `error ...`). Used to unmount shares before a memory snapshot (QEMU refuses
//! `savevm` while a 9p export is mounted) and to mount them again after.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long the guest has to answer one command.
const ANSWER_LIMIT: Duration = Duration::from_secs(15);
/// How long one ping waits before it is sent again.
const PING_LIMIT: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("guest agent at {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("guest agent did not answer `{command}` within {limit:?}")]
    Timeout { command: String, limit: Duration },
    #[error("guest agent refused `{command}`: {answer}")]
    Refused { command: String, answer: String },
}

/// Sends `command` and waits for its `ok` line. Pings first until the agent
/// answers: bytes sent before the guest opened its end of the port are lost
/// (right after boot the agent may still be starting).
pub async fn call(socket: &Path, command: &str) -> Result<(), AgentError> {
    let deadline = tokio::time::Instant::now() + ANSWER_LIMIT;
    loop {
        match tokio::time::timeout(PING_LIMIT, exchange(socket, "ping")).await {
            Ok(Ok(())) => break,
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(AgentError::Timeout {
                    command: "ping".to_string(),
                    limit: ANSWER_LIMIT,
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    tokio::time::timeout(ANSWER_LIMIT, exchange(socket, command))
        .await
        .map_err(|_| AgentError::Timeout {
            command: command.to_string(),
            limit: ANSWER_LIMIT,
        })?
}

/// One command, one answer.
async fn exchange(socket: &Path, command: &str) -> Result<(), AgentError> {
    let io = |source| AgentError::Io {
        path: socket.display().to_string(),
        source,
    };
    {
        let stream = UnixStream::connect(socket).await.map_err(io)?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await.map_err(io)? {
            let line = line.trim();
            if line == format!("ok {command}") {
                return Ok(());
            }
            if line.starts_with("error") {
                return Err(AgentError::Refused {
                    command: command.to_string(),
                    answer: line.to_string(),
                });
            }
        }
        Err(io(std::io::ErrorKind::UnexpectedEof.into()))
    }
}
