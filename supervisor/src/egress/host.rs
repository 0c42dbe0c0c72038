//! The host side of a flow: dialling (with the anti-rebinding check on every
//! address a name resolves to) and the two tasks that move bytes between a
//! host TCP connection and the stack.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clawpen_api::EgressProto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};

use super::resolve::Resolver;
use super::rules::{RuleSet, Verdict};
use super::stack::{DialError, DialTarget, FlowIo, HostData};

/// How long one connect attempt may take.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// Chunks queued each way per flow (of up to 64 KiB). The flow's real
/// buffer is its socket's (256 KiB each way, in the stack); these only keep
/// the host writer busy while the stack refills, so two are enough, and a
/// guest holding `MAX_FLOWS` flows full holds 128 KiB more per direction
/// each, not 512 KiB.
const QUEUE: usize = 2;
const READ_CHUNK: usize = 64 * 1024;

/// The host addresses a flow may go to: every address a name resolves to
/// that the rules allow for `proto` (anti-rebinding), or the literal one.
async fn candidates(
    target: DialTarget,
    proto: EgressProto,
    rules: &RuleSet,
    resolver: &Resolver,
    inference: Option<SocketAddr>,
) -> Result<Vec<SocketAddr>, DialError> {
    Ok(match target {
        DialTarget::Addr(addr) => vec![addr],
        DialTarget::Inference => vec![inference
            .ok_or_else(|| DialError::Failed("no inference service is configured".into()))?],
        DialTarget::Name { name, port } => {
            let resolved = resolver
                .lookup(&name, port)
                .await
                .map_err(|e| DialError::Failed(format!("cannot resolve {name}: {e}")))?;
            let mut allowed = Vec::new();
            let mut refused: Option<Verdict> = None;
            for addr in resolved {
                match rules.check_resolved(addr.ip(), proto, port) {
                    Ok(()) => allowed.push(addr),
                    Err(v) => {
                        refused.get_or_insert(v);
                    }
                }
            }
            if allowed.is_empty() {
                return Err(match refused {
                    Some(v) => DialError::Denied(Verdict {
                        reason: format!("{name}: {}", v.reason),
                        ..v
                    }),
                    None => DialError::Failed(format!("{name} has no address")),
                });
            }
            allowed
        }
    })
}

/// A host UDP socket connected to the flow's target (so only the target's
/// answers come back), after the same checks as a TCP dial.
pub async fn open_udp(
    target: DialTarget,
    rules: &RuleSet,
    resolver: &Resolver,
) -> Result<(UdpSocket, SocketAddr), DialError> {
    let addr = candidates(target, EgressProto::Udp, rules, resolver, None)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| DialError::Failed("no address to send to".into()))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let failed = |e: std::io::Error| DialError::Failed(format!("UDP to {addr}: {e}"));
    let socket = UdpSocket::bind(local).await.map_err(failed)?;
    socket.connect(addr).await.map_err(failed)?;
    Ok((socket, addr))
}

/// Opens the host connection for a flow of `vm`. A connection to the
/// inference service starts with the line naming the VM
/// (`clawpen_inference::guest_link`), written before any guest byte, so
/// the service holds each VM to its own key.
pub async fn dial(
    target: DialTarget,
    rules: &RuleSet,
    resolver: &Resolver,
    inference: Option<SocketAddr>,
    vm: &str,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let to_inference = matches!(target, DialTarget::Inference);
    let candidates = candidates(target, EgressProto::Tcp, rules, resolver, inference).await?;
    let mut last = String::from("no address to try");
    for addr in candidates {
        match tokio::time::timeout(CONNECT_LIMIT, TcpStream::connect(addr)).await {
            Ok(Ok(mut stream)) => {
                let _ = stream.set_nodelay(true);
                if to_inference {
                    let line = clawpen_inference::guest_link::preamble(vm);
                    stream
                        .write_all(line.as_bytes())
                        .await
                        .map_err(|e| DialError::Failed(format!("{addr}: naming the VM: {e}")))?;
                }
                return Ok((stream, addr));
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {} s", CONNECT_LIMIT.as_secs()),
        }
    }
    Err(DialError::Failed(last))
}

/// Starts the tasks that move a host connection's bytes; `wake` tells the
/// gateway there is data or room again. Both end when the stack drops its
/// ends of the channels.
pub fn spawn_io(stream: TcpStream, wake: Arc<Notify>) -> FlowIo {
    let (to_host, mut up) = mpsc::channel::<Bytes>(QUEUE);
    let (down, from_host) = mpsc::channel::<HostData>(QUEUE);
    let (mut rd, mut wr) = stream.into_split();
    let writer_wake = wake.clone();
    tokio::spawn(async move {
        while let Some(chunk) = up.recv().await {
            // Room in the queue again: the stack may read more from the guest.
            writer_wake.notify_one();
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = rd.read_buf(&mut buf) => read,
                () = down.closed() => break,
            };
            let message = match read {
                Ok(0) => break,
                Ok(_) => HostData::Data(buf.split().freeze()),
                Err(_) => HostData::Reset,
            };
            let reset = matches!(message, HostData::Reset);
            if down.send(message).await.is_err() || reset {
                break;
            }
            wake.notify_one();
        }
        // End of stream (the channel closes with this task).
        drop(down);
        wake.notify_one();
    });
    FlowIo { to_host, from_host }
}
