//! The gateway's DHCP server: the guest always gets the same address, the
//! gateway as router and DNS server, and an infinite lease (so a guest
//! restored from a memory snapshot never needs to renew).

use std::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

use super::net::{GATEWAY_IP, GUEST_IP, MTU, NETMASK};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

/// DHCP option codes we add beyond smoltcp's fields.
const OPT_DNS: u8 = 6;
const OPT_MTU: u8 = 26;

/// The answer to a DHCP message from the guest (the UDP payload), if any.
pub fn reply(request: &[u8]) -> Option<Vec<u8>> {
    let packet = DhcpPacket::new_checked(request).ok()?;
    let req = DhcpRepr::parse(&packet).ok()?;
    let (message_type, your_ip) = match req.message_type {
        DhcpMessageType::Discover => (DhcpMessageType::Offer, GUEST_IP),
        DhcpMessageType::Request => {
            let wanted = req
                .requested_ip
                .or((!req.client_ip.is_unspecified()).then_some(req.client_ip));
            // A request for another server's offer is not ours to answer.
            if req.server_identifier.is_some_and(|s| s != GATEWAY_IP) {
                return None;
            }
            match wanted {
                Some(ip) if ip != GUEST_IP => (DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED),
                _ => (DhcpMessageType::Ack, GUEST_IP),
            }
        }
        DhcpMessageType::Inform => (DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED),
        _ => return None,
    };
    let nak = message_type == DhcpMessageType::Nak;
    let dns = GATEWAY_IP.octets();
    let mtu = MTU.to_be_bytes();
    let options = [
        DhcpOption {
            kind: OPT_DNS,
            data: &dns,
        },
        DhcpOption {
            kind: OPT_MTU,
            data: &mtu,
        },
    ];
    let answer = DhcpRepr {
        message_type,
        transaction_id: req.transaction_id,
        secs: 0,
        client_hardware_address: req.client_hardware_address,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: (!nak).then_some(GATEWAY_IP),
        subnet_mask: (!nak).then_some(NETMASK),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: req.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(GATEWAY_IP),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: (!nak).then_some(u32::MAX),
        renew_duration: None,
        rebind_duration: None,
        additional_options: if nak { &[] } else { &options },
    };
    let mut buf = vec![0u8; answer.buffer_len()];
    answer
        .emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
        .ok()?;
    Some(buf)
}

/// Where DHCP answers go: broadcast, since the guest has no address yet.
pub fn reply_mac() -> EthernetAddress {
    EthernetAddress::BROADCAST
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(message_type: DhcpMessageType, requested: Option<Ipv4Addr>) -> Vec<u8> {
        let repr = DhcpRepr {
            message_type,
            transaction_id: 0x1234_5678,
            secs: 0,
            client_hardware_address: EthernetAddress([0x52, 0x54, 0, 0xc1, 0xa5, 2]),
            client_ip: Ipv4Addr::UNSPECIFIED,
            your_ip: Ipv4Addr::UNSPECIFIED,
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: None,
            subnet_mask: None,
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: false,
            requested_ip: requested,
            client_identifier: None,
            server_identifier: None,
            parameter_request_list: Some(&[1, 3, 6]),
            dns_servers: None,
            max_size: None,
            lease_duration: None,
            renew_duration: None,
            rebind_duration: None,
            additional_options: &[],
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut DhcpPacket::new_unchecked(&mut buf[..]))
            .unwrap();
        buf
    }

    fn parse(bytes: &[u8]) -> (DhcpMessageType, Ipv4Addr, Option<Ipv4Addr>) {
        let packet = DhcpPacket::new_checked(bytes).unwrap();
        let repr = DhcpRepr::parse(&packet).unwrap();
        (repr.message_type, repr.your_ip, repr.router)
    }

    #[test]
    fn discover_request_ack() {
        let offer = reply(&request(DhcpMessageType::Discover, None)).unwrap();
        assert_eq!(
            parse(&offer),
            (DhcpMessageType::Offer, GUEST_IP, Some(GATEWAY_IP))
        );
        let ack = reply(&request(DhcpMessageType::Request, Some(GUEST_IP))).unwrap();
        assert_eq!(parse(&ack).0, DhcpMessageType::Ack);
        let nak = reply(&request(
            DhcpMessageType::Request,
            Some(Ipv4Addr::new(10, 200, 0, 7)),
        ))
        .unwrap();
        assert_eq!(parse(&nak).0, DhcpMessageType::Nak);
        assert!(reply(&request(DhcpMessageType::Release, None)).is_none());
        assert!(reply(b"garbage").is_none());
    }
}
