//! The gateway's frame handler: one VM's side of the link, as a synchronous
//! state machine (no I/O, no runtime), so the fuzz tests can drive it with
//! any bytes.
//!
//! Every guest frame is classified first ([`wire::classify`]); DHCP and DNS
//! are answered here, every new TCP connection is decided by the rules
//! *before* smoltcp sees its SYN (a denied SYN finds no socket, and smoltcp
//! answers it with RST), and an allowed one gets a listening socket for
//! exactly its (destination, port). smoltcp (`any_ip`) terminates the
//! guest's TCP; what the stack needs from the outside (a host connection, a
//! log line) comes out as [`Action`]s for the async shell in `gateway.rs`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use clawpen_api::{EgressAction, EgressLogEntry, EgressLogProto, EgressProto, VmName};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpListenEndpoint};
use tokio::sync::{mpsc, watch};

use super::dhcp;
use super::dns::{self, DnsPolicy};
use super::fakeip::FakeIps;
use super::http_stream::HttpRequests;
use super::net::{
    in_fake_pool, DNS_PORT, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, INFERENCE_NAME, INFERENCE_PORT,
    PREFIX_LEN,
};
use super::rules::{RuleSet, Verdict};
use super::sniff::{self, Sniffed, MAX_SNIFF};
use super::wire::{self, GuestFrame, Ipv4Frame, L4};

/// Per-connection socket buffers (guest side): four 64 KiB segments in
/// flight each way; [`MAX_FLOWS`] bounds what a guest can make us hold
/// (256 x 512 KiB).
const SOCKET_BUFFER: usize = 256 * 1024;
/// Gateway-side ports of forwarded connections into the guest.
const FORWARD_PORTS: std::ops::Range<u16> = 40_000..60_000;
/// A UDP flow with no datagram either way for this long is closed.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// UDP flows open at once per VM.
const MAX_UDP_FLOWS: usize = 256;
/// Connections open at once per VM; more are refused (and logged).
pub const MAX_FLOWS: usize = 256;
/// Largest chunk handed to a host connection at a time.
const CHUNK: usize = 64 * 1024;
/// How long the guest has to send its ClientHello / HTTP request on 443 / 80.
const SNIFF_LIMIT: Duration = Duration::from_secs(10);
/// A dropped frame of one kind (IPv6, ICMP, UDP) to one place is logged once
/// per this long, not once per frame.
const NOTE_EVERY: Duration = Duration::from_secs(30);
/// Largest frame accepted from the link (64 KiB payload + header).
pub const MAX_FRAME: usize = 65536 + 14;

pub type FlowId = u64;

/// Data from a host connection to the guest.
#[derive(Debug)]
pub enum HostData {
    Data(Bytes),
    /// The host connection failed or was reset: reset the guest's too.
    Reset,
}

/// The host side of an open flow, as the stack sees it.
#[derive(Debug)]
pub struct FlowIo {
    pub to_host: mpsc::Sender<Bytes>,
    pub from_host: mpsc::Receiver<HostData>,
}

/// Where the shell should dial for a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialTarget {
    /// Resolve on the host (rebinding checks apply), then connect.
    Name { name: String, port: u16 },
    /// A literal address the rules allowed.
    Addr(SocketAddr),
    /// The supervisor's inference service.
    Inference,
}

/// Why a dial did not give a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// A check at dial time refused it (the name resolves to a private range, ...).
    Denied(Verdict),
    /// Allowed, but the host could not connect.
    Failed(String),
}

/// What the stack needs done outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Dial {
        id: FlowId,
        target: DialTarget,
    },
    /// Write (or update: same id) a log entry, then announce it.
    Log(EgressLogEntry),
    /// A new synthetic address to persist.
    Remember {
        addr: Ipv4Addr,
        name: String,
    },
    /// An allowed UDP flow's first datagram: open a host socket to `target`
    /// (its checks done at that time), send `first`, relay answers back
    /// with [`Stack::udp_reply`].
    UdpOpen {
        key: UdpKey,
        target: DialTarget,
        first: Bytes,
    },
    /// A further datagram of an open UDP flow.
    UdpSend {
        key: UdpKey,
        payload: Bytes,
    },
    /// The UDP flow went idle: drop its host socket.
    UdpClose {
        key: UdpKey,
    },
}

/// A UDP flow as the guest sees it: its source port, the destination
/// address it sent to (synthetic or literal) and port.
pub type UdpKey = (u16, Ipv4Addr, u16);

/// An allowed UDP flow (datagrams relayed both ways until idle).
struct UdpFlow {
    entry: EgressLogEntry,
    /// How the flow is decided again when the rules change.
    recheck: Recheck,
    guest: (EthernetAddress, Ipv4Addr),
    up: u64,
    down: u64,
    last: Instant,
}

/// The stack's clocks: smoltcp's monotonic one and the wall clock for logs.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

/// Frame queues between the link and smoltcp.
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct RxFrame(Vec<u8>);
struct TxFrame<'a>(&'a mut VecDeque<Vec<u8>>);

impl smoltcp::phy::RxToken for RxFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl smoltcp::phy::TxToken for TxFrame<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

impl Device for Queues {
    type RxToken<'a> = RxFrame;
    type TxToken<'a> = TxFrame<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxFrame, TxFrame<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((RxFrame(frame), TxFrame(&mut self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxFrame<'_>> {
        Some(TxFrame(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(super::net::MTU) + 14;
        caps
    }
}

/// What a flow's first bytes must be to name the flow's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SniffKind {
    Tls,
    Http,
    /// A port its rule does not name: TLS or HTTP, by the first byte.
    TlsOrHttp,
}

impl SniffKind {
    /// The kind the first bytes show; `Err` when they are neither TLS nor
    /// HTTP where only those may go.
    fn resolve(self, first: Option<u8>) -> Result<Self, &'static str> {
        match (self, first) {
            (Self::TlsOrHttp, Some(22)) => Ok(Self::Tls),
            (Self::TlsOrHttp, Some(b)) if b.is_ascii_uppercase() => Ok(Self::Http),
            (Self::TlsOrHttp, Some(_)) => {
                Err("neither TLS nor HTTP: other protocols go only to ports a rule names")
            }
            (kind, _) => Ok(kind),
        }
    }
}

