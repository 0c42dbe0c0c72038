//! The two framings, and the datagram link end to end: a real
//! `socketpair(AF_UNIX, SOCK_DGRAM)` (what VZ's file-handle attachment gets)
//! carrying real guest frames to a running gateway and its answers back.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use clawpen_api::VmName;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress,
    EthernetFrame, EthernetProtocol,
};

use super::*;
use crate::egress::net::{GATEWAY_IP, GATEWAY_MAC, GUEST_IP};
use crate::egress::tests::{arp_request, GUEST_MAC};
use crate::egress::wire::{classify, udp_frame, GuestFrame, L4};
use crate::egress::Egress;
use crate::events::EventBus;
use crate::store::Store;

#[test]
fn stream_frames_are_cut_at_their_length_prefix() {
    let mut inbox = BytesMut::new();
    inbox.extend_from_slice(&[0, 0, 0, 2, b'a', b'b', 0, 0, 0, 3, b'c']);
    let mut seen = Vec::new();
    take_prefixed(&mut inbox, |f| seen.push(f.to_vec())).unwrap();
    assert_eq!(seen, vec![b"ab".to_vec()]);
    assert_eq!(&inbox[..], &[0, 0, 0, 3, b'c']);
    inbox.extend_from_slice(b"de");
    take_prefixed(&mut inbox, |f| seen.push(f.to_vec())).unwrap();
    assert_eq!(seen[1], b"cde".to_vec());
    assert!(inbox.is_empty());
    inbox.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(take_prefixed(&mut inbox, |_| {}).is_err());
}

fn tokio_end(socket: std::os::unix::net::UnixDatagram) -> UnixDatagram {
    socket.set_nonblocking(true).unwrap();
    UnixDatagram::from_std(socket).unwrap()
}

/// Every frame size up to the largest one crosses the pair as one datagram,
/// in order, both ways; a datagram longer than a frame is dropped and the
/// link goes on.
#[tokio::test]
async fn datagram_link_carries_whole_frames_and_drops_oversized_ones() {
    let (gateway, vmm) = datagram_pair().unwrap();
    let vmm = tokio_end(vmm);
    let mut link = LinkSource::Datagram(gateway).open().await.unwrap().unwrap();

    let sizes = [60, 1514, 9000, MAX_FRAME];
    for (i, &size) in sizes.iter().enumerate() {
        vmm.send(&vec![i as u8; size]).await.unwrap();
    }
    let mut seen = Vec::new();
    while seen.len() < sizes.len() {
        link.fill().await.unwrap();
        link.take_frames(|f| seen.push(f.to_vec())).unwrap();
    }
    for (i, frame) in seen.iter().enumerate() {
        assert_eq!(frame.len(), sizes[i]);
        assert!(frame.iter().all(|&b| b == i as u8));
    }

    vmm.send(&vec![9; MAX_FRAME + 100]).await.unwrap();
    vmm.send(b"after").await.unwrap();
    let mut after = Vec::new();
    while after.is_empty() {
        link.fill().await.unwrap();
        link.take_frames(|f| after.push(f.to_vec())).unwrap();
    }
    assert_eq!(after, vec![b"after".to_vec()]);

    link.send([&b"one"[..], &[7u8; 65534][..]]).await.unwrap();
    let mut buf = vec![0; MAX_FRAME + 1];
    assert_eq!(vmm.recv(&mut buf).await.unwrap(), 3);
    assert_eq!(vmm.recv(&mut buf).await.unwrap(), 65534);
}

fn dhcp_discover() -> Vec<u8> {
    let repr = DhcpRepr {
        message_type: DhcpMessageType::Discover,
        transaction_id: 0x0c1a_5a01,
        secs: 0,
        client_hardware_address: GUEST_MAC,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: true,
        requested_ip: None,
        client_identifier: Some(GUEST_MAC),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 26]),
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    };
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
        .unwrap();
    let mut frame = udp_frame(
        EthernetAddress::BROADCAST,
        (Ipv4Addr::UNSPECIFIED, 68),
        (Ipv4Addr::BROADCAST, 67),
        &payload,
    )
    .unwrap();
    // Built as if from the gateway; it is the guest's (the UDP checksum does
    // not cover MAC addresses).
    EthernetFrame::new_unchecked(&mut frame[..]).set_src_addr(GUEST_MAC);
    frame
}

/// Reads frames from the gateway until `pick` accepts one.
async fn answer<T>(vmm: &UnixDatagram, mut pick: impl FnMut(&[u8]) -> Option<T>) -> T {
    let mut buf = vec![0u8; MAX_FRAME];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = vmm.recv(&mut buf).await.unwrap();
            if let Some(found) = pick(&buf[..n]) {
                return found;
            }
        }
    })
    .await
    .expect("the gateway answered within 10 s")
}

/// The VZ wiring without a Mac: the VMM end of a datagram socketpair is fed
/// an ARP request and a DHCP discover, exactly as a guest's virtio-net device
/// would send them, and the running gateway answers each on the same pair.
#[tokio::test]
async fn gateway_answers_arp_and_dhcp_over_a_datagram_socketpair() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("clawpen.db")).unwrap());
    let egress = Egress::new(store, EventBus::default()).unwrap();
    let (gateway_end, vmm_end) = datagram_pair().unwrap();
    let vmm = tokio_end(vmm_end);
    let vm = VmName::parse("mac").unwrap();
    let _gateway = egress
        .attach_link(&vm, LinkSource::Datagram(gateway_end))
        .unwrap();

    vmm.send(&arp_request()).await.unwrap();
    let (mac, ip) = answer(&vmm, |frame| {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EthernetProtocol::Arp || eth.dst_addr() != GUEST_MAC {
            return None;
        }
        match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()? {
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr,
                source_protocol_addr,
                ..
            } => Some((source_hardware_addr, source_protocol_addr)),
            _ => None,
        }
    })
    .await;
    assert_eq!(mac, EthernetAddress(GATEWAY_MAC));
    assert_eq!(ip, GATEWAY_IP);

    vmm.send(&dhcp_discover()).await.unwrap();
    let (kind, your_ip, router) = answer(&vmm, |frame| {
        let GuestFrame::Ipv4(v4) = classify(frame) else {
            return None;
        };
        let L4::Udp { payload, .. } = v4.l4 else {
            return None;
        };
        let packet = DhcpPacket::new_checked(payload).ok()?;
        let reply = DhcpRepr::parse(&packet).ok()?;
        (reply.transaction_id == 0x0c1a_5a01).then_some((
            reply.message_type,
            reply.your_ip,
            reply.router,
        ))
    })
    .await;
    assert_eq!(kind, DhcpMessageType::Offer);
    assert_eq!(your_ip, GUEST_IP);
    assert_eq!(router, Some(GATEWAY_IP));
}
