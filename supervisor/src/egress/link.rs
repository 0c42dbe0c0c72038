//! Guest Ethernet frames over the VMM's network link, in the two framings the
//! backends use, so the gateway has one frame I/O for both:
//!
//! - **stream** — QEMU `-netdev stream` on a unix socket: each frame is
//!   preceded by its length as a 4-byte big-endian number. QEMU serves the
//!   socket; the gateway connects (and reconnects after a supervisor restart).
//! - **datagram** — Virtualization.framework's
//!   `VZFileHandleNetworkDeviceAttachment` on one end of a
//!   `socketpair(AF_UNIX, SOCK_DGRAM)`: one frame per datagram, no prefix.
//!   The VM lives in the supervisor's process, so there is nothing to
//!   reconnect to: when the link ends, the gateway ends.
//!
//! Frames read are handed out in order, whole, and never longer than
//! [`MAX_FRAME`]; the bytes are the guest's and are checked by the stack, not
//! here.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixDatagram, UnixStream};

use super::stack::MAX_FRAME;

/// Bytes read from a stream link at a time (at least one largest frame).
const STREAM_READ: usize = 256 * 1024;
/// Most datagrams taken per wake-up, so one busy link cannot starve the
/// gateway's other work (dials, timers).
const DATAGRAM_BATCH: usize = 64;
/// Socket buffer sizes for a datagram pair. On macOS the largest datagram an
/// AF_UNIX socket sends is its send buffer (`net.local.dgram.maxdgram` is
/// 2 KiB by default), and the guest's MTU is 65520: the buffers must hold a
/// few of the largest frames. Apple's `VZFileHandleNetworkDeviceAttachment`
/// documentation asks for a receive buffer at least twice the send buffer.
// The datagram pair is made by the VZ backend (macOS only) and the tests.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub const DATAGRAM_SNDBUF: usize = 1024 * 1024;
/// See [`DATAGRAM_SNDBUF`].
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub const DATAGRAM_RCVBUF: usize = 4 * DATAGRAM_SNDBUF;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the VMM closed the network link")]
    Closed,
    #[error("network link I/O: {0}")]
    Io(#[from] io::Error),
    #[error("network link: frame length {len} out of range (at most {MAX_FRAME})")]
    FrameLength { len: usize },
}

/// Where a gateway finds its VM's link.
#[derive(Debug)]
pub enum LinkSource {
    /// QEMU serves `-netdev stream` on this unix socket; connect to it.
    Stream(PathBuf),
    /// The gateway's end of a datagram socketpair (see [`datagram_pair`]);
    /// the VMM holds the other end.
    Datagram(std::os::unix::net::UnixDatagram),
}

impl LinkSource {
    /// Opens the link: `Ok(None)` when a stream socket is not there (yet).
    /// Needs a tokio runtime.
    pub async fn open(&self) -> Result<Option<FrameLink>, LinkError> {
        match self {
            LinkSource::Stream(path) => match UnixStream::connect(path).await {
                Ok(stream) => Ok(Some(FrameLink::stream(stream))),
                Err(_) => Ok(None),
            },
            LinkSource::Datagram(socket) => {
                let socket = socket.try_clone()?;
                socket.set_nonblocking(true)?;
                Ok(Some(FrameLink::datagram(UnixDatagram::from_std(socket)?)))
            }
        }
    }

    /// Whether a closed link can be opened again (a stream socket that QEMU
    /// still serves) or is gone for good (a socketpair).
    pub fn reopens(&self) -> bool {
        matches!(self, LinkSource::Stream(_))
    }
}

/// A connected `socketpair(AF_UNIX, SOCK_DGRAM)` with buffers sized for the
/// largest frames: `(gateway end, VMM end)`.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub fn datagram_pair() -> io::Result<(
    std::os::unix::net::UnixDatagram,
    std::os::unix::net::UnixDatagram,
)> {
    let (gateway, vmm) = std::os::unix::net::UnixDatagram::pair()?;
    for socket in [&gateway, &vmm] {
        set_buffer(socket, libc::SO_SNDBUF, DATAGRAM_SNDBUF)?;
        set_buffer(socket, libc::SO_RCVBUF, DATAGRAM_RCVBUF)?;
    }
    Ok((gateway, vmm))
}

