//! Looking at a guest frame before anything acts on it, and building the few
//! frames the gateway writes by hand (DHCP and DNS answers). Parsing goes
//! through smoltcp's checked wire types (lengths and checksums verified), so
//! a malformed frame is dropped here, never half-understood.

use std::net::{Ipv4Addr, Ipv6Addr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
};

use super::net::GATEWAY_MAC;

/// What a guest frame is, as far as the gateway's decisions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFrame<'a> {
    /// ARP: smoltcp answers for the gateway.
    Arp,
    /// Any IPv6 frame: dropped (and logged).
    Ipv6 {
        dst: Ipv6Addr,
        next_header: u8,
        port: Option<u16>,
    },
    Ipv4(Ipv4Frame<'a>),
    /// Another ethertype, or a frame too broken to read: dropped.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Frame<'a> {
    pub src_mac: EthernetAddress,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub l4: L4<'a>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4<'a> {
    /// A TCP SYN without ACK: a new connection (checksum verified).
    TcpSyn { src_port: u16, dst_port: u16 },
    /// Any other TCP segment: smoltcp checks it against its sockets.
    Tcp,
    /// A UDP datagram (checksum verified).
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: &'a [u8],
    },
    /// An ICMP echo request.
    IcmpEcho,
    /// Other ICMP.
    Icmp,
    /// A fragment: never reassembled, so never a way around the checks.
    Fragment,
    /// Another IP protocol, or a segment that fails its checks.
    Other(u8),
}

/// Classifies a frame from the guest.
pub fn classify(frame: &[u8]) -> GuestFrame<'_> {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return GuestFrame::Other;
    };
    let payload = &frame[smoltcp::wire::ETHERNET_HEADER_LEN..];
    match eth.ethertype() {
        EthernetProtocol::Arp => GuestFrame::Arp,
        EthernetProtocol::Ipv6 => classify_v6(payload),
        EthernetProtocol::Ipv4 => match classify_v4(eth.src_addr(), payload) {
            Some(v4) => GuestFrame::Ipv4(v4),
            None => GuestFrame::Other,
        },
        _ => GuestFrame::Other,
    }
}

fn classify_v6(packet: &[u8]) -> GuestFrame<'_> {
    let Some(header) = packet.get(..40) else {
        return GuestFrame::Other;
    };
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&header[24..40]);
    let next_header = header[6];
    let port = match next_header {
        6 | 17 => packet.get(42..44).map(|b| u16::from_be_bytes([b[0], b[1]])),
        _ => None,
    };
    GuestFrame::Ipv6 {
        dst: Ipv6Addr::from(dst),
        next_header,
        port,
    }
}

fn classify_v4(src_mac: EthernetAddress, packet: &[u8]) -> Option<Ipv4Frame<'_>> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.more_frags() || ip.frag_offset() != 0 {
        // smoltcp's `Ipv4Repr` refuses fragments (it reassembles none), so
        // what their log line needs is read here, from a checked header.
        if ip.version() != 4 || !ip.verify_checksum() {
            return None;
        }
        return Some(Ipv4Frame {
            src_mac,
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            l4: L4::Fragment,
        });
    }
    let caps = ChecksumCapabilities::default();
    let repr = Ipv4Repr::parse(&ip, &caps).ok()?;
    let header_len = usize::from(ip.header_len());
    let total_len = usize::from(ip.total_len());
    let payload = packet.get(header_len..total_len)?;
    let (src, dst) = (repr.src_addr, repr.dst_addr);
    let l4 = classify_l4(repr.next_header, src, dst, payload);
    Some(Ipv4Frame {
        src_mac,
        src,
        dst,
        l4,
    })
}

fn classify_l4<'a>(proto: IpProtocol, src: Ipv4Addr, dst: Ipv4Addr, payload: &'a [u8]) -> L4<'a> {
    let caps = ChecksumCapabilities::default();
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    match proto {
        IpProtocol::Tcp => {
            let Ok(packet) = TcpPacket::new_checked(payload) else {
                return L4::Other(6);
            };
            match TcpRepr::parse(&packet, &s, &d, &caps) {
                Ok(tcp) if tcp.control == TcpControl::Syn && tcp.ack_number.is_none() => {
                    L4::TcpSyn {
                        src_port: tcp.src_port,
                        dst_port: tcp.dst_port,
                    }
                }
                Ok(_) => L4::Tcp,
                Err(_) => L4::Other(6),
            }
        }
        IpProtocol::Udp => {
            let Ok(packet) = UdpPacket::new_checked(payload) else {
                return L4::Other(17);
            };
            match UdpRepr::parse(&packet, &s, &d, &caps) {
                Ok(udp) => L4::Udp {
                    src_port: udp.src_port,
                    dst_port: udp.dst_port,
                    payload: packet.payload(),
                },
                Err(_) => L4::Other(17),
            }
        }
        IpProtocol::Icmp => match payload.first() {
            Some(8) => L4::IcmpEcho,
            _ => L4::Icmp,
        },
        other => L4::Other(u8::from(other)),
    }
}

/// An Ethernet + IPv4 + UDP frame from the gateway.
pub fn udp_frame(
    dst_mac: EthernetAddress,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Option<Vec<u8>> {
    let udp = UdpRepr {
        src_port: src.1,
        dst_port: dst.1,
    };
    let udp_len = udp.header_len() + payload.len();
    let ip = Ipv4Repr {
        src_addr: src.0,
        dst_addr: dst.0,
        next_header: IpProtocol::Udp,
        payload_len: udp_len,
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GATEWAY_MAC),
        dst_addr: dst_mac,
        ethertype: EthernetProtocol::Ipv4,
    };
    let total = eth.buffer_len() + ip.buffer_len() + udp_len;
    if ip.buffer_len() + udp_len > usize::from(u16::MAX) {
        return None;
    }
    let mut buf = vec![0u8; total];
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut datagram,
        &IpAddress::Ipv4(src.0),
        &IpAddress::Ipv4(dst.0),
        payload.len(),
        |out| out.copy_from_slice(payload),
        &caps,
    );
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_udp_frame_classifies_back() {
        let frame = udp_frame(
            EthernetAddress([2, 0, 0, 0, 0, 9]),
            (Ipv4Addr::new(10, 200, 0, 2), 5353),
            (Ipv4Addr::new(10, 200, 0, 1), 53),
            b"hello",
        )
        .unwrap();
        let GuestFrame::Ipv4(v4) = classify(&frame) else {
            panic!("not ipv4");
        };
        assert_eq!(v4.dst, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(
            v4.l4,
            L4::Udp {
                src_port: 5353,
                dst_port: 53,
                payload: b"hello"
            }
        );
        // A flipped payload bit fails the UDP checksum.
        let mut bad = frame.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let GuestFrame::Ipv4(v4) = classify(&bad) else {
            panic!("not ipv4");
        };
        assert_eq!(v4.l4, L4::Other(17));
    }

    #[test]
    fn short_frames_are_other() {
        assert_eq!(classify(&[]), GuestFrame::Other);
        assert_eq!(classify(&[0; 13]), GuestFrame::Other);
        let mut v6 = vec![0u8; 14 + 20];
        v6[12] = 0x86;
        v6[13] = 0xdd;
        assert_eq!(classify(&v6), GuestFrame::Other);
    }
}
