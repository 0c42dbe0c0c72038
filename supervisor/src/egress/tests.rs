//! The frame handler driven by hand-built frames (what a guest would send),
//! and proptests that feed it malformed Ethernet/IP/TCP/UDP/DNS/DHCP bytes:
//! no panic, no hang, nothing let through.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use clawpen_api::{EgressAction, EgressLogProto, EgressRule, EgressTarget, VmName};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};
use tokio::sync::{mpsc, watch};

use super::fakeip::FakeIps;
use super::net::{GATEWAY_IP, GATEWAY_MAC, GUEST_IP};
use super::rules::RuleSet;
use super::sniff::client_hello;
use super::stack::{Action, DialTarget, FlowId, FlowIo, HostData, Now, Stack};
use super::wire::{classify, udp_frame, GuestFrame, L4};

pub(super) const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0xc1, 0xa5, 2]);

fn rule(id: u64, action: EgressAction, target: &str) -> EgressRule {
    EgressRule {
        id,
        action,
        target: EgressTarget::parse(target).unwrap(),
        ports: None,
        proto: None,
        created_unix: 0,
    }
}

struct Harness {
    stack: Stack,
    rules: watch::Sender<Arc<RuleSet>>,
    ms: i64,
}

impl Harness {
    fn new(rules: Vec<EgressRule>) -> Self {
        let (tx, rx) = watch::channel(Arc::new(RuleSet::new(rules)));
        let now = Now {
            mono: smoltcp::time::Instant::from_millis(0),
            unix_ms: 0,
        };
        let stack = Stack::new(
            VmName::parse("t").unwrap(),
            rx,
            FakeIps::default(),
            Arc::new(AtomicU64::new(1)),
            now,
        );
        let mut h = Self {
            stack,
            rules: tx,
            ms: 0,
        };
        // The guest learns the gateway's MAC, the gateway learns the guest's.
        h.send(&arp_request());
        h
    }

    fn now(&mut self) -> Now {
        self.ms += 1;
        Now {
            mono: smoltcp::time::Instant::from_millis(self.ms),
            unix_ms: self.ms as u64,
        }
    }

    /// Feeds a frame, polls, returns what came out.
    fn send(&mut self, frame: &[u8]) -> (Vec<Vec<u8>>, Vec<Action>) {
        let now = self.now();
        self.stack.receive(frame, now);
        self.poll()
    }

    /// The host side of dial `id` is up (a loopback peer): returns what the
    /// flow sends the host and the sender of the host's data.
    fn host_answers(
        &mut self,
        id: FlowId,
    ) -> (mpsc::Receiver<bytes::Bytes>, mpsc::Sender<HostData>) {
        let (to_host, up) = mpsc::channel(8);
        let (down, from_host) = mpsc::channel(8);
        let now = self.now();
        self.stack.dialed(
            id,
            Ok((
                FlowIo { to_host, from_host },
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            )),
            now,
        );
        (up, down)
    }

    fn poll(&mut self) -> (Vec<Vec<u8>>, Vec<Action>) {
        let now = self.now();
        self.stack.poll(now);
        (
            self.stack.take_frames().collect(),
            self.stack.take_actions(),
        )
    }

    fn resolve(&mut self, name: &str) -> Option<Ipv4Addr> {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let frame = udp_frame(
            EthernetAddress(GATEWAY_MAC),
            (GUEST_IP, 40000),
            (GATEWAY_IP, 53),
            &q.to_vec().unwrap(),
        )
        .unwrap();
        let frame = from_guest(frame);
        let (frames, _) = self.send(&frame);
        let GuestFrame::Ipv4(v4) = classify(&frames[0]) else {
            panic!("no DNS answer");
        };
        let L4::Udp { payload, .. } = v4.l4 else {
            panic!("not UDP");
        };
        let reply = Message::from_vec(payload).unwrap();
        reply.answers.iter().find_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
    }
}

/// Rewrites a frame built "from the gateway" as one from the guest.
fn from_guest(mut frame: Vec<u8>) -> Vec<u8> {
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    eth.set_src_addr(GUEST_MAC);
    eth.set_dst_addr(EthernetAddress(GATEWAY_MAC));
    frame
}

