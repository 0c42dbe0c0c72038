//! The gateway's DHCP server on any UDP payload: no panic, and a reply is a
//! DHCP message that parses.

#![no_main]

use clawpen_supervisor::fuzzing::dhcp_reply;
use libfuzzer_sys::fuzz_target;
use smoltcp::wire::{DhcpPacket, DhcpRepr};

fuzz_target!(|request: &[u8]| {
    if let Some(reply) = dhcp_reply(request) {
        let packet = DhcpPacket::new_checked(&reply[..]).expect("the reply is a DHCP packet");
        DhcpRepr::parse(&packet).expect("the reply's options parse");
    }
});
