//! A frame from the guest, as the gateway first meets it: `classify` takes
//! any bytes without panicking. When the first input byte is odd, valid
//! IPv4, UDP and TCP checksums are written in first, so the fuzzer gets past
//! the checksum checks to what lies behind them; a UDP datagram for the
//! gateway's DHCP or DNS port then goes on to those servers, as in the
//! gateway.

use crate::NameLengthPolicy;
use clawpen_supervisor::fuzzing::{classify, dhcp_reply, dns_answer, GuestFrame, Ipv4Frame, L4};
use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

/// Writes valid checksums into an Ethernet/IPv4 frame, as far as it parses.
fn fill_checksums(frame: &mut [u8]) {
    let Ok(mut eth) = EthernetFrame::new_checked(frame) else {
        return;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    ip.fill_checksum();
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let protocol = ip.next_header();
    let payload = ip.payload_mut();
    match protocol {
        IpProtocol::Udp => {
            if let Ok(mut udp) = UdpPacket::new_checked(payload) {
                udp.fill_checksum(&src, &dst);
            }
        }
        IpProtocol::Tcp => {
            if let Ok(mut tcp) = TcpPacket::new_checked(payload) {
                tcp.fill_checksum(&src, &dst);
            }
        }
        _ => {}
    }
}

/// One input (the binary `guest_frame` is this function under libFuzzer).
pub fn run(data: &[u8]) {
    let Some((&mode, frame)) = data.split_first() else {
        return;
    };
    let mut frame = frame.to_vec();
    if mode % 2 == 1 {
        fill_checksums(&mut frame);
    }
    if let GuestFrame::Ipv4(Ipv4Frame {
        l4: L4::Udp {
            dst_port, payload, ..
        },
        ..
    }) = classify(&frame)
    {
        match dst_port {
            53 => {
                let _ = dns_answer(payload, &mut NameLengthPolicy);
            }
            67 => {
                let _ = dhcp_reply(payload);
            }
            _ => {}
        }
    }
}