enum Phase {
    /// Reading the guest's first bytes for the name it asks for.
    Sniff {
        kind: SniffKind,
        name: String,
        deadline: Instant,
        buf: Vec<u8>,
    },
    /// Waiting for the host connection; the guest's bytes wait in the
    /// socket, and a failed dial resets the guest's connection.
    Dialing,
    /// Moving bytes both ways.
    Open,
    /// DNS over TCP to the gateway: answered here.
    Dns { inbox: Vec<u8>, outbox: Vec<u8> },
    /// Refused or reset: waiting for smoltcp to send the RST.
    Closing,
}

struct Flow {
    handle: SocketHandle,
    phase: Phase,
    /// The flow's log entry; decision fields are final once `logged`.
    entry: EgressLogEntry,
    logged: bool,
    ended: bool,
    up: u64,
    down: u64,
    to_host: Option<mpsc::Sender<Bytes>>,
    pending_up: Option<Bytes>,
    from_host: Option<mpsc::Receiver<HostData>>,
    pending_down: Option<Bytes>,
    host_eof: bool,
    fin_sent: bool,
    /// Port 80 flows: every later request's Host is checked too.
    http: Option<HttpRequests>,
    /// How the flow is decided again when the rules change.
    recheck: Recheck,
    /// When bytes last moved either way (or the flow began).
    last_active: Instant,
}

/// What a flow is decided on, to decide it again when the rules change:
/// removing a rule ends the flows it allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Recheck {
    Name(String),
    Literal(IpAddr),
    Inference,
    /// DNS to the gateway and forwards from the host: no rule allowed them.
    Never,
}

impl Recheck {
    /// The verdict under `rules` for the flow logged as `entry`, when it is
    /// a deny; `None` when the flow may go on (or is never decided again).
    fn denies(
        &self,
        rules: &RuleSet,
        proto: EgressProto,
        entry: &EgressLogEntry,
    ) -> Option<Verdict> {
        let port = entry.port.unwrap_or_default();
        let verdict = match self {
            Self::Name(name) => rules.connect_name(name, proto, port),
            Self::Literal(ip) => rules.connect_ip(*ip, proto, port),
            Self::Inference => rules.inference(INFERENCE_NAME, IpAddr::V4(GATEWAY_IP), port),
            Self::Never => return None,
        };
        (!verdict.allow).then_some(verdict)
    }
}

/// Turns a flow's log entry into the deny that ended it on a rule change.
fn ended_by_rules(entry: &mut EgressLogEntry, verdict: Verdict) {
    entry.decision = EgressAction::Deny;
    entry.rule = verdict.rule;
    entry.reason = format!(
        "{}; ended when the rules changed: {}",
        entry.reason, verdict.reason
    );
}

/// HTTP/3's port; see the UDP decision in `Stack::on_udp`.
const QUIC_PORT: u16 = 443;

/// An open TCP flow that moves no byte either way for this long is ended:
/// a guest must not pin host connections (and their buffers) for ever.
const TCP_IDLE: Duration = Duration::from_secs(10 * 60);

/// One VM's gateway state.
pub struct Stack {
    vm: VmName,
    rules: watch::Receiver<Arc<RuleSet>>,
    fake: FakeIps,
    ids: Arc<AtomicU64>,
    iface: Interface,
    device: Queues,
    sockets: SocketSet<'static>,
    flows: HashMap<FlowId, Flow>,
    next_flow: FlowId,
    /// When a dropped-frame kind was last logged, per (proto, address, port).
    noted: HashMap<(EgressLogProto, IpAddr, Option<u16>), Instant>,
    udp: HashMap<UdpKey, UdpFlow>,
    actions: Vec<Action>,
}

/// DNS answers with the VM's rules and synthetic addresses.
struct Policy<'a> {
    rules: &'a RuleSet,
    fake: &'a mut FakeIps,
    remembered: Vec<(Ipv4Addr, String)>,
}

impl DnsPolicy for Policy<'_> {
    fn resolve(&mut self, name: &str) -> Verdict {
        if name == INFERENCE_NAME {
            return self
                .rules
                .inference(name, IpAddr::V4(GATEWAY_IP), INFERENCE_PORT);
        }
        self.rules.resolve(name)
    }

    fn address(&mut self, name: &str) -> Option<Ipv4Addr> {
        if name == INFERENCE_NAME {
            return Some(GATEWAY_IP);
        }
        let (addr, new) = self.fake.assign(name)?;
        if new {
            self.remembered.push((addr, name.to_string()));
        }
        Some(addr)
    }
}

fn guest_finished(state: tcp::State) -> bool {
    matches!(
        state,
        tcp::State::CloseWait
            | tcp::State::LastAck
            | tcp::State::Closing
            | tcp::State::TimeWait
            | tcp::State::Closed
    )
}