/// The guest's ARP request for the gateway.
pub(super) fn arp_request() -> Vec<u8> {
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr};
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GATEWAY_IP,
    };
    let eth = EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

struct Seg<'a> {
    dst: (Ipv4Addr, u16),
    src_port: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &'a [u8],
}

fn tcp_frame(seg: &Seg<'_>) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: seg.src_port,
        dst_port: seg.dst.1,
        control: seg.control,
        seq_number: TcpSeqNumber(seg.seq as i32),
        ack_number: seg.ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64000,
        window_scale: None,
        max_seg_size: (seg.control == TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: seg.payload,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: seg.dst.0,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(seg.dst.0),
        &caps,
    );
    buf
}

/// The TCP segments in frames the gateway sent.
fn segments(frames: &[Vec<u8>]) -> Vec<(TcpControl, Option<u32>, u32, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            let control = if tcp.rst() {
                TcpControl::Rst
            } else if tcp.syn() {
                TcpControl::Syn
            } else if tcp.fin() {
                TcpControl::Fin
            } else {
                TcpControl::None
            };
            let ack = tcp.ack().then(|| tcp.ack_number().0 as u32);
            Some((
                control,
                ack,
                tcp.seq_number().0 as u32,
                tcp.payload().to_vec(),
            ))
        })
        .collect()
}

fn logs(actions: &[Action]) -> Vec<&clawpen_api::EgressLogEntry> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn denied_syn_gets_rst_and_a_log_line() {
    let mut h = Harness::new(vec![]);
    let (frames, actions) = h.send(&tcp_frame(&Seg {
        dst: (Ipv4Addr::new(140, 82, 112, 3), 443),
        src_port: 50000,
        control: TcpControl::Syn,
        seq: 100,
        ack: None,
        payload: b"",
    }));
    let segs = segments(&frames);
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(segs[0].0, TcpControl::Rst);
    let logs = logs(&actions);
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].decision, EgressAction::Deny);
    assert_eq!(logs[0].addr.as_deref(), Some("140.82.112.3"));
    assert!(h.stack.flow_count() == 0);
}

#[test]
fn unknown_names_get_nxdomain_and_allowed_ones_a_synthetic_address() {
    let mut h = Harness::new(vec![rule(1, EgressAction::Allow, "allowed.test")]);
    assert_eq!(h.resolve("other.test"), None);
    let ip = h.resolve("allowed.test").unwrap();
    assert!(super::net::in_fake_pool(ip));
    assert_eq!(h.resolve("allowed.test"), Some(ip), "stable");
}

/// A whole flow: SYN held until the host answers, data both ways, FIN.
#[test]
fn allowed_flow_moves_bytes_both_ways() {
    // A port the rule names: any protocol, dialled at the SYN.
    let mut h = Harness::new(vec![EgressRule {
        ports: Some(clawpen_api::PortRange::parse("8080").unwrap()),
        ..rule(1, EgressAction::Allow, "allowed.test")
    }]);
    let ip = h.resolve("allowed.test").unwrap();
    let dst = (ip, 8080);
    let syn = Seg {
        dst,
        src_port: 50001,
        control: TcpControl::Syn,
        seq: 1000,
        ack: None,
        payload: b"",
    };
    let (frames, actions) = h.send(&tcp_frame(&syn));
    // The handshake completes at once, while the host side is dialled.
    let segs = segments(&frames);
    assert_eq!(segs[0].0, TcpControl::Syn, "SYN-ACK at once: {segs:?}");
    assert_eq!(segs[0].1, Some(1001));
    let server_seq = segs[0].2.wrapping_add(1);
    let Some(Action::Dial { id, target }) = actions
        .iter()
        .find(|a| matches!(a, Action::Dial { .. }))
        .cloned()
    else {
        panic!("no dial: {actions:?}");
    };
    assert_eq!(
        target,
        DialTarget::Name {
            name: "allowed.test".into(),
            port: 8080
        }
    );
    // Guest: ACK + data, before the host side is up: it waits.
    let (_, _) = h.send(&tcp_frame(&Seg {
        dst,
        src_port: 50001,
        control: TcpControl::Psh,
        seq: 1001,
        ack: Some(server_seq),
        payload: b"ping",
    }));
    let (mut up, down) = h.host_answers(id);
    let (_, actions) = h.poll();
    assert_eq!(logs(&actions)[0].decision, EgressAction::Allow);
    assert_eq!(&up.try_recv().unwrap()[..], b"ping");
    // Host: data, then EOF.
    down.try_send(HostData::Data(bytes::Bytes::from_static(b"pong")))
        .unwrap();
    drop(down);
    let (frames, _) = h.poll();
    let segs = segments(&frames);
    assert!(segs.iter().any(|s| s.3 == b"pong"), "{segs:?}");
    assert!(segs.iter().any(|s| s.0 == TcpControl::Fin), "{segs:?}");
    // Guest: ACK everything and FIN.
    let (_, actions) = h.send(&tcp_frame(&Seg {
        dst,
        src_port: 50001,
        control: TcpControl::Fin,
        seq: 1005,
        ack: Some(server_seq + 5),
        payload: b"",
    }));
    let (_, more) = h.poll();
    let ended: Vec<_> = logs(&actions)
        .into_iter()
        .chain(logs(&more))
        .filter(|e| e.ended_unix_ms.is_some())
        .cloned()
        .collect();
    assert_eq!(ended.len(), 1, "{actions:?} {more:?}");
    assert_eq!((ended[0].bytes_up, ended[0].bytes_down), (Some(4), Some(4)));
    // Nothing lingers (no TIME-WAIT sockets filling the flow table).
    h.poll();
    assert_eq!(h.stack.flow_count(), 0);
}

