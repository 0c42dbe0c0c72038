//! The guest agent's channel on VZ, made to look like QEMU's (portable,
//! tested on Linux).
//!
//! QEMU serves a VM's agent port itself on the VM folder's `agent.sock`
//! (`-chardev socket,server=on,wait=off`). Virtualization.framework instead
//! attaches the named virtio console port to a file handle: one end of a
//! socketpair. [`AgentBridge`] serves the other end on the same `agent.sock`
//! with QEMU's behaviour, so `vm::agent::call` needs no VZ case:
//!
//! - one client at a time; the next connection waits in the listen backlog
//!   until the current one closes;
//! - bytes are copied both ways as they come, nothing is framed;
//! - what the guest writes while no client is connected is read and dropped
//!   (QEMU does the same with `wait=off`), so the guest never blocks on an
//!   absent reader.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Read size for either direction (agent lines are short).
const BUF: usize = 4096;
/// How long a client may leave the guest's bytes unread before it is dropped
/// (the guest's writes wait meanwhile).
const CLIENT_WRITE_LIMIT: Duration = Duration::from_secs(5);

/// Serves the host end of the agent port's socketpair on a unix socket until
/// dropped; dropping it closes the host end and removes the socket file.
pub struct AgentBridge {
    socket: PathBuf,
    /// The bound socket file's identity: drop removes only that file, never
    /// one a later bridge bound at the same path.
    bound: Option<FileId>,
    task: JoinHandle<()>,
}

impl AgentBridge {
    /// Binds `socket` (a stale file from an earlier run is removed first)
    /// and serves `guest` on it. Needs a tokio runtime.
    pub fn serve(socket: &Path, guest: std::os::unix::net::UnixStream) -> io::Result<Self> {
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(socket)?;
        let bound = file_id(socket);
        guest.set_nonblocking(true)?;
        let guest = UnixStream::from_std(guest)?;
        let task = tokio::spawn(run(listener, guest));
        Ok(Self {
            socket: socket.to_path_buf(),
            bound,
            task,
        })
    }
}