impl Stack {
    pub fn new(
        vm: VmName,
        rules: watch::Receiver<Arc<RuleSet>>,
        fake: FakeIps,
        ids: Arc<AtomicU64>,
        now: Now,
    ) -> Self {
        let mut device = Queues::default();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut device, now.mono);
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_IP), PREFIX_LEN));
        });
        // Accept every destination: each connection is terminated here.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY_IP);
        Self {
            vm,
            rules,
            fake,
            ids,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            flows: HashMap::new(),
            next_flow: 1,
            noted: HashMap::new(),
            udp: HashMap::new(),
            actions: Vec::new(),
        }
    }

    /// Frames for the guest, in order.
    pub fn take_frames(&mut self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.device.tx.drain(..)
    }

    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// How long until smoltcp wants [`Stack::poll`] again (timers).
    pub fn poll_delay(&mut self, now: Now) -> Option<std::time::Duration> {
        let sniff = self
            .flows
            .values()
            .filter_map(|f| match &f.phase {
                Phase::Sniff { deadline, .. } => Some(*deadline),
                _ => None,
            })
            .min()
            .map(|d| {
                if d > now.mono {
                    d - now.mono
                } else {
                    Duration::ZERO
                }
            });
        let smol = self.iface.poll_delay(now.mono, &self.sockets);
        let delay = match (smol, sniff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        delay.map(|d| std::time::Duration::from_micros(d.total_micros()))
    }

    /// Open flows.
    #[cfg(test)]
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// DNS-over-TCP bytes held (queries read, replies unsent), all flows.
    #[cfg(test)]
    pub fn dns_backlog(&self) -> usize {
        self.flows
            .values()
            .map(|f| match &f.phase {
                Phase::Dns { inbox, outbox } => inbox.len() + outbox.len(),
                _ => 0,
            })
            .sum()
    }

    fn new_entry(
        &self,
        now: Now,
        proto: EgressLogProto,
        name: Option<String>,
        addr: Option<IpAddr>,
        port: Option<u16>,
        verdict: &Verdict,
    ) -> EgressLogEntry {
        EgressLogEntry {
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            vm: self.vm.clone(),
            time_unix_ms: now.unix_ms,
            proto,
            name,
            addr: addr.map(|a| a.to_string()),
            port,
            decision: if verdict.allow {
                EgressAction::Allow
            } else {
                EgressAction::Deny
            },
            rule: verdict.rule,
            reason: verdict.reason.clone(),
            bytes_up: None,
            bytes_down: None,
            ended_unix_ms: None,
        }
    }

    /// Logs a dropped frame once per [`NOTE_EVERY`] per kind and place.
    fn note(
        &mut self,
        now: Now,
        proto: EgressLogProto,
        name: Option<String>,
        (addr, port): (IpAddr, Option<u16>),
        verdict: &Verdict,
    ) {
        let key = (proto, addr, port);
        if self
            .noted
            .get(&key)
            .is_some_and(|at| now.mono < *at + NOTE_EVERY)
        {
            return;
        }
        if self.noted.len() > 4096 {
            self.noted.clear();
        }
        self.noted.insert(key, now.mono);
        let entry = self.new_entry(now, proto, name, Some(addr), port, verdict);
        self.actions.push(Action::Log(entry));
    }

    /// Handles one frame from the guest.
    pub fn receive(&mut self, frame: &[u8], now: Now) {
        if frame.len() > MAX_FRAME {
            return;
        }
        match wire::classify(frame) {
            GuestFrame::Arp => self.ingest(frame, now),
            GuestFrame::Ipv6 {
                dst,
                next_header,
                port,
            } => {
                let reason = format!(
                    "IPv6 is not offered (next header {next_header}); every IPv6 frame is dropped"
                );
                let verdict = Verdict::deny(None, reason);
                self.note(
                    now,
                    EgressLogProto::Ipv6,
                    None,
                    (IpAddr::V6(dst), port),
                    &verdict,
                );
            }
            GuestFrame::Ipv4(v4) => self.receive_v4(frame, v4, now),
            GuestFrame::Other => {}
        }
    }

    fn ingest(&mut self, frame: &[u8], now: Now) {
        self.device.rx.push_back(frame.to_vec());
        self.iface
            .poll_ingress_single(now.mono, &mut self.device, &mut self.sockets);
    }

    fn receive_v4(&mut self, frame: &[u8], v4: Ipv4Frame<'_>, now: Now) {
        match v4.l4 {
            L4::TcpSyn { src_port, dst_port } => self.on_syn(frame, &v4, src_port, dst_port, now),
            L4::Tcp => self.ingest(frame, now),
            L4::Udp {
                src_port,
                dst_port,
                payload,
            } => self.on_udp(&v4, src_port, dst_port, payload, now),
            L4::IcmpEcho if v4.dst == GATEWAY_IP => self.ingest(frame, now),
            L4::IcmpEcho | L4::Icmp => {
                if !v4.dst.is_broadcast() && !v4.dst.is_multicast() {
                    let verdict =
                        Verdict::deny(None, "ICMP is answered only by the gateway itself");
                    self.note(
                        now,
                        EgressLogProto::Icmp,
                        None,
                        (IpAddr::V4(v4.dst), None),
                        &verdict,
                    );
                }
            }
            L4::Fragment | L4::Other(_) if v4.dst.is_broadcast() || v4.dst.is_multicast() => {}
            L4::Fragment => {
                // A fragment's port is in the first one only: no relay could
                // check it, so none is reassembled (guests send whole packets
                // below the link's MTU; only an oversized datagram without
                // DF comes in pieces).
                let verdict = Verdict::deny(
                    None,
                    "IP fragments are never reassembled: every one is dropped",
                );
                self.note(
                    now,
                    EgressLogProto::Ip,
                    None,
                    (IpAddr::V4(v4.dst), None),
                    &verdict,
                );
            }
            L4::Other(protocol) => {
                let reason = match protocol {
                    6 | 17 => "a malformed TCP or UDP packet".to_owned(),
                    p => format!("IP protocol {p} is not relayed (only TCP, UDP and ICMP)"),
                };
                let verdict = Verdict::deny(None, reason);
                self.note(
                    now,
                    EgressLogProto::Ip,
                    None,
                    (IpAddr::V4(v4.dst), None),
                    &verdict,
                );
            }
        }
    }

    fn on_udp(
        &mut self,
        v4: &Ipv4Frame<'_>,
        src_port: u16,
        dst_port: u16,
        payload: &[u8],
        now: Now,
    ) {
        if dst_port == dhcp::SERVER_PORT && (v4.dst == GATEWAY_IP || v4.dst.is_broadcast()) {
            if let Some(answer) = dhcp::reply(payload) {
                if let Some(frame) = wire::udp_frame(
                    dhcp::reply_mac(),
                    (GATEWAY_IP, dhcp::SERVER_PORT),
                    (Ipv4Addr::BROADCAST, dhcp::CLIENT_PORT),
                    &answer,
                ) {
                    self.device.tx.push_back(frame);
                }
            }
            return;
        }
        if v4.dst == GATEWAY_IP && dst_port == DNS_PORT {
            if let Some(reply) = self.dns(payload, now, "UDP") {
                if let Some(frame) = wire::udp_frame(
                    v4.src_mac,
                    (GATEWAY_IP, DNS_PORT),
                    (v4.src, src_port),
                    &reply,
                ) {
                    self.device.tx.push_back(frame);
                }
            }
            return;
        }
        if v4.dst.is_broadcast() || v4.dst.is_multicast() {
            return;
        }
        let rules = self.rules.borrow().clone();
        let (name, verdict) = match self.destination(v4.dst) {
            Destination::Name(name) => {
                let v = rules.connect_name(&name, EgressProto::Udp, dst_port);
                // QUIC (UDP 443) carries the name asked for in an Initial
                // the gateway does not decrypt: it goes only where the rule
                // names the port; elsewhere clients fall back to TLS on TCP,
                // whose SNI is checked.
                let v = if v.allow && dst_port == QUIC_PORT && !rules.names_port(v.rule, QUIC_PORT)
                {
                    Verdict::deny(
                        None,
                        "QUIC (UDP 443) hides the name from the gateway: it goes only \
                         where a rule names port 443 (clients fall back to TCP)",
                    )
                } else {
                    v
                };
                (Some(name), v)
            }
            Destination::Literal => (
                None,
                rules.connect_ip(IpAddr::V4(v4.dst), EgressProto::Udp, dst_port),
            ),
            Destination::Unknown => (None, Verdict::deny(None, "unknown synthetic address")),
            Destination::Gateway => (
                None,
                Verdict::deny(None, "the gateway answers UDP only for DHCP and DNS"),
            ),
        };
        let place = (IpAddr::V4(v4.dst), Some(dst_port));
        let key: UdpKey = (src_port, v4.dst, dst_port);
        if !verdict.allow {
            self.udp.remove(&key);
            self.note(now, EgressLogProto::Udp, name, place, &verdict);
            return;
        }
        let payload = Bytes::copy_from_slice(payload);
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.up += payload.len() as u64;
            flow.last = now.mono;
            self.actions.push(Action::UdpSend { key, payload });
            return;
        }
        if self.udp.len() >= MAX_UDP_FLOWS {
            let verdict =
                Verdict::deny(None, format!("too many UDP flows (limit {MAX_UDP_FLOWS})"));
            self.note(now, EgressLogProto::Udp, name, place, &verdict);
            return;
        }
        let (target, recheck) = match &name {
            Some(name) => (
                DialTarget::Name {
                    name: name.clone(),
                    port: dst_port,
                },
                Recheck::Name(name.clone()),
            ),
            None => (
                DialTarget::Addr(SocketAddr::new(IpAddr::V4(v4.dst), dst_port)),
                Recheck::Literal(IpAddr::V4(v4.dst)),
            ),
        };
        let entry = self.new_entry(
            now,
            EgressLogProto::Udp,
            name,
            Some(IpAddr::V4(v4.dst)),
            Some(dst_port),
            &verdict,
        );
        self.actions.push(Action::Log(entry.clone()));
        self.udp.insert(
            key,
            UdpFlow {
                entry,
                recheck,
                guest: (v4.src_mac, v4.src),
                up: payload.len() as u64,
                down: 0,
                last: now.mono,
            },
        );
        self.actions.push(Action::UdpOpen {
            key,
            target,
            first: payload,
        });
    }

    /// An answer from a UDP flow's host side, for the guest.
    pub fn udp_reply(&mut self, key: UdpKey, payload: &[u8], now: Now) {
        let Some(flow) = self.udp.get_mut(&key) else {
            return;
        };
        let (src_port, dst, dst_port) = key;
        let Some(frame) = wire::udp_frame(
            flow.guest.0,
            (dst, dst_port),
            (flow.guest.1, src_port),
            payload,
        ) else {
            return;
        };
        flow.down += payload.len() as u64;
        flow.last = now.mono;
        self.device.tx.push_back(frame);
    }

    /// A UDP flow's host side could not be opened (a check at that time
    /// refused it, or the host could not send): the flow ends, logged so.
    pub fn udp_failed(&mut self, key: UdpKey, error: DialError, now: Now) {
        let Some(mut flow) = self.udp.remove(&key) else {
            return;
        };
        match error {
            DialError::Denied(verdict) => {
                flow.entry.decision = EgressAction::Deny;
                flow.entry.rule = verdict.rule;
                flow.entry.reason = verdict.reason;
            }
            DialError::Failed(why) => {
                flow.entry.reason = format!("{}; UDP failed: {why}", flow.entry.reason);
            }
        }
        self.end_udp(flow, now);
    }

    /// Decides every open flow again under changed `rules`: those no rule
    /// allows now are ended (TCP reset, UDP closed) and logged as denied.
    fn recheck(&mut self, rules: &RuleSet, now: Now) {
        for flow in self.flows.values_mut() {
            if flow.ended || matches!(flow.phase, Phase::Closing) {
                continue;
            }
            let Some(verdict) = flow.recheck.denies(rules, EgressProto::Tcp, &flow.entry) else {
                continue;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
            socket.abort();
            flow.phase = Phase::Closing;
            ended_by_rules(&mut flow.entry, verdict);
            flow.logged = true;
            finish(flow, now, &mut self.actions);
        }
        let denied: Vec<(UdpKey, Verdict)> = self
            .udp
            .iter()
            .filter_map(|(key, flow)| {
                let verdict = flow.recheck.denies(rules, EgressProto::Udp, &flow.entry)?;
                Some((*key, verdict))
            })
            .collect();
        for (key, verdict) in denied {
            if let Some(mut flow) = self.udp.remove(&key) {
                self.actions.push(Action::UdpClose { key });
                ended_by_rules(&mut flow.entry, verdict);
                self.end_udp(flow, now);
            }
        }
    }

    /// Ends the guest's TCP flows that moved nothing for [`TCP_IDLE`].
    fn end_idle(&mut self, now: Now) {
        for flow in self.flows.values_mut() {
            let open = matches!(flow.phase, Phase::Open) && flow.recheck != Recheck::Never;
            if !open || flow.ended || now.mono < flow.last_active + TCP_IDLE {
                continue;
            }
            let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
            socket.abort();
            flow.phase = Phase::Closing;
            flow.entry.reason = format!(
                "{}; ended after {} s without a byte either way",
                flow.entry.reason,
                TCP_IDLE.secs()
            );
            finish(flow, now, &mut self.actions);
        }
    }

    /// Closes UDP flows that went idle, logging their byte counts.
    fn expire_udp(&mut self, now: Now) {
        let idle: Vec<UdpKey> = self
            .udp
            .iter()
            .filter(|(_, f)| now.mono >= f.last + UDP_IDLE)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            if let Some(flow) = self.udp.remove(&key) {
                self.actions.push(Action::UdpClose { key });
                self.end_udp(flow, now);
            }
        }
    }

    fn end_udp(&mut self, mut flow: UdpFlow, now: Now) {
        flow.entry.bytes_up = Some(flow.up);
        flow.entry.bytes_down = Some(flow.down);
        flow.entry.ended_unix_ms = Some(now.unix_ms);
        self.actions.push(Action::Log(flow.entry));
    }

    /// Answers one DNS message, logging the decision.
    fn dns(&mut self, query: &[u8], now: Now, transport: &str) -> Option<Vec<u8>> {
        let rules = self.rules.borrow().clone();
        let mut policy = Policy {
            rules: &rules,
            fake: &mut self.fake,
            remembered: Vec::new(),
        };
        let (reply, decision) = dns::answer(query, &mut policy)?;
        for (addr, name) in std::mem::take(&mut policy.remembered) {
            self.actions.push(Action::Remember { addr, name });
        }
        if let Some(d) = decision {
            let verdict = Verdict {
                reason: format!(
                    "{} ({} question over {transport})",
                    d.verdict.reason, d.qtype
                ),
                ..d.verdict
            };
            let entry = self.new_entry(
                now,
                EgressLogProto::Dns,
                Some(d.name),
                d.answer.map(IpAddr::V4),
                None,
                &verdict,
            );
            self.actions.push(Action::Log(entry));
        }
        Some(reply)
    }

    fn destination(&self, dst: Ipv4Addr) -> Destination {
        if dst == GATEWAY_IP {
            Destination::Gateway
        } else if in_fake_pool(dst) {
            match self.fake.name(dst) {
                Some(name) => Destination::Name(name.to_string()),
                None => Destination::Unknown,
            }
        } else {
            Destination::Literal
        }
    }

    /// A new TCP connection: decide, then give smoltcp a socket for it (or
    /// none, so it answers RST).
    fn on_syn(&mut self, frame: &[u8], v4: &Ipv4Frame<'_>, src_port: u16, dst_port: u16, now: Now) {
        let same_tuple = self.flows.iter().find_map(|(id, f)| {
            let s = self.sockets.get::<tcp::Socket>(f.handle);
            let remote = s.remote_endpoint()?;
            let local = s.local_endpoint()?;
            let same = remote.addr == IpAddress::Ipv4(v4.src)
                && remote.port == src_port
                && local.addr == IpAddress::Ipv4(v4.dst)
                && local.port == dst_port;
            same.then_some((*id, s.state()))
        });
        match same_tuple {
            // A new connection on the tuple of one that ended: forget the old one.
            Some((old, tcp::State::TimeWait)) => {
                if let Some(flow) = self.flows.remove(&old) {
                    self.sockets.remove(flow.handle);
                }
            }
            // A retransmitted SYN: the flow's socket deals with it.
            Some(_) => return self.ingest(frame, now),
            None => {}
        }
        let rules = self.rules.borrow().clone();
        let dst_ip = IpAddr::V4(v4.dst);
        let (name, verdict, phase, target) = match self.destination(v4.dst) {
            Destination::Gateway if dst_port == DNS_PORT => (
                None,
                Verdict::allow(None, "built-in: DNS over TCP, answered by the gateway"),
                Phase::Dns {
                    inbox: Vec::new(),
                    outbox: Vec::new(),
                },
                None,
            ),
            Destination::Gateway if dst_port == INFERENCE_PORT => (
                Some(INFERENCE_NAME.to_string()),
                rules.inference(INFERENCE_NAME, dst_ip, dst_port),
                Phase::Dialing,
                Some(DialTarget::Inference),
            ),
            Destination::Gateway => (
                None,
                Verdict::deny(
                    None,
                    "the gateway serves only DNS (53) and the inference service (80)",
                ),
                Phase::Closing,
                None,
            ),
            Destination::Unknown => (
                None,
                Verdict::deny(None, "unknown synthetic address (resolve the name again)"),
                Phase::Closing,
                None,
            ),
            Destination::Name(name) => {
                let verdict = rules.connect_name(&name, EgressProto::Tcp, dst_port);
                // H1: every flow to a name is inspected, but for the ports
                // its rule names: there any protocol may go (a server that
                // speaks first, SSH, SMTP, needs no bytes from the guest).
                let sniff = match dst_port {
                    443 => Some(SniffKind::Tls),
                    80 => Some(SniffKind::Http),
                    _ if rules.names_port(verdict.rule, dst_port) => None,
                    _ => Some(SniffKind::TlsOrHttp),
                };
                let (phase, target) = match sniff {
                    Some(kind) => (
                        Phase::Sniff {
                            kind,
                            name: name.clone(),
                            deadline: now.mono + SNIFF_LIMIT,
                            buf: Vec::new(),
                        },
                        None,
                    ),
                    None => (
                        Phase::Dialing,
                        Some(DialTarget::Name {
                            name: name.clone(),
                            port: dst_port,
                        }),
                    ),
                };
                (Some(name), verdict, phase, target)
            }
            Destination::Literal => {
                let verdict = rules.connect_ip(dst_ip, EgressProto::Tcp, dst_port);
                let target = SocketAddr::new(dst_ip, dst_port);
                (
                    None,
                    verdict,
                    Phase::Dialing,
                    Some(DialTarget::Addr(target)),
                )
            }
        };
        let recheck = match (&target, &name) {
            (Some(DialTarget::Inference), _) => Recheck::Inference,
            (Some(DialTarget::Addr(addr)), _) => Recheck::Literal(addr.ip()),
            (_, Some(name)) => Recheck::Name(name.clone()),
            _ => Recheck::Never,
        };
        let verdict = if verdict.allow && self.flows.len() >= MAX_FLOWS {
            Verdict::deny(
                None,
                format!("too many open connections (limit {MAX_FLOWS})"),
            )
        } else {
            verdict
        };
        let entry = self.new_entry(
            now,
            EgressLogProto::Tcp,
            name,
            Some(dst_ip),
            Some(dst_port),
            &verdict,
        );
        if !verdict.allow {
            self.actions.push(Action::Log(entry));
            // No socket listens: smoltcp answers the SYN with RST.
            return self.ingest(frame, now);
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(v4.dst)),
                port: dst_port,
            })
            .is_err()
        {
            return;
        }
        // The handshake completes at once, while the host side is dialled:
        // a new connection does not wait a dial round trip for its SYN-ACK.
        // What the guest sends meanwhile waits in the socket (nothing moves
        // before the dial succeeds); a dial refused later resets the guest.
        let handle = self.sockets.add(socket);
        self.ingest(frame, now);
        if self.sockets.get::<tcp::Socket>(handle).state() != tcp::State::SynReceived {
            // smoltcp did not take the SYN after all.
            self.sockets.remove(handle);
            return;
        }
        let id = self.next_flow;
        self.next_flow += 1;
        // Built-in flows with no host side are not worth a log line each;
        // what they carry (DNS questions) is logged.
        let quiet = matches!(phase, Phase::Dns { .. });
        if let Some(target) = target {
            self.actions.push(Action::Dial { id, target });
        }
        self.flows.insert(
            id,
            Flow {
                handle,
                phase,
                entry,
                logged: quiet,
                ended: quiet,
                up: 0,
                down: 0,
                to_host: None,
                pending_up: None,
                from_host: None,
                pending_down: None,
                host_eof: false,
                fin_sent: false,
                http: None,
                recheck,
                last_active: now.mono,
            },
        );
    }

    /// The shell's answer to [`Action::Dial`].
    pub fn dialed(
        &mut self,
        id: FlowId,
        result: Result<(FlowIo, SocketAddr), DialError>,
        now: Now,
    ) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
        match result {
            Ok((io, peer)) => {
                flow.entry.addr = Some(peer.ip().to_string());
                flow.to_host = Some(io.to_host);
                flow.from_host = Some(io.from_host);
                flow.phase = Phase::Open;
                if !flow.logged {
                    flow.logged = true;
                    self.actions.push(Action::Log(flow.entry.clone()));
                }
            }
            Err(DialError::Denied(verdict)) => {
                flow.entry.decision = EgressAction::Deny;
                flow.entry.rule = verdict.rule;
                flow.entry.reason = verdict.reason;
                socket.abort();
                flow.phase = Phase::Closing;
                flow.logged = true;
                flow.ended = true;
                self.actions.push(Action::Log(flow.entry.clone()));
            }
            Err(DialError::Failed(why)) => {
                flow.entry.reason = format!("{}; connection failed: {why}", flow.entry.reason);
                flow.entry.bytes_up = Some(0);
                flow.entry.bytes_down = Some(0);
                flow.entry.ended_unix_ms = Some(now.unix_ms);
                socket.abort();
                flow.phase = Phase::Closing;
                flow.logged = true;
                flow.ended = true;
                self.actions.push(Action::Log(flow.entry.clone()));
            }
        }
    }

    /// Opens a connection from the gateway into the guest's `guest_port`
    /// for a host client (a supervisor forward): the gateway is the only
    /// way into the guest, and only to the ports the supervisor forwards.
    /// Its bytes move like an outbound flow's; it is not egress, so it is
    /// not logged. `false`: no socket could be made (table full).
    pub fn forward(&mut self, io: FlowIo, guest_port: u16, now: Now) -> bool {
        if self.flows.len() >= MAX_FLOWS {
            return false;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; SOCKET_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        let local_port = FORWARD_PORTS.start
            + (self.next_flow % u64::from(FORWARD_PORTS.end - FORWARD_PORTS.start)) as u16;
        let remote = (IpAddress::Ipv4(GUEST_IP), guest_port);
        let local = (IpAddress::Ipv4(GATEWAY_IP), local_port);
        if socket.connect(self.iface.context(), remote, local).is_err() {
            return false;
        }
        let handle = self.sockets.add(socket);
        let id = self.next_flow;
        self.next_flow += 1;
        let verdict = Verdict::allow(
            None,
            format!("forward from the host to guest port {guest_port}"),
        );
        let entry = self.new_entry(
            now,
            EgressLogProto::Tcp,
            None,
            Some(IpAddr::V4(GUEST_IP)),
            Some(guest_port),
            &verdict,
        );
        self.flows.insert(
            id,
            Flow {
                handle,
                phase: Phase::Open,
                entry,
                logged: true,
                ended: true,
                up: 0,
                down: 0,
                to_host: Some(io.to_host),
                pending_up: None,
                from_host: Some(io.from_host),
                pending_down: None,
                host_eof: false,
                fin_sent: false,
                http: None,
                recheck: Recheck::Never,
                last_active: now.mono,
            },
        );
        true
    }

    /// Runs smoltcp and moves data between sockets and host connections.
    pub fn poll(&mut self, now: Now) {
        if self.rules.has_changed().unwrap_or(false) {
            let rules = self.rules.borrow_and_update().clone();
            self.recheck(&rules, now);
        }
        self.end_idle(now);
        self.reap(now);
        self.expire_udp(now);
        self.iface
            .poll(now.mono, &mut self.device, &mut self.sockets);
        let ids: Vec<FlowId> = self.flows.keys().copied().collect();
        for id in ids {
            self.pump(id, now);
        }
        self.iface
            .poll_egress(now.mono, &mut self.device, &mut self.sockets);
    }

    /// Ends flows whose socket is done; removes sockets that are closed.
    fn reap(&mut self, now: Now) {
        let mut gone = Vec::new();
        for (id, flow) in &mut self.flows {
            let state = self.sockets.get::<tcp::Socket>(flow.handle).state();
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) && !flow.ended {
                finish(flow, now, &mut self.actions);
            }
            // An aborted socket stays until its RST is out (its tuple is
            // cleared then). TIME-WAIT is not kept: on this lossless link a
            // late FIN gets an RST at worst, and a guest making many short
            // connections must not fill the flow table (and memory) with
            // sockets that only wait.
            let socket = self.sockets.get::<tcp::Socket>(flow.handle);
            let rst_out = state == tcp::State::Closed && socket.remote_endpoint().is_none();
            if rst_out || state == tcp::State::TimeWait {
                gone.push(*id);
            }
        }
        for id in gone {
            if let Some(flow) = self.flows.remove(&id) {
                self.sockets.remove(flow.handle);
            }
        }
    }

    fn pump(&mut self, id: FlowId, now: Now) {
        let queries = {
            let Some(flow) = self.flows.get_mut(&id) else {
                return;
            };
            let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
            match &flow.phase {
                Phase::Sniff { .. } => {
                    sniff_step(flow, socket, id, now, &mut self.actions);
                    return;
                }
                Phase::Open => {
                    open_step(flow, socket, now, &mut self.actions);
                    return;
                }
                Phase::Dns { .. } => dns_step(flow, socket),
                Phase::Dialing | Phase::Closing => return,
            }
        };
        let replies: Vec<Vec<u8>> = queries
            .iter()
            .filter_map(|q| self.dns(q, now, "TCP"))
            .collect();
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
        if let Phase::Dns { outbox, .. } = &mut flow.phase {
            for reply in replies {
                let Ok(len) = u16::try_from(reply.len()) else {
                    continue;
                };
                outbox.extend_from_slice(&len.to_be_bytes());
                outbox.extend_from_slice(&reply);
            }
        }
        dns_flush(flow, socket);
    }
}

