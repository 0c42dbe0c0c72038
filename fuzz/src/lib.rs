//! What the fuzz targets (`fuzz_targets/`) share.

use std::net::Ipv4Addr;

use clawpen_supervisor::fuzzing::{DnsPolicy, Verdict};

/// A DNS policy that decides by the name alone, so one input always gets
/// the same answers: names of even length are allowed, and two in three
/// of those get an address (the rest find the address pool empty).
pub struct NameLengthPolicy;

impl DnsPolicy for NameLengthPolicy {
    fn resolve(&mut self, name: &str) -> Verdict {
        if name.len().is_multiple_of(2) {
            Verdict::allow(None, "fuzz: even length")
        } else {
            Verdict::deny(None, "fuzz: odd length")
        }
    }

    fn address(&mut self, name: &str) -> Option<Ipv4Addr> {
        (!name.len().is_multiple_of(3)).then_some(Ipv4Addr::new(198, 18, 0, 1))
    }
}