/// On 443 the ClientHello must name the synthetic address's name.
#[test]
fn sni_of_another_name_is_refused_before_any_dial() {
    let mut h = Harness::new(vec![rule(1, EgressAction::Allow, "allowed.test")]);
    let ip = h.resolve("allowed.test").unwrap();
    let dst = (ip, 443);
    let (frames, actions) = h.send(&tcp_frame(&Seg {
        dst,
        src_port: 50002,
        control: TcpControl::Syn,
        seq: 1,
        ack: None,
        payload: b"",
    }));
    assert!(actions.iter().all(|a| !matches!(a, Action::Dial { .. })));
    let server_seq = segments(&frames)[0].2.wrapping_add(1);
    let hello = client_hello("other.test");
    let (frames, actions) = h.send(&tcp_frame(&Seg {
        dst,
        src_port: 50002,
        control: TcpControl::Psh,
        seq: 2,
        ack: Some(server_seq),
        payload: &hello,
    }));
    assert!(
        actions.iter().all(|a| !matches!(a, Action::Dial { .. })),
        "{actions:?}"
    );
    let denied = logs(&actions);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].decision, EgressAction::Deny);
    assert!(
        denied[0].reason.contains("other.test"),
        "{}",
        denied[0].reason
    );
    assert!(segments(&frames).iter().any(|s| s.0 == TcpControl::Rst));
}

/// A connection to `port` of allowed.test whose first bytes are
/// `first`: whether it was dialled, and the deny reason if refused.
fn first_bytes_verdict(rules: Vec<EgressRule>, port: u16, first: &[u8]) -> (bool, Option<String>) {
    let mut h = Harness::new(rules);
    let ip = h.resolve("allowed.test").unwrap();
    let dst = (ip, port);
    let (frames, mut actions) = h.send(&tcp_frame(&Seg {
        dst,
        src_port: 50003,
        control: TcpControl::Syn,
        seq: 1,
        ack: None,
        payload: b"",
    }));
    let server_seq = segments(&frames)[0].2.wrapping_add(1);
    let (_, more) = h.send(&tcp_frame(&Seg {
        dst,
        src_port: 50003,
        control: TcpControl::Psh,
        seq: 2,
        ack: Some(server_seq),
        payload: first,
    }));
    actions.extend(more);
    let dialled = actions.iter().any(|a| matches!(a, Action::Dial { .. }));
    let denied = logs(&actions)
        .into_iter()
        .find(|e| e.decision == EgressAction::Deny)
        .map(|e| e.reason.clone());
    (dialled, denied)
}