enum Destination {
    Gateway,
    Name(String),
    Unknown,
    Literal,
}

/// Logs the end of a flow with its byte counts (once).
fn finish(flow: &mut Flow, now: Now, actions: &mut Vec<Action>) {
    flow.ended = true;
    flow.to_host = None;
    flow.from_host = None;
    if !flow.logged {
        // The guest gave up before anything was decided at dial time.
        flow.logged = true;
        flow.entry.reason = format!(
            "{}; the guest closed before the host answered",
            flow.entry.reason
        );
    }
    flow.entry.bytes_up = Some(flow.up);
    flow.entry.bytes_down = Some(flow.down);
    flow.entry.ended_unix_ms = Some(now.unix_ms);
    actions.push(Action::Log(flow.entry.clone()));
}

/// Refuses a flow after its first bytes: RST to the guest, a deny logged.
fn refuse(
    flow: &mut Flow,
    socket: &mut tcp::Socket<'_>,
    reason: String,
    actions: &mut Vec<Action>,
) {
    socket.abort();
    flow.phase = Phase::Closing;
    flow.entry.decision = EgressAction::Deny;
    flow.entry.rule = None;
    flow.entry.reason = reason;
    flow.logged = true;
    flow.ended = true;
    actions.push(Action::Log(flow.entry.clone()));
}

