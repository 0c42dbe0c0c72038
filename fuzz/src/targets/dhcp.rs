//! The gateway's DHCP server on any UDP payload: no panic, and a reply is a
//! DHCP message that parses.

use clawpen_supervisor::fuzzing::dhcp_reply;
use smoltcp::wire::{DhcpPacket, DhcpRepr};

/// One input (the binary `dhcp` is this function under libFuzzer).
pub fn run(request: &[u8]) {
    if let Some(reply) = dhcp_reply(request) {
        let packet = DhcpPacket::new_checked(&reply[..]).expect("the reply is a DHCP packet");
        DhcpRepr::parse(&packet).expect("the reply's options parse");
    }
}