#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
fn set_buffer(socket: &impl AsRawFd, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is open for the duration of the call (borrowed from a
    // live socket), and `value` is a c_int whose size we pass as the option
    // length, as SO_SNDBUF / SO_RCVBUF expect.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One open link. Reading is split in two so the gateway can wait in
/// `select!`: [`FrameLink::fill`] waits for bytes (cancel-safe), then
/// [`FrameLink::take_frames`] hands out the complete frames.
pub enum FrameLink {
    Stream {
        rd: OwnedReadHalf,
        wr: BufWriter<OwnedWriteHalf>,
        /// Bytes read but not yet handed out (a frame may be incomplete).
        inbox: BytesMut,
    },
    Datagram {
        socket: UnixDatagram,
        /// Datagrams read, each stored as `[len: u32 BE][frame]`, the stream
        /// framing, so both variants share [`take_prefixed`].
        inbox: BytesMut,
        /// Frames dropped for being too long (logged once per link).
        oversized: u64,
    },
}

impl FrameLink {
    pub fn stream(stream: UnixStream) -> Self {
        let (rd, wr) = stream.into_split();
        FrameLink::Stream {
            rd,
            wr: BufWriter::with_capacity(STREAM_READ, wr),
            inbox: BytesMut::with_capacity(STREAM_READ),
        }
    }

    pub fn datagram(socket: UnixDatagram) -> Self {
        FrameLink::Datagram {
            socket,
            inbox: BytesMut::new(),
            oversized: 0,
        }
    }

    /// Waits until bytes have arrived. Cancel-safe: nothing is lost when the
    /// future is dropped before it completes.
    pub async fn fill(&mut self) -> Result<(), LinkError> {
        match self {
            FrameLink::Stream { rd, inbox, .. } => {
                inbox.reserve(STREAM_READ);
                match rd.read_buf(inbox).await? {
                    0 => Err(LinkError::Closed),
                    _ => Ok(()),
                }
            }
            FrameLink::Datagram {
                socket,
                inbox,
                oversized,
            } => loop {
                // `readable` is cancel-safe; the reads below never wait.
                socket.readable().await?;
                let mut got = 0;
                for _ in 0..DATAGRAM_BATCH {
                    match recv_datagram(socket, inbox) {
                        Ok(Received::Frame) => got += 1,
                        Ok(Received::Oversized(len)) => {
                            if *oversized == 0 {
                                tracing::warn!(len, "egress link: dropping an oversized frame");
                            }
                            *oversized += 1;
                        }
                        Ok(Received::Closed) if got == 0 => return Err(LinkError::Closed),
                        Ok(Received::Closed) => break,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                if got > 0 {
                    return Ok(());
                }
            },
        }
    }

    /// Hands every complete frame read so far to `each`, in order. An
    /// impossible length on a stream is an error (the framing is lost).
    pub fn take_frames(&mut self, each: impl FnMut(&[u8])) -> Result<(), LinkError> {
        match self {
            FrameLink::Stream { inbox, .. } | FrameLink::Datagram { inbox, .. } => {
                take_prefixed(inbox, each).map_err(|len| LinkError::FrameLength { len })
            }
        }
    }

    /// Sends frames to the guest, in order. On a datagram link a frame the
    /// socket has no room for is dropped (as a full NIC queue would; TCP
    /// resends), instead of stalling the gateway behind a guest that does
    /// not read.
    pub async fn send<F: AsRef<[u8]>>(
        &mut self,
        frames: impl IntoIterator<Item = F>,
    ) -> Result<(), LinkError> {
        match self {
            FrameLink::Stream { wr, .. } => {
                let mut wrote = false;
                for frame in frames {
                    let frame = frame.as_ref();
                    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                    wr.write_all(&len.to_be_bytes()).await?;
                    wr.write_all(frame).await?;
                    wrote = true;
                }
                if wrote {
                    wr.flush().await?;
                }
                Ok(())
            }
            FrameLink::Datagram { socket, .. } => {
                for frame in frames {
                    match socket.send(frame.as_ref()).await {
                        Ok(_) => {}
                        // macOS answers a full AF_UNIX datagram peer with
                        // ENOBUFS instead of blocking.
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            tracing::trace!("egress link: guest queue full, frame dropped");
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            }
        }
    }
}

enum Received {
    Frame,
    Oversized(usize),
    Closed,
}

/// Reads one datagram (without waiting) into `inbox` as `[len][frame]`.
fn recv_datagram(socket: &UnixDatagram, inbox: &mut BytesMut) -> io::Result<Received> {
    let start = inbox.len();
    // One byte more than the largest frame, to see a frame that is too long
    // (the kernel truncates silently).
    inbox.reserve(4 + MAX_FRAME + 1);
    inbox.put_slice(&[0; 4]);
    // Appends the datagram after the header, into the room reserved above.
    match socket.try_recv_buf(inbox) {
        Ok(0) => {
            inbox.truncate(start);
            Ok(Received::Closed)
        }
        Ok(n) if n > MAX_FRAME => {
            inbox.truncate(start);
            Ok(Received::Oversized(n))
        }
        Ok(n) => {
            let len = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
            inbox[start..start + 4].copy_from_slice(&len);
            Ok(Received::Frame)
        }
        Err(e) => {
            inbox.truncate(start);
            Err(e)
        }
    }
}

/// Hands every complete length-prefixed frame in `inbox` to `each` and keeps
/// the incomplete rest; `Err(len)` for an impossible length.
fn take_prefixed(inbox: &mut BytesMut, mut each: impl FnMut(&[u8])) -> Result<(), usize> {
    while let Some(header) = inbox.get(..4) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > MAX_FRAME {
            return Err(len);
        }
        if inbox.len() < 4 + len {
            break;
        }
        let frame = inbox.split_to(4 + len);
        each(&frame[4..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