fn sniff_step(
    flow: &mut Flow,
    socket: &mut tcp::Socket<'_>,
    id: FlowId,
    now: Now,
    actions: &mut Vec<Action>,
) {
    let Phase::Sniff {
        kind,
        name,
        deadline,
        buf,
    } = &mut flow.phase
    else {
        return;
    };
    while socket.can_recv() && buf.len() < MAX_SNIFF {
        let room = MAX_SNIFF - buf.len();
        let got = socket.recv(|data| {
            let n = data.len().min(room);
            (n, data[..n].to_vec())
        });
        match got {
            Ok(bytes) if !bytes.is_empty() => buf.extend_from_slice(&bytes),
            _ => break,
        }
    }
    let port = flow.entry.port.unwrap_or_default();
    let kind = match kind.resolve(buf.first().copied()) {
        Ok(kind) => kind,
        Err(why) => {
            let reason = format!("port {port} to {name}: {why}");
            refuse(flow, socket, reason, actions);
            return;
        }
    };
    let (what, sniffed) = match kind {
        SniffKind::Tls => ("TLS SNI", sniff::tls_sni(buf)),
        SniffKind::Http => ("HTTP Host", sniff::http_host(buf)),
        SniffKind::TlsOrHttp => ("TLS SNI or HTTP Host", Sniffed::NeedMore),
    };
    let name = name.clone();
    match sniffed {
        Sniffed::Name(asked) if asked == name => {
            if kind == SniffKind::Http {
                let mut requests = HttpRequests::new(&name);
                if let Err(why) = requests.feed(buf) {
                    let reason = format!("port {port}: {why}");
                    refuse(flow, socket, reason, actions);
                    return;
                }
                flow.http = Some(requests);
            }
            let first = Bytes::from(std::mem::take(buf));
            flow.up += first.len() as u64;
            flow.pending_up = Some(first);
            flow.phase = Phase::Dialing;
            actions.push(Action::Dial {
                id,
                target: DialTarget::Name { name, port },
            });
        }
        Sniffed::Name(asked) => {
            let reason = format!(
                "{what} asks for {asked} on the address of {name}: refused (no domain fronting)"
            );
            refuse(flow, socket, reason, actions);
        }
        Sniffed::Refused(why) => {
            let reason = format!("port {port} needs a {what} naming {name}: {why}");
            refuse(flow, socket, reason, actions);
        }
        Sniffed::NeedMore => {
            let late = now.mono >= *deadline;
            let full = buf.len() >= MAX_SNIFF;
            let closed = guest_finished(socket.state());
            if late || full || closed {
                let why = if late {
                    "none within 10 s"
                } else if full {
                    "none in the first 32 KiB"
                } else {
                    "the guest closed first"
                };
                let reason = format!("port {port} needs a {what} naming {name}: {why}");
                refuse(flow, socket, reason, actions);
            }
        }
    }
}

