//! The guest's fixed network and the address ranges the gateway treats as
//! special.
//!
//! Every VM sees the same small network, so an image can rely on it and a
//! snapshot stays valid across gateways:
//!
//! ```text
//! 10.200.0.1    the gateway: DHCP server, DNS server (UDP and TCP 53), default
//!               route; port 80 is the inference service
//! 10.200.0.2/24 the guest (by DHCP)
//! 198.18.0.0/15 synthetic addresses: each allowed name the guest resolves gets
//!               one, and a connection to it is a connection to that name
//! ```

use std::net::{IpAddr, Ipv4Addr};

use clawpen_api::Cidr;

pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
pub const PREFIX_LEN: u8 = 24;
/// The gateway's MAC (locally administered, unicast).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xc1, 0xa5, 0x00, 0x00, 0x01];
/// The guest NIC's MAC, fixed so a memory snapshot's ARP cache stays right.
pub const GUEST_MAC: &str = "52:54:00:c1:a5:02";
/// DNS, on UDP and TCP, answered by the gateway itself.
pub const DNS_PORT: u16 = 53;
/// The inference service, at `http://10.200.0.1/`.
pub const INFERENCE_PORT: u16 = 80;
/// The OpenAI base URL guests use for the inference service.
pub fn guest_inference_url() -> String {
    // HTTP's default port, so the URL carries none.
    const _: () = assert!(INFERENCE_PORT == 80);
    format!("http://{GATEWAY_IP}/v1")
}
/// A name for the inference service that resolves without any rule.
pub const INFERENCE_NAME: &str = "inference.clawpen.internal";
/// The pool of synthetic (fake-IP) addresses: RFC 2544's benchmarking range,
/// which no real service uses.
pub const FAKE_POOL_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const FAKE_POOL_PREFIX: u8 = 15;
/// Link MTU handed out by DHCP. The link is virtual and every TCP flow ends
/// at the gateway, so nothing outside sees it; large frames cut the guest's
/// per-packet work, which dominates under TCG (32 MiB download: ~2x faster
/// than at 1500).
pub const MTU: u16 = 65520;

/// True if `ip` is in the synthetic address pool.
pub fn in_fake_pool(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> (32 - FAKE_POOL_PREFIX) == u32::from(FAKE_POOL_BASE) >> (32 - FAKE_POOL_PREFIX)
}

/// Ranges a connection never reaches unless an allow rule names them (a CIDR
/// inside the range): the host itself, private networks, link-local (cloud
/// metadata at 169.254.169.254), and everything that is not unicast.
const SPECIAL: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (metadata)"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b::/96", "NAT64"),
    ("fc00::/7", "unique-local (private)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// A special range an address falls in, with a word for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialRange {
    pub cidr: Cidr,
    pub kind: &'static str,
}

/// The special range `ip` is in, if any (IPv4-mapped IPv6 as its IPv4).
pub fn special_range(ip: IpAddr) -> Option<SpecialRange> {
    let ip = ip.to_canonical();
    SPECIAL.iter().find_map(|(cidr, kind)| {
        let cidr = Cidr::parse(cidr).ok()?;
        cidr.contains(ip).then_some(SpecialRange { cidr, kind })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ranges_cover_the_host_and_metadata() {
        for (ip, kind) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local (metadata)"),
            ("10.1.2.3", "private"),
            ("192.168.1.1", "private"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("fd00:ec2::254", "unique-local (private)"),
            ("255.255.255.255", "reserved"),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(special_range(ip).map(|s| s.kind), Some(kind), "{ip}");
        }
        assert_eq!(special_range("140.82.112.3".parse().unwrap()), None);
        assert_eq!(special_range("2606:4700::1".parse().unwrap()), None);
    }

    #[test]
    fn fake_pool_bounds() {
        assert!(in_fake_pool(Ipv4Addr::new(198, 18, 0, 1)));
        assert!(in_fake_pool(Ipv4Addr::new(198, 19, 255, 254)));
        assert!(!in_fake_pool(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!in_fake_pool(Ipv4Addr::new(198, 17, 255, 255)));
    }
}
