//! The gateway's DNS server on any message: no panic, and an answer is a
//! well-formed DNS response to the query's id.

#![no_main]

use std::net::Ipv4Addr;

use clawpen_supervisor::fuzzing::{dns_answer, DnsPolicy, Verdict};
use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;

/// Allows names of even length, with an address for two names in three.
struct Policy;

impl DnsPolicy for Policy {
    fn resolve(&mut self, name: &str) -> Verdict {
        if name.len().is_multiple_of(2) {
            Verdict::allow(None, "fuzz: even")
        } else {
            Verdict::deny(None, "fuzz: odd")
        }
    }

    fn address(&mut self, name: &str) -> Option<Ipv4Addr> {
        (!name.len().is_multiple_of(3)).then_some(Ipv4Addr::new(198, 18, 0, 1))
    }
}

fuzz_target!(|query: &[u8]| {
    let Some((reply, _decision)) = dns_answer(query, &mut Policy) else {
        return;
    };
    let reply = Message::from_vec(&reply).expect("the gateway's answer parses");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    let id = u16::from_be_bytes([query[0], query[1]]);
    assert_eq!(reply.metadata.id, id, "answer to another query id");
});