fn open_step(flow: &mut Flow, socket: &mut tcp::Socket<'_>, now: Now, actions: &mut Vec<Action>) {
    let moved_before = (flow.up, flow.down);
    open_moves(flow, socket, now, actions);
    if (flow.up, flow.down) != moved_before {
        flow.last_active = now.mono;
    }
}

/// [`open_step`]'s work: bytes both ways, with backpressure.
fn open_moves(flow: &mut Flow, socket: &mut tcp::Socket<'_>, now: Now, actions: &mut Vec<Action>) {
    // Guest → host, stopping when the host connection is full: the guest's
    // window then closes (backpressure), nothing is buffered without bound.
    loop {
        if let Some(chunk) = flow.pending_up.take() {
            let Some(to_host) = &flow.to_host else {
                break;
            };
            match to_host.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    flow.pending_up = Some(chunk);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    socket.abort();
                    flow.phase = Phase::Closing;
                    return;
                }
            }
        }
        if !socket.can_recv() {
            break;
        }
        match socket.recv(|data| {
            let n = data.len().min(CHUNK);
            (n, Bytes::copy_from_slice(&data[..n]))
        }) {
            Ok(chunk) if !chunk.is_empty() => {
                if let Some(Err(why)) = flow.http.as_mut().map(|h| h.feed(&chunk)) {
                    // Allowed at first, cut now: the entry says both.
                    socket.abort();
                    flow.phase = Phase::Closing;
                    flow.entry.decision = EgressAction::Deny;
                    flow.entry.rule = None;
                    flow.entry.reason = format!("{}; then {why}", flow.entry.reason);
                    finish(flow, now, actions);
                    return;
                }
                flow.up += chunk.len() as u64;
                flow.pending_up = Some(chunk);
            }
            _ => break,
        }
    }
    if flow.pending_up.is_none() && guest_finished(socket.state()) {
        // The guest sent FIN: the host connection's write side closes.
        flow.to_host = None;
    }
    // Host → guest.
    loop {
        let chunk = match flow.pending_down.take() {
            Some(chunk) => chunk,
            None => {
                let Some(from_host) = flow.from_host.as_mut() else {
                    break;
                };
                match from_host.try_recv() {
                    Ok(HostData::Data(chunk)) => {
                        if let Some(http) = flow.http.as_mut() {
                            http.response(&chunk);
                        }
                        chunk
                    }
                    Ok(HostData::Reset) => {
                        socket.abort();
                        flow.phase = Phase::Closing;
                        return;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        flow.host_eof = true;
                        flow.from_host = None;
                        break;
                    }
                }
            }
        };
        if !socket.may_send() {
            if matches!(
                socket.state(),
                tcp::State::SynReceived | tcp::State::SynSent
            ) {
                // The handshake with the guest is not done yet.
                flow.pending_down = Some(chunk);
            }
            break;
        }
        match socket.send_slice(&chunk) {
            Ok(n) => {
                flow.down += n as u64;
                if n < chunk.len() {
                    flow.pending_down = Some(chunk.slice(n..));
                    break;
                }
            }
            Err(_) => break,
        }
    }
    if flow.host_eof && flow.pending_down.is_none() && !flow.fin_sent && socket.may_send() {
        socket.close();
        flow.fin_sent = true;
    }
}

