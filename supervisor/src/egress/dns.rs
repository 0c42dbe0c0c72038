//! The gateway's DNS server (UDP and TCP port 53 of the gateway), on
//! hickory-proto's wire format: an allowed name gets a synthetic address, a
//! denied one NXDOMAIN. Nothing is forwarded, so DNS is no tunnel out.
//!
//! Only `A` questions get addresses; `AAAA` and every other type of an
//! allowed name get an empty answer (the guest has no IPv6, and records like
//! HTTPS/SVCB could carry address hints around the synthetic address).

use std::net::Ipv4Addr;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use super::rules::Verdict;

/// TTL of synthetic answers: short, so rule changes reach cached names soon.
const TTL: u32 = 60;
/// EDNS payload size we advertise (the DNS flag day value).
const EDNS_PAYLOAD: u16 = 1232;

/// What the DNS server needs from the gateway.
pub trait DnsPolicy {
    /// May the guest resolve `name` (normalised)? Built-in names included.
    fn resolve(&mut self, name: &str) -> Verdict;
    /// The address to answer for an allowed `name`; `None` if none is left.
    fn address(&mut self, name: &str) -> Option<Ipv4Addr>;
}

/// One question and what was decided, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsDecision {
    pub name: String,
    pub qtype: String,
    pub verdict: Verdict,
    pub answer: Option<Ipv4Addr>,
}

/// Answers one DNS message. `None` when it is too broken to answer at all
/// (shorter than a header) or is itself a response (never answer those: no
/// reflection loops).
pub fn answer(query: &[u8], policy: &mut impl DnsPolicy) -> Option<(Vec<u8>, Option<DnsDecision>)> {
    let message = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return form_error(query).map(|reply| (reply, None)),
    };
    if message.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::new(
        message.metadata.id,
        MessageType::Response,
        message.metadata.op_code,
    );
    reply.metadata = Metadata::response_from_request(&message.metadata);
    reply.metadata.recursion_available = true;
    if message.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    let [question] = message.queries.as_slice() else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return encode(&reply).map(|r| (r, None));
    };
    reply.add_query(question.clone());
    if message.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return encode(&reply).map(|r| (r, None));
    }
    let qtype = question.query_type();
    let raw_name = question.name().to_ascii();
    let Some(name) = clawpen_api::egress::normalise_domain(&raw_name) else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        let decision = DnsDecision {
            name: raw_name.chars().take(256).collect(),
            qtype: qtype.to_string(),
            verdict: Verdict::deny(None, "not a valid host name"),
            answer: None,
        };
        return encode(&reply).map(|r| (r, Some(decision)));
    };
    let mut verdict = if question.query_class() == DNSClass::IN {
        policy.resolve(&name)
    } else {
        Verdict::deny(None, "only class IN is answered")
    };
    let mut answer = None;
    if verdict.allow && qtype == RecordType::A {
        match policy.address(&name) {
            Some(addr) => {
                reply.add_answer(Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::A(A(addr)),
                ));
                answer = Some(addr);
            }
            None => {
                verdict = Verdict::deny(None, "synthetic address pool exhausted");
                reply.metadata.response_code = ResponseCode::ServFail;
            }
        }
    }
    if !verdict.allow && reply.metadata.response_code == ResponseCode::NoError {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    let decision = DnsDecision {
        name,
        qtype: qtype.to_string(),
        verdict,
        answer,
    };
    encode(&reply).map(|r| (r, Some(decision)))
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    message.to_vec().ok()
}

/// FORMERR for a message we cannot parse but whose header we can read.
fn form_error(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    // QR bit set: it claims to be a response; stay quiet.
    if header[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([header[0], header[1]]);
    encode(&Message::error_msg(
        id,
        OpCode::Query,
        ResponseCode::FormErr,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    struct Fixed;
    impl DnsPolicy for Fixed {
        fn resolve(&mut self, name: &str) -> Verdict {
            if name == "allowed.test" {
                Verdict::allow(Some(1), "rule 1")
            } else {
                Verdict::deny(None, "default deny")
            }
        }
        fn address(&mut self, _: &str) -> Option<Ipv4Addr> {
            Some(Ipv4Addr::new(198, 18, 0, 9))
        }
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        m.to_vec().unwrap()
    }

    fn ask(name: &str, qtype: RecordType) -> (Message, Option<DnsDecision>) {
        let (reply, decision) = answer(&query(name, qtype), &mut Fixed).unwrap();
        (Message::from_vec(&reply).unwrap(), decision)
    }

    #[test]
    fn allowed_names_get_a_synthetic_address_and_no_aaaa() {
        let (reply, decision) = ask("Allowed.Test.", RecordType::A);
        assert_eq!(reply.metadata.id, 0x1234);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
        let decision = decision.unwrap();
        assert_eq!(decision.name, "allowed.test");
        assert_eq!(decision.answer, Some(Ipv4Addr::new(198, 18, 0, 9)));
        let (reply, decision) = ask("allowed.test", RecordType::AAAA);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
        assert!(decision.unwrap().verdict.allow);
    }

    #[test]
    fn denied_names_get_nxdomain() {
        let (reply, decision) = ask("other.test", RecordType::A);
        assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        assert!(reply.answers.is_empty());
        assert!(!decision.unwrap().verdict.allow);
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        assert!(answer(b"", &mut Fixed).is_none());
        assert!(answer(&[0u8; 5], &mut Fixed).is_none());
        let (reply, _) =
            answer(&[0x12, 0x34, 1, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1], &mut Fixed).unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        // A response is never answered.
        let mut q = query("allowed.test", RecordType::A);
        q[2] |= 0x80;
        assert!(answer(&q, &mut Fixed).is_none());
    }
}