/// H1: on a port its rule does not name, a flow to a name must be TLS
/// naming it or HTTP asking for it; raw bytes or TLS for another name are
/// refused before any dial. A port the rule names takes any protocol.
#[test]
fn flows_to_a_name_are_inspected_on_every_port_the_rule_does_not_name() {
    let any_port = || vec![rule(1, EgressAction::Allow, "allowed.test")];
    let (dialled, denied) = first_bytes_verdict(any_port(), 8443, &client_hello("other.test"));
    assert!(
        !dialled && denied.as_deref().unwrap().contains("other.test"),
        "{denied:?}"
    );
    let (dialled, denied) = first_bytes_verdict(any_port(), 2222, b"SSH-2.0-OpenSSH_9.6\r\n");
    assert!(!dialled && denied.is_some(), "{denied:?}");
    let (dialled, denied) =
        first_bytes_verdict(any_port(), 5432, b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
    assert!(!dialled, "{denied:?}");
    assert!(denied.unwrap().contains("neither TLS nor HTTP"));
    let (dialled, _) = first_bytes_verdict(any_port(), 8443, &client_hello("allowed.test"));
    assert!(dialled, "TLS naming the name is dialled on any port");
    let (dialled, denied) = first_bytes_verdict(
        any_port(),
        8080,
        b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n",
    );
    assert!(!dialled && denied.is_some());
    let (dialled, _) = first_bytes_verdict(
        any_port(),
        8080,
        b"GET / HTTP/1.1\r\nHost: allowed.test:8080\r\n\r\n",
    );
    assert!(dialled);
    let ssh = vec![EgressRule {
        ports: Some(clawpen_api::PortRange::parse("22-2222").unwrap()),
        ..rule(1, EgressAction::Allow, "allowed.test")
    }];
    let (dialled, denied) = first_bytes_verdict(ssh, 2222, b"SSH-2.0-OpenSSH_9.6\r\n");
    assert!(dialled && denied.is_none(), "{denied:?}");
}

#[test]
fn a_rule_change_applies_to_the_next_connection() {
    let mut h = Harness::new(vec![]);
    let syn = |port| Seg {
        dst: (Ipv4Addr::new(203, 0, 113, 5), 22),
        src_port: port,
        control: TcpControl::Syn,
        seq: 1,
        ack: None,
        payload: b"",
    };
    let (frames, _) = h.send(&tcp_frame(&syn(50010)));
    assert_eq!(segments(&frames)[0].0, TcpControl::Rst);
    h.rules.send_replace(Arc::new(RuleSet::new(vec![rule(
        3,
        EgressAction::Allow,
        "203.0.113.0/24",
    )])));
    let (_, actions) = h.send(&tcp_frame(&syn(50011)));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Dial { target: DialTarget::Addr(addr), .. } if addr.port() == 22
    )));
}

#[test]
fn allowed_udp_is_relayed_both_ways_and_ends_when_idle() {
    let mut udp_rule = rule(1, EgressAction::Allow, "udp.test");
    udp_rule.proto = Some(clawpen_api::EgressProto::Udp);
    let mut h = Harness::new(vec![udp_rule]);
    let synthetic = h.resolve("udp.test").expect("an allowed name resolves");
    let datagram = |dst: Ipv4Addr, payload: &[u8]| {
        from_guest(
            udp_frame(
                EthernetAddress(GATEWAY_MAC),
                (GUEST_IP, 41000),
                (dst, 5000),
                payload,
            )
            .unwrap(),
        )
    };
    // First datagram: logged allowed, the host side asked to open.
    let (_, actions) = h.send(&datagram(synthetic, b"ping"));
    let key = (41000, synthetic, 5000);
    assert!(actions.contains(&Action::UdpOpen {
        key,
        target: DialTarget::Name {
            name: "udp.test".into(),
            port: 5000
        },
        first: bytes::Bytes::from_static(b"ping"),
    }));
    let allowed = logs(&actions);
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0].decision, EgressAction::Allow);
    assert_eq!(allowed[0].proto, EgressLogProto::Udp);
    // Next datagram: sent on the same flow.
    let (_, actions) = h.send(&datagram(synthetic, b"again"));
    assert_eq!(
        actions,
        vec![Action::UdpSend {
            key,
            payload: bytes::Bytes::from_static(b"again")
        }]
    );
    // An answer reaches the guest from the address it sent to.
    let now = h.now();
    h.stack.udp_reply(key, b"pong", now);
    let (frames, _) = h.poll();
    let GuestFrame::Ipv4(v4) = classify(&frames[0]) else {
        panic!("no frame for the guest");
    };
    assert_eq!((v4.src, v4.dst), (synthetic, GUEST_IP));
    let L4::Udp {
        src_port,
        dst_port,
        payload,
    } = v4.l4
    else {
        panic!("not UDP")
    };
    assert_eq!((src_port, dst_port, payload), (5000, 41000, &b"pong"[..]));
    // A literal address no rule names: denied, nothing opened.
    let (_, actions) = h.send(&datagram(Ipv4Addr::new(192, 0, 2, 9), b"x"));
    assert!(!actions.iter().any(|a| matches!(a, Action::UdpOpen { .. })));
    assert_eq!(logs(&actions)[0].decision, EgressAction::Deny);
    // Idle for a minute: closed, logged with its bytes.
    h.ms += 61_000;
    let (_, actions) = h.poll();
    assert!(actions.contains(&Action::UdpClose { key }));
    let ended = logs(&actions);
    assert_eq!(ended[0].bytes_up, Some(9));
    assert_eq!(ended[0].bytes_down, Some(4));
    assert!(ended[0].ended_unix_ms.is_some());
}

