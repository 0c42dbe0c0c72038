//! The async shell around one VM's [`Stack`]: it connects to the VMM's
//! network socket (`vms/NAME/net.sock`, QEMU `-netdev stream,server=on`:
//! frames with a 4-byte big-endian length prefix), feeds frames in, writes
//! frames out, runs the dials the stack asks for, and forwards log entries.
//!
//! QEMU is the socket's server so that a restarted supervisor can connect
//! again to a re-adopted VMM (QEMU 10 accepts a new client after the old one
//! went away). When the link drops, the gateway reconnects; the stack (and
//! its synthetic addresses) survives that.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use clawpen_api::VmName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::fakeip::FakeIps;
use super::host;
use super::log::{LogOp, LogSender};
use super::resolve::Resolver;
use super::rules::RuleSet;
use super::stack::{Action, DialError, FlowId, FlowIo, Now, Stack, MAX_FRAME};

/// Pause between attempts to reach the VMM's socket.
const RECONNECT: Duration = Duration::from_millis(100);
/// Longest sleep when smoltcp has no timer pending.
const IDLE: Duration = Duration::from_secs(1);
/// Bytes read from the link at a time (at least one largest frame).
const READ_BUFFER: usize = 256 * 1024;

/// What every gateway shares with the supervisor.
pub struct GatewayContext {
    pub vm: VmName,
    pub socket: PathBuf,
    pub rules: watch::Receiver<Arc<RuleSet>>,
    pub fake: FakeIps,
    pub ids: Arc<AtomicU64>,
    pub resolver: Arc<Resolver>,
    pub inference: watch::Receiver<Option<SocketAddr>>,
    pub log: LogSender,
}

/// A running gateway; dropping it stops it (the VMM went away).
pub struct GatewayHandle {
    task: JoinHandle<()>,
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn spawn(ctx: GatewayContext) -> GatewayHandle {
    GatewayHandle {
        task: tokio::spawn(run(ctx)),
    }
}

struct Clock(std::time::Instant);

impl Clock {
    fn now(&self) -> Now {
        let mono = smoltcp::time::Instant::from_micros(
            i64::try_from(self.0.elapsed().as_micros()).unwrap_or(i64::MAX),
        );
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Now { mono, unix_ms }
    }
}

type DialResult = (FlowId, Result<(FlowIo, SocketAddr), DialError>);

async fn run(ctx: GatewayContext) {
    let clock = Clock(std::time::Instant::now());
    let mut stack = Stack::new(
        ctx.vm.clone(),
        ctx.rules.clone(),
        ctx.fake.clone(),
        ctx.ids.clone(),
        clock.now(),
    );
    let wake = Arc::new(Notify::new());
    let (dial_tx, mut dial_rx) = mpsc::unbounded_channel::<DialResult>();
    let mut attached_once = false;
    loop {
        let stream = match UnixStream::connect(&ctx.socket).await {
            Ok(stream) => stream,
            Err(_) => {
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
        };
        tracing::debug!(vm = %ctx.vm, reconnect = attached_once, "egress gateway attached");
        attached_once = true;
        let (mut rd, wr) = stream.into_split();
        let mut inbox = BytesMut::with_capacity(READ_BUFFER);
        let mut writer = BufWriter::with_capacity(256 * 1024, wr);
        loop {
            let delay = stack.poll_delay(clock.now()).unwrap_or(IDLE).min(IDLE);
            inbox.reserve(READ_BUFFER);
            // Frames are read here, not in a task of their own: one hop less
            // per frame (`read_buf` is cancel-safe).
            tokio::select! {
                read = rd.read_buf(&mut inbox) => match read {
                    Ok(n) if n > 0 => {
                        let now = clock.now();
                        match take_frames(&mut inbox, |frame| stack.receive(frame, now)) {
                            Ok(()) => {}
                            Err(len) => {
                                tracing::warn!(vm = %ctx.vm, len, "egress link: frame length out of range; dropping the link");
                                break;
                            }
                        }
                    }
                    _ => break,
                },
                Some((id, result)) = dial_rx.recv() => stack.dialed(id, result, clock.now()),
                () = wake.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
            stack.poll(clock.now());
            for action in stack.take_actions() {
                act(&ctx, action, &dial_tx, &wake);
            }
            if write_frames(&mut writer, &mut stack).await.is_err() {
                break;
            }
        }
        tracing::debug!(vm = %ctx.vm, "egress gateway link closed; reconnecting");
        tokio::time::sleep(RECONNECT).await;
    }
}

fn act(
    ctx: &GatewayContext,
    action: Action,
    dial_tx: &mpsc::UnboundedSender<DialResult>,
    wake: &Arc<Notify>,
) {
    match action {
        Action::Log(entry) => ctx.log.send(LogOp::Entry(entry)),
        Action::Remember { addr, name } => ctx.log.send(LogOp::Name {
            vm: ctx.vm.clone(),
            addr,
            name,
        }),
        Action::Dial { id, target } => {
            // The rules as they are now: a change applies to the next dial.
            let rules = ctx.rules.borrow().clone();
            let resolver = ctx.resolver.clone();
            let inference = *ctx.inference.borrow();
            let dial_tx = dial_tx.clone();
            let wake = wake.clone();
            tokio::spawn(async move {
                let result = host::dial(target, &rules, &resolver, inference)
                    .await
                    .map(|(stream, peer)| (host::spawn_io(stream, wake), peer));
                let _ = dial_tx.send((id, result));
            });
        }
    }
}

async fn write_frames(
    writer: &mut BufWriter<tokio::net::unix::OwnedWriteHalf>,
    stack: &mut Stack,
) -> std::io::Result<()> {
    let mut wrote = false;
    for frame in stack.take_frames() {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        writer.write_all(&len.to_be_bytes()).await?;
        writer.write_all(&frame).await?;
        wrote = true;
    }
    if wrote {
        writer.flush().await?;
    }
    Ok(())
}

/// Hands every complete length-prefixed frame in `inbox` to `each` and keeps
/// the incomplete rest; `Err(len)` for an impossible length.
fn take_frames(inbox: &mut BytesMut, mut each: impl FnMut(&[u8])) -> Result<(), usize> {
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
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_at_their_length_prefix() {
        let mut inbox = BytesMut::new();
        inbox.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 3, b'c']);
        let mut seen = Vec::new();
        take_frames(&mut inbox, |f| seen.push(f.to_vec())).unwrap();
        assert_eq!(seen, vec![b"ab".to_vec()]);
        assert_eq!(&inbox[..], &[0, 0, 0, 3, b'c']);
        inbox.extend_from_slice(b"de");
        take_frames(&mut inbox, |f| seen.push(f.to_vec())).unwrap();
        assert_eq!(seen[1], b"cde".to_vec());
        assert!(inbox.is_empty());
        inbox.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(take_frames(&mut inbox, |_| {}).is_err());
    }
}