impl Drop for AgentBridge {
    fn drop(&mut self) {
        self.task.abort();
        if self.bound.is_some() && file_id(&self.socket) == self.bound {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Device, inode and change time (an inode number alone may be reused by
/// the next file).
type FileId = (u64, u64, i64, i64);

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

enum Event {
    Accepted(io::Result<UnixStream>),
    Guest(io::Result<usize>),
    Client(io::Result<usize>),
}

/// Reads from the connected client, or waits forever when there is none.
async fn read_client(client: &mut Option<UnixStream>, buf: &mut [u8]) -> io::Result<usize> {
    match client {
        Some(stream) => stream.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The copy loop; ends when the guest's end closes (the VM is gone).
async fn run(listener: UnixListener, guest: UnixStream) {
    let (mut from_guest, mut to_guest) = guest.into_split();
    let mut client: Option<UnixStream> = None;
    let mut guest_buf = vec![0u8; BUF];
    let mut client_buf = vec![0u8; BUF];
    loop {
        // Every branch is cancel-safe (accept, read), so the losers of the
        // select lose nothing.
        let event = tokio::select! {
            accepted = listener.accept(), if client.is_none() => {
                Event::Accepted(accepted.map(|(stream, _)| stream))
            }
            read = from_guest.read(&mut guest_buf) => Event::Guest(read),
            read = read_client(&mut client, &mut client_buf) => Event::Client(read),
        };
        match event {
            Event::Accepted(Ok(stream)) => client = Some(stream),
            Event::Accepted(Err(e)) => {
                tracing::warn!("guest agent socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Event::Guest(Ok(0)) => return,
            Event::Guest(Err(e)) => {
                tracing::warn!("guest agent port: read: {e}");
                return;
            }
            Event::Guest(Ok(n)) => {
                if let Some(stream) = &mut client {
                    let sent =
                        tokio::time::timeout(CLIENT_WRITE_LIMIT, stream.write_all(&guest_buf[..n]))
                            .await;
                    if !matches!(sent, Ok(Ok(()))) {
                        client = None;
                    }
                }
                // No client: dropped, as QEMU does.
            }
            Event::Client(Ok(0)) | Event::Client(Err(_)) => client = None,
            Event::Client(Ok(n)) => {
                if to_guest.write_all(&client_buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;

    const LIMIT: Duration = Duration::from_secs(5);

    /// A real socketpair: the bridge gets one end, the test plays the guest
    /// on the other.
    fn bridge(dir: &Path) -> (AgentBridge, UnixStream, PathBuf) {
        let socket = dir.join("agent.sock");
        let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let bridge = AgentBridge::serve(&socket, host).unwrap();
        guest.set_nonblocking(true).unwrap();
        (bridge, UnixStream::from_std(guest).unwrap(), socket)
    }

    async fn line(reader: &mut (impl tokio::io::AsyncBufRead + Unpin)) -> String {
        let mut line = String::new();
        tokio::time::timeout(LIMIT, reader.read_line(&mut line))
            .await
            .expect("a line in time")
            .unwrap();
        line
    }

    /// The supervisor's own agent client talks to a fake guest agent (one
    /// line in, `ok LINE` out) through the bridge, as it would to QEMU.
    #[tokio::test]
    async fn the_agent_client_reaches_the_guest_through_the_bridge() {
        let dir = tempfile::tempdir().unwrap();
        // A stale socket file from an earlier run is replaced.
        std::fs::write(dir.path().join("agent.sock"), b"stale").unwrap();
        let (_bridge, guest, socket) = bridge(dir.path());
        let agent = tokio::spawn(async move {
            let (read, mut write) = guest.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                write
                    .write_all(format!("ok {line}\n").as_bytes())
                    .await
                    .unwrap();
                seen.push(line.clone());
                if line == "mount-shares" {
                    break;
                }
            }
            seen
        });
        crate::vm::agent::call(&socket, "umount-shares")
            .await
            .unwrap();
        crate::vm::agent::call(&socket, "mount-shares")
            .await
            .unwrap();
        let seen = agent.await.unwrap();
        assert_eq!(seen, ["ping", "umount-shares", "ping", "mount-shares"]);
    }

    #[tokio::test]
    async fn one_client_at_a_time_and_unread_guest_output_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (bridge, guest, socket) = bridge(dir.path());
        let (guest_read, mut guest_write) = guest.into_split();
        let mut guest_read = BufReader::new(guest_read);

        // Nobody connected: the guest's bytes are read and dropped, not kept
        // for the next client.
        guest_write.write_all(b"stale\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mut a = BufReader::new(UnixStream::connect(&socket).await.unwrap());
        a.get_mut().write_all(b"from a\n").await.unwrap();
        assert_eq!(line(&mut guest_read).await, "from a\n");
        guest_write.write_all(b"to a\n").await.unwrap();
        assert_eq!(line(&mut a).await, "to a\n");

        // A second client waits until the first one leaves.
        let mut b = BufReader::new(UnixStream::connect(&socket).await.unwrap());
        b.get_mut().write_all(b"from b\n").await.unwrap();
        let mut early = String::new();
        let waited =
            tokio::time::timeout(Duration::from_millis(300), guest_read.read_line(&mut early))
                .await;
        assert!(
            waited.is_err(),
            "b got through while a was connected: {early:?}"
        );
        drop(a);
        assert_eq!(line(&mut guest_read).await, "from b\n");
        guest_write.write_all(b"to b\n").await.unwrap();
        assert_eq!(line(&mut b).await, "to b\n");

        // Dropping the bridge closes the host end and removes the socket.
        drop(bridge);
        assert!(!socket.exists());
        let mut rest = Vec::new();
        let read = tokio::time::timeout(LIMIT, guest_read.read_to_end(&mut rest))
            .await
            .expect("the host end closes");
        assert_eq!(read.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_later_bridge_keeps_its_socket_when_an_earlier_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _guest1, socket) = bridge(dir.path());
        let (second, guest2, _) = bridge(dir.path());
        drop(first);
        assert!(socket.exists());
        let mut client = UnixStream::connect(&socket).await.unwrap();
        client.write_all(b"hi\n").await.unwrap();
        let mut guest2 = BufReader::new(guest2);
        assert_eq!(line(&mut guest2).await, "hi\n");
        drop(second);
        assert!(!socket.exists());
    }
}
