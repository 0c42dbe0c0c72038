//! The async shell around one VM's [`Stack`]: it opens the VMM's network
//! link ([`super::link`]: QEMU's `vms/NAME/net.sock` stream, or VZ's
//! datagram socketpair), feeds frames in, writes frames out, runs the dials
//! the stack asks for, and forwards log entries.
//!
//! QEMU is the socket's server so that a restarted supervisor can connect
//! again to a re-adopted VMM (QEMU 10 accepts a new client after the old one
//! went away). When the link drops, the gateway reconnects; the stack (and
//! its synthetic addresses) survives that.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clawpen_api::VmName;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::fakeip::FakeIps;
use super::host;
use super::link::LinkSource;
use super::log::{LogOp, VmLog};
use super::resolve::Resolver;
use super::rules::RuleSet;
use super::stack::{Action, DialError, FlowId, FlowIo, Now, Stack};
use super::udp::{UdpEvent, UdpRelays};

/// Pause between attempts to reach the VMM's socket.
const RECONNECT: Duration = Duration::from_millis(100);
/// Longest sleep when smoltcp has no timer pending.
const IDLE: Duration = Duration::from_secs(1);

/// What every gateway shares with the supervisor.
pub struct GatewayContext {
    pub vm: VmName,
    pub link: LinkSource,
    pub rules: watch::Receiver<Arc<RuleSet>>,
    pub fake: FakeIps,
    pub ids: Arc<AtomicU64>,
    pub resolver: Arc<Resolver>,
    pub inference: watch::Receiver<Option<SocketAddr>>,
    pub log: VmLog,
    /// Host connections to carry into the guest (supervisor forwards).
    pub forwards: mpsc::UnboundedReceiver<Forwarded>,
}

/// A host client's connection for a guest port.
pub type Forwarded = (tokio::net::TcpStream, u16);

/// A running gateway; dropping it stops it (the VMM went away).
///
/// Each gateway runs on a thread of its own with a single-threaded runtime:
/// a new connection's path (guest frame in, dial, host bytes, frames out)
/// then hands work between its tasks without waking other threads, which on
/// a host whose cores are busy with TCG vCPUs costs a scheduling delay per
/// wake-up. Its tasks (dials, host connections, UDP relays) live and die
/// with that runtime.
pub struct GatewayHandle {
    /// Dropped to stop the gateway.
    _stop: oneshot::Sender<()>,
}

/// Starts the gateway's thread.
pub fn spawn(ctx: GatewayContext) -> Result<GatewayHandle, std::io::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(format!("egress-{}", ctx.vm))
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = run(ctx) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here cancels the gateway's tasks.
        })?;
    Ok(GatewayHandle { _stop: stop })
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

/// How often dropped UDP replies are reported (with their running total).
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

async fn run(mut ctx: GatewayContext) {
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
    let (udp_tx, mut udp_rx) = mpsc::channel::<UdpEvent>(super::udp::EVENT_QUEUE);
    let mut udp = UdpRelays::new(udp_tx);
    // Drops are reported with their running total, at most every
    // DROP_REPORT_EVERY (not once per datagram).
    let mut udp_dropped_reported = 0;
    let mut udp_reported_at: Option<std::time::Instant> = None;
    let mut attached_once = false;
    loop {
        let mut link = match ctx.link.open().await {
            Ok(Some(link)) => link,
            Ok(None) => {
                tokio::time::sleep(RECONNECT).await;
                continue;
            }
            Err(e) => {
                tracing::error!(vm = %ctx.vm, error = %e, "egress link unusable; the VM has no network");
                return;
            }
        };
        tracing::debug!(vm = %ctx.vm, reconnect = attached_once, "egress gateway attached");
        attached_once = true;
        loop {
            let delay = stack.poll_delay(clock.now()).unwrap_or(IDLE).min(IDLE);
            // Frames are read here, not in a task of their own: one hop less
            // per frame (`fill` is cancel-safe).
            tokio::select! {
                read = link.fill() => match read {
                    Ok(()) => {
                        let now = clock.now();
                        if let Err(e) = link.take_frames(|frame| stack.receive(frame, now)) {
                            tracing::warn!(vm = %ctx.vm, error = %e, "dropping the egress link");
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(vm = %ctx.vm, error = %e, "egress link ended");
                        break;
                    }
                },
                Some((id, result)) = dial_rx.recv() => stack.dialed(id, result, clock.now()),
                Some(event) = udp_rx.recv() => match event {
                    UdpEvent::Opened(key, socket) => udp.opened(key, socket),
                    UdpEvent::Failed(key, error) => {
                        udp.close(key);
                        stack.udp_failed(key, error, clock.now());
                    }
                    UdpEvent::Reply(key, payload) => stack.udp_reply(key, &payload, clock.now()),
                },
                Some((stream, port)) = ctx.forwards.recv() => {
                    let _ = stream.set_nodelay(true);
                    let io = host::spawn_io(stream, wake.clone());
                    if !stack.forward(io, port, clock.now()) {
                        tracing::warn!(vm = %ctx.vm, port, "forward refused: too many connections");
                    }
                }
                () = wake.notified() => {}
                () = tokio::time::sleep(delay) => {}
            }
            let now = clock.now();
            stack.poll(now);
            ctx.log.flush(now.unix_ms);
            for action in stack.take_actions() {
                match action {
                    Action::UdpOpen { key, target, first } => udp.open(
                        key,
                        target,
                        first,
                        ctx.rules.borrow().clone(),
                        ctx.resolver.clone(),
                    ),
                    Action::UdpSend { key, payload } => udp.send(key, payload),
                    Action::UdpClose { key } => udp.close(key),
                    other => act(&ctx, other, &dial_tx, &wake),
                }
            }
            if udp.dropped() > udp_dropped_reported
                && udp_reported_at.is_none_or(|at| at.elapsed() >= DROP_REPORT_EVERY)
            {
                udp_dropped_reported = udp.dropped();
                udp_reported_at = Some(std::time::Instant::now());
                tracing::warn!(
                    vm = %ctx.vm,
                    dropped = udp_dropped_reported,
                    "UDP replies dropped: the guest is not taking frames"
                );
            }
            if link.send(stack.take_frames()).await.is_err() {
                break;
            }
        }
        if !ctx.link.reopens() {
            tracing::debug!(vm = %ctx.vm, "egress gateway link closed for good");
            return;
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
        // UDP relays live in the loop (they hold per-flow state).
        Action::UdpOpen { .. } | Action::UdpSend { .. } | Action::UdpClose { .. } => {}
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
            let vm = ctx.vm.clone();
            tokio::spawn(async move {
                let result = host::dial(target, &rules, &resolver, inference, vm.as_str())
                    .await
                    .map(|(stream, peer)| (host::spawn_io(stream, wake), peer));
                let _ = dial_tx.send((id, result));
            });
        }
    }
}