#[test]
fn ipv6_frames_are_dropped_and_logged_once() {
    let mut h = Harness::new(vec![rule(1, EgressAction::Allow, "0.0.0.0/0")]);
    let mut frame = vec![0u8; 14 + 40 + 20];
    frame[..6].copy_from_slice(&GATEWAY_MAC);
    frame[6..12].copy_from_slice(&GUEST_MAC.0);
    frame[12] = 0x86;
    frame[13] = 0xdd;
    frame[14] = 0x60;
    frame[14 + 6] = 6; // TCP
    frame[14 + 24..14 + 40].copy_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    frame[14 + 42] = 0;
    frame[14 + 43] = 80;
    let (frames, actions) = h.send(&frame);
    assert!(frames.is_empty());
    let l = logs(&actions);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].proto, EgressLogProto::Ipv6);
    assert_eq!(l[0].port, Some(80));
    let (_, again) = h.send(&frame);
    assert!(logs(&again).is_empty(), "logged once per 30 s");
}

/// An IPv4 frame from the guest to `dst` carrying `payload` as `protocol`,
/// its header checksum right; `more_fragments` makes it a first fragment.
fn ipv4_frame(
    dst: Ipv4Addr,
    protocol: smoltcp::wire::IpProtocol,
    more_fragments: bool,
    payload: &[u8],
) -> Vec<u8> {
    use smoltcp::wire::Ipv4Packet;
    let mut frame = vec![0u8; 14 + 20 + payload.len()];
    frame[..6].copy_from_slice(&GATEWAY_MAC);
    frame[6..12].copy_from_slice(&GUEST_MAC.0);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len(u16::try_from(20 + payload.len()).unwrap());
    ip.set_ident(7);
    ip.clear_flags();
    ip.set_more_frags(more_fragments);
    ip.set_frag_offset(0);
    ip.set_hop_limit(64);
    ip.set_next_header(protocol);
    ip.set_src_addr(GUEST_IP);
    ip.set_dst_addr(dst);
    ip.payload_mut().copy_from_slice(payload);
    ip.fill_checksum();
    frame
}

/// Packets no relay carries (a fragment, a protocol other than TCP, UDP
/// and ICMP) are dropped with a log line saying why, once per place and
/// 30 s; even "allow everything" lets none through.
#[test]
fn fragments_and_other_ip_protocols_are_dropped_and_logged() {
    use smoltcp::wire::IpProtocol;
    let mut h = Harness::new(vec![rule(1, EgressAction::Allow, "0.0.0.0/0")]);
    let dst = Ipv4Addr::new(93, 184, 216, 34);
    let fragment = ipv4_frame(dst, IpProtocol::Udp, true, &[0u8; 64]);
    let (frames, actions) = h.send(&fragment);
    assert!(frames.is_empty());
    assert!(!actions.iter().any(|a| matches!(a, Action::UdpOpen { .. })));
    let l = logs(&actions);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0].proto, EgressLogProto::Ip);
    assert_eq!(l[0].decision, EgressAction::Deny);
    assert_eq!(l[0].addr.as_deref(), Some("93.184.216.34"));
    assert!(l[0].reason.contains("fragments"), "{l:?}");
    assert!(
        logs(&h.send(&fragment).1).is_empty(),
        "logged once per 30 s"
    );

    // Another place (a line per kind and place), another protocol.
    let gre = ipv4_frame(
        Ipv4Addr::new(93, 184, 216, 35),
        IpProtocol::Unknown(47),
        false,
        &[0u8; 8],
    );
    let (frames, actions) = h.send(&gre);
    assert!(frames.is_empty());
    let l = logs(&actions);
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(l[0].reason.contains("protocol 47"), "{l:?}");
}