/// Replies (bytes) a DNS-over-TCP flow may hold for a guest that does not
/// read them; past this its queries wait unread in its own TCP window.
const DNS_OUTBOX_LIMIT: usize = 16 * 1024;
/// Queries answered per step, so one step adds a bounded amount of replies.
const DNS_QUERIES_PER_STEP: usize = 8;

/// Reads length-prefixed DNS messages (RFC 1035 4.2.2) from the guest, as
/// long as the guest reads the replies (H7: a client that never reads must
/// not make the gateway queue replies without bound).
fn dns_step(flow: &mut Flow, socket: &mut tcp::Socket<'_>) -> Vec<Vec<u8>> {
    let Phase::Dns { inbox, outbox } = &mut flow.phase else {
        return Vec::new();
    };
    if outbox.len() >= DNS_OUTBOX_LIMIT {
        return Vec::new();
    }
    let most = 2 + usize::from(u16::MAX);
    while socket.can_recv() && inbox.len() < most {
        let room = most - inbox.len();
        match socket.recv(|data| {
            let n = data.len().min(room);
            (n, data[..n].to_vec())
        }) {
            Ok(bytes) if !bytes.is_empty() => {
                flow.up += bytes.len() as u64;
                inbox.extend_from_slice(&bytes);
            }
            _ => break,
        }
    }
    let mut queries = Vec::new();
    while let Some(len) = inbox
        .get(..2)
        .filter(|_| queries.len() < DNS_QUERIES_PER_STEP)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    {
        let Some(message) = inbox.get(2..2 + len) else {
            break;
        };
        queries.push(message.to_vec());
        inbox.drain(..2 + len);
    }
    queries
}

fn dns_flush(flow: &mut Flow, socket: &mut tcp::Socket<'_>) {
    let Phase::Dns { outbox, .. } = &mut flow.phase else {
        return;
    };
    if !outbox.is_empty() && socket.may_send() {
        if let Ok(n) = socket.send_slice(outbox) {
            flow.down += n as u64;
            outbox.drain(..n);
        }
    }
    if outbox.is_empty() && guest_finished(socket.state()) && !flow.fin_sent {
        socket.close();
        flow.fin_sent = true;
    }
}
