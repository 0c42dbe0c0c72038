//! The fuzz targets' checks ([`targets`]) and what they share. The
//! binaries in `fuzz_targets/` hand each of them to libFuzzer.

#[cfg(test)]
mod replay;
pub mod targets;

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

/// An input's first byte as a read size of 1 to 32 bytes, and the rest:
/// how the targets that check "the same however the bytes are split" cut
/// their input.
pub fn read_size_and_rest(data: &[u8]) -> Option<(usize, &[u8])> {
    let (&size, rest) = data.split_first()?;
    Some((1 + usize::from(size % 32), rest))
}