/// Valid-checksum frames with arbitrary contents (the checksums are right,
/// so the bytes reach the parsers behind them).
fn arb_frame() -> impl Strategy<Value = Vec<u8>> {
    let ports = prop_oneof![Just(53u16), Just(67), Just(80), Just(443), any::<u16>()];
    let dst = prop_oneof![
        Just(GATEWAY_IP),
        Just(Ipv4Addr::BROADCAST),
        any::<u32>().prop_map(Ipv4Addr::from),
        (0u32..64).prop_map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i)),
    ];
    let udp = (
        dst.clone(),
        ports.clone(),
        any::<u16>(),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_filter_map("fits", |(dst, dport, sport, payload)| {
            udp_frame(
                EthernetAddress(GATEWAY_MAC),
                (GUEST_IP, sport),
                (dst, dport),
                &payload,
            )
            .map(from_guest)
        });
    let controls = prop_oneof![
        Just(TcpControl::Syn),
        Just(TcpControl::None),
        Just(TcpControl::Psh),
        Just(TcpControl::Fin),
        Just(TcpControl::Rst),
    ];
    let tcp = (
        dst,
        ports,
        (49152u16..49160),
        controls,
        any::<u32>(),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(dst, dport, sport, control, seq, ack, payload)| {
            tcp_frame(&Seg {
                dst: (dst, dport),
                src_port: sport,
                control,
                seq,
                ack,
                payload: &payload,
            })
        });
    let raw = proptest::collection::vec(any::<u8>(), 0..200);
    // A valid frame with a few bytes flipped afterwards.
    let flipped = (
        prop_oneof![Just(arp_request()), Just(client_hello("a.test"))],
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    )
        .prop_map(|(mut frame, flips)| {
            for (at, byte) in flips {
                let len = frame.len();
                frame[at % len] ^= byte;
            }
            frame
        });
    prop_oneof![udp, tcp, raw, flipped]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn malformed_frames_never_panic_or_hang(frames in proptest::collection::vec(arb_frame(), 1..40)) {
        let mut h = Harness::new(vec![
            rule(1, EgressAction::Allow, "*.test"),
            rule(2, EgressAction::Allow, "0.0.0.0/0"),
            rule(3, EgressAction::Deny, "bad.test"),
        ]);
        h.resolve("a.test");
        for frame in &frames {
            let (_, actions) = h.send(frame);
            // Answer every dial at once with a failure, so flows end.
            for action in actions {
                if let Action::Dial { id, .. } = action {
                    let now = h.now();
                    h.stack.dialed(id, Err(super::stack::DialError::Failed("test".into())), now);
                }
            }
        }
        // Time passes: timers fire, flows end.
        for _ in 0..5 {
            h.ms += 20_000;
            h.poll();
        }
    }

    #[test]
    fn parsers_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = super::sniff::tls_sni(&bytes);
        let _ = super::sniff::http_host(&bytes);
        let _ = super::dhcp::reply(&bytes);
        let _ = classify(&bytes);
        struct Deny;
        impl super::dns::DnsPolicy for Deny {
            fn resolve(&mut self, _: &str) -> super::rules::Verdict {
                super::rules::Verdict::deny(None, "no")
            }
            fn address(&mut self, _: &str) -> Option<Ipv4Addr> {
                None
            }
        }
        let _ = super::dns::answer(&bytes, &mut Deny);
    }
}

