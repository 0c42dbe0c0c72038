//! The gateway's DNS server on any message: no panic, and an answer is a
//! well-formed DNS response to the query's id.

use crate::NameLengthPolicy;
use clawpen_supervisor::fuzzing::dns_answer;
use hickory_proto::op::{Message, MessageType};

/// One input (the binary `dns` is this function under libFuzzer).
pub fn run(query: &[u8]) {
    let Some((reply, _decision)) = dns_answer(query, &mut NameLengthPolicy) else {
        return;
    };
    let reply = Message::from_vec(&reply).expect("the gateway's answer parses");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    let id = u16::from_be_bytes([query[0], query[1]]);
    assert_eq!(reply.metadata.id, id, "answer to another query id");
}
