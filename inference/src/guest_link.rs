//! Which VM a guest's connection comes from.
//!
//! Guests reach the inference service only through their VM's egress
//! gateway, which dials the guests' listener on loopback. Before any byte
//! of the guest's, the gateway writes one line naming the VM
//! ([`preamble`]); [`GuestListener`] reads that line off each accepted
//! connection, so every request is tied to the VM whose gateway carried it
//! and a VM's key is good only from that VM (a key that leaked to another
//! guest is refused there). The guest cannot forge the line: its bytes come
//! after the gateway's, on a connection the gateway opened.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PREFIX: &str = "CLAWPEN-VM ";
/// The longest line accepted (a VM name is at most 63 bytes).
const LINE_MAX: usize = 96;
/// How long a connection may take to send its line.
const LINE_LIMIT: Duration = Duration::from_secs(5);
/// Connections with their line read, waiting for the server to take them.
const BACKLOG: usize = 64;

/// The line the gateway writes first on a connection it carries for `vm`.
pub fn preamble(vm: &str) -> String {
    format!("{PREFIX}{vm}\n")
}

/// The VM a guest connection was carried for (the connection's
/// `ConnectInfo` on the guests' listener).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPeer {
    pub vm: String,
}

/// Why a connection's first line was refused.
#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    #[error("no VM line within {} s", LINE_LIMIT.as_secs())]
    Slow,
    #[error("the connection ended before its VM line")]
    Closed,
    #[error("the first line does not name a VM")]
    Malformed,
    #[error("reading the VM line: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the VM line byte by byte (nothing after it is consumed: the HTTP
/// request that follows is the server's).
async fn read_preamble(stream: &mut TcpStream) -> Result<GuestPeer, PreambleError> {
    let mut line = Vec::with_capacity(LINE_MAX);
    loop {
        let byte = stream.read_u8().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                PreambleError::Closed
            } else {
                PreambleError::Io(e)
            }
        })?;
        if byte == b'\n' {
            break;
        }
        if line.len() == LINE_MAX {
            return Err(PreambleError::Malformed);
        }
        line.push(byte);
    }
    let vm = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.strip_prefix(PREFIX))
        .filter(|vm| {
            !vm.is_empty()
                && vm
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or(PreambleError::Malformed)?;
    Ok(GuestPeer { vm: vm.to_owned() })
}

/// A listener whose connections each start with the VM line; they are
/// handed on with it read, as `(stream, GuestPeer)`. Lines are read off the
/// accept loop, so a connection that sends nothing holds up no other.
pub struct GuestListener {
    ready: mpsc::Receiver<(TcpStream, GuestPeer)>,
    local: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl GuestListener {
    pub fn new(listener: TcpListener) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(BACKLOG);
        let accept = tokio::spawn(async move {
            loop {
                let (mut stream, from) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("guests' listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let read = tokio::time::timeout(LINE_LIMIT, read_preamble(&mut stream))
                        .await
                        .unwrap_or(Err(PreambleError::Slow));
                    match read {
                        Ok(peer) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Err(e) => tracing::warn!(%from, "guests' listener: refused: {e}"),
                    }
                });
            }
        });
        Ok(Self {
            ready,
            local,
            accept,
        })
    }

    /// The loopback address gateways dial.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for GuestListener {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl axum::serve::Listener for GuestListener {
    type Io = TcpStream;
    type Addr = GuestPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task ended (only on drop): no more connections.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(GuestPeer { vm: String::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn listener() -> (GuestListener, SocketAddr) {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = GuestListener::new(tcp).unwrap();
        let addr = listener.local_addr();
        (listener, addr)
    }

    #[tokio::test]
    async fn the_vm_line_is_read_and_nothing_after_it() {
        let (mut listener, addr) = listener().await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(format!("{}GET / HTTP/1.1\r\n", preamble("vm-a_1")).as_bytes())
            .await
            .unwrap();
        let (mut stream, peer) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(peer.vm, "vm-a_1");
        let mut rest = [0u8; 16];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn a_connection_without_a_good_line_is_never_handed_on() {
        let (mut listener, addr) = listener().await;
        for bad in [
            "GET / HTTP/1.1\r\n\r\n".to_string(),
            "CLAWPEN-VM \n".into(),
            "CLAWPEN-VM a b\n".into(),
            format!("CLAWPEN-VM {}\n", "a".repeat(200)),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(bad.as_bytes()).await.unwrap();
            // refused: the listener closes it
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{bad:?}: {read:?}");
        }
        // a silent connection holds up no other
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut good = TcpStream::connect(addr).await.unwrap();
        good.write_all(preamble("b").as_bytes()).await.unwrap();
        let (_, peer) = tokio::time::timeout(
            Duration::from_secs(2),
            axum::serve::Listener::accept(&mut listener),
        )
        .await
        .unwrap();
        assert_eq!(peer.vm, "b");
    }
}