/// H7: a DNS-over-TCP client that sends queries and never reads the
/// replies gets a bounded backlog: the gateway stops reading its queries
/// (its TCP window closes) instead of queueing replies without end.
#[test]
fn dns_over_tcp_replies_stay_bounded_for_a_guest_that_never_reads() {
    let mut h = Harness::new(vec![rule(1, EgressAction::Allow, "allowed.test")]);
    let dst = (GATEWAY_IP, 53);
    let (frames, _) = h.send(&tcp_frame(&Seg {
        dst,
        src_port: 50053,
        control: TcpControl::Syn,
        seq: 5000,
        ack: None,
        payload: b"",
    }));
    let server_seq = segments(&frames)[0].2.wrapping_add(1);
    let mut query = Message::new(9, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(
        Name::from_ascii("allowed.test").unwrap(),
        RecordType::A,
    ));
    let query = query.to_vec().unwrap();
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let per_segment: Vec<u8> = framed.repeat(1400 / framed.len());
    let mut seq: u32 = 5001;
    let mut most = 0;
    for _ in 0..1000 {
        // The guest acknowledges only the SYN-ACK, never a reply.
        h.send(&tcp_frame(&Seg {
            dst,
            src_port: 50053,
            control: TcpControl::Psh,
            seq,
            ack: Some(server_seq),
            payload: &per_segment,
        }));
        seq = seq.wrapping_add(per_segment.len() as u32);
        most = most.max(h.stack.dns_backlog());
    }
    // 1000 segments of ~30 queries: ~1.4 MB of replies, were they all
    // answered; held are at most one read buffer of queries (64 KiB) and
    // the bounded replies.
    assert!(
        most <= 66 * 1024 + 24 * 1024,
        "the DNS-over-TCP backlog grew to {most} bytes"
    );
}

/// An allowed, dialled flow to allowed.test:8080 (a rule naming the port):
/// the harness, the host side's ends (what the guest sent arrives on the
/// first; the second feeds the guest).
fn open_flow() -> (
    Harness,
    mpsc::Receiver<bytes::Bytes>,
    mpsc::Sender<HostData>,
) {
    let mut h = Harness::new(vec![EgressRule {
        ports: Some(clawpen_api::PortRange::parse("8080").unwrap()),
        ..rule(1, EgressAction::Allow, "allowed.test")
    }]);
    let ip = h.resolve("allowed.test").unwrap();
    let (frames, actions) = h.send(&tcp_frame(&Seg {
        dst: (ip, 8080),
        src_port: 50010,
        control: TcpControl::Syn,
        seq: 1000,
        ack: None,
        payload: b"",
    }));
    // the guest completes the handshake
    let server_seq = segments(&frames)[0].2.wrapping_add(1);
    h.send(&tcp_frame(&Seg {
        dst: (ip, 8080),
        src_port: 50010,
        control: TcpControl::None,
        seq: 1001,
        ack: Some(server_seq),
        payload: b"",
    }));
    let Some(Action::Dial { id, .. }) = actions
        .iter()
        .find(|a| matches!(a, Action::Dial { .. }))
        .cloned()
    else {
        panic!("no dial: {actions:?}");
    };
    let (up, down) = h.host_answers(id);
    h.poll();
    assert_eq!(h.stack.flow_count(), 1);
    (h, up, down)
}

