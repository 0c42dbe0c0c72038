//! A minimal QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! QMP is line-delimited JSON: a greeting, then `qmp_capabilities`, then each
//! command gets one `{"return": ..}` or `{"error": ..}` answer, with
//! asynchronous `{"event": ..}` lines interleaved (skipped here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP I/O failed during `{command}`: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    #[error("QMP connection closed during `{command}`")]
    Closed { command: String },
    #[error("QMP sent a line that is not JSON during `{command}`: {line}")]
    BadJson { command: String, line: String },
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP command `{command}` timed out after {after:?}")]
    Timeout { command: String, after: Duration },
}

pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

/// How long one QMP exchange may take before the VMM is considered hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Qmp {
    /// Connects, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self {
            reader: BufReader::new(read),
            writer,
        };
        qmp.read_message("greeting").await?;
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.execute_inner(command, arguments))
            .await
            .map_err(|_| QmpError::Timeout {
                command: command.to_string(),
                after: COMMAND_TIMEOUT,
            })?
    }

    async fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(arguments) = arguments {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                command: command.to_string(),
                source,
            })?;
        loop {
            let answer = self.read_message(command).await?;
            if answer.get("event").is_some() {
                continue;
            }
            if let Some(ret) = answer.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = answer.get("error") {
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: err["class"].as_str().unwrap_or("?").to_string(),
                    desc: err["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
        }
    }

    async fn read_message(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .await
            .map_err(|source| QmpError::Io {
                command: command.to_string(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Closed {
                command: command.to_string(),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::BadJson {
            command: command.to_string(),
            line: line.trim_end().to_string(),
        })
    }
}