/// Removing the rule that allowed a flow ends it: the guest gets a reset,
/// the host side is closed, and the log says why.
#[test]
fn removing_a_rule_ends_the_flows_it_allowed() {
    let (mut h, mut up, _down) = open_flow();
    h.rules.send(Arc::new(RuleSet::new(vec![]))).unwrap();
    let (frames, actions) = h.poll();
    assert!(
        segments(&frames).iter().any(|s| s.0 == TcpControl::Rst),
        "no reset to the guest"
    );
    let ended = logs(&actions);
    assert_eq!(ended.len(), 1, "{actions:?}");
    assert_eq!(ended[0].decision, EgressAction::Deny);
    assert!(
        ended[0].reason.contains("rules changed"),
        "{}",
        ended[0].reason
    );
    assert!(ended[0].ended_unix_ms.is_some());
    // the host side's channel is closed
    assert!(matches!(
        up.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
    // a UDP flow the same way
    let mut udp_rule = rule(1, EgressAction::Allow, "udp.test");
    udp_rule.proto = Some(clawpen_api::EgressProto::Udp);
    let mut udp = Harness::new(vec![udp_rule]);
    let synthetic = udp.resolve("udp.test").unwrap();
    let datagram = from_guest(
        udp_frame(
            EthernetAddress(GATEWAY_MAC),
            (GUEST_IP, 41000),
            (synthetic, 5000),
            b"ping",
        )
        .unwrap(),
    );
    let (_, actions) = udp.send(&datagram);
    assert!(actions.iter().any(|a| matches!(a, Action::UdpOpen { .. })));
    udp.rules.send(Arc::new(RuleSet::new(vec![]))).unwrap();
    let (_, actions) = udp.poll();
    assert!(
        actions.iter().any(|a| matches!(a, Action::UdpClose { .. })),
        "{actions:?}"
    );
    let ended = logs(&actions);
    assert_eq!(ended.len(), 1, "{actions:?}");
    assert_eq!(ended[0].decision, EgressAction::Deny);
    assert!(
        ended[0].reason.contains("rules changed"),
        "{}",
        ended[0].reason
    );

    // a change that still allows it leaves a flow alone
    let (mut h, _up, _down) = open_flow();
    h.rules
        .send(Arc::new(RuleSet::new(vec![rule(
            2,
            EgressAction::Allow,
            "*.test",
        )])))
        .unwrap();
    let (_, actions) = h.poll();
    assert!(logs(&actions).is_empty(), "{actions:?}");
    assert_eq!(h.stack.flow_count(), 1);
}

/// A flow that moves nothing for ten minutes is ended (no pinned host
/// connections); one that keeps moving bytes is not.
#[test]
fn idle_tcp_flows_are_ended() {
    let (mut h, _up, down) = open_flow();
    h.ms += 9 * 60 * 1000;
    down.try_send(HostData::Data(bytes::Bytes::from_static(b"tick")))
        .unwrap();
    h.poll();
    h.ms += 9 * 60 * 1000;
    let (_, actions) = h.poll();
    assert!(logs(&actions).is_empty(), "ended while active: {actions:?}");
    h.ms += 2 * 60 * 1000;
    // (the guest's ARP again: the gateway's neighbour entry expired)
    let (frames, actions) = h.send(&arp_request());
    let ended = logs(&actions);
    assert_eq!(ended.len(), 1, "{actions:?}");
    assert!(
        ended[0].reason.contains("without a byte"),
        "{}",
        ended[0].reason
    );
    let segs = segments(&frames);
    assert!(segs.iter().any(|s| s.0 == TcpControl::Rst), "{segs:?}");
}

/// QUIC: a UDP rule for a name does not carry UDP 443 (the name asked
/// for is hidden in the Initial) unless the rule names port 443.
#[test]
fn quic_to_a_name_needs_a_rule_that_names_port_443() {
    let udp_rule = |ports: Option<&str>| EgressRule {
        proto: Some(clawpen_api::EgressProto::Udp),
        ports: ports.map(|p| clawpen_api::PortRange::parse(p).unwrap()),
        ..rule(1, EgressAction::Allow, "udp.test")
    };
    let first_datagram = |rules: Vec<EgressRule>, port: u16| {
        let mut h = Harness::new(rules);
        let synthetic = h.resolve("udp.test").unwrap();
        let frame = from_guest(
            udp_frame(
                EthernetAddress(GATEWAY_MAC),
                (GUEST_IP, 41000),
                (synthetic, port),
                b"\xc0\x00\x00\x00\x01initial",
            )
            .unwrap(),
        );
        let (_, actions) = h.send(&frame);
        let opened = actions.iter().any(|a| matches!(a, Action::UdpOpen { .. }));
        let reason = logs(&actions).first().map(|e| e.reason.clone());
        (opened, reason)
    };
    let (opened, reason) = first_datagram(vec![udp_rule(None)], 443);
    assert!(!opened);
    assert!(reason.unwrap().contains("QUIC"));
    assert!(
        first_datagram(vec![udp_rule(None)], 4433).0,
        "other UDP ports still go"
    );
    assert!(first_datagram(vec![udp_rule(Some("443"))], 443).0);
}
