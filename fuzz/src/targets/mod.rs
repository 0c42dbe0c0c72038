//! Each fuzz target's check of one input, as a plain function: libFuzzer
//! drives it through the binary of the same name (`fuzz_targets/`), and the
//! test suite replays the seeds and their mutations through it
//! (`crate::replay`), so a regression fails `cargo xtask test` without the
//! instrumented build.

pub mod config_disk;
pub mod dhcp;
pub mod dns;
pub mod gguf;
pub mod guest_frame;
pub mod http_stream;
pub mod sniff;
pub mod sse;
pub mod tool_calls;

/// One fuzz target: its name (binary, `fuzz/seeds/NAME/`) and its check.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const ALL: &[Target] = &[
    Target {
        name: "guest_frame",
        run: guest_frame::run,
    },
    Target {
        name: "dns",
        run: dns::run,
    },
    Target {
        name: "dhcp",
        run: dhcp::run,
    },
    Target {
        name: "sniff",
        run: sniff::run,
    },
    Target {
        name: "http_stream",
        run: http_stream::run,
    },
    Target {
        name: "gguf",
        run: gguf::run,
    },
    Target {
        name: "tool_calls",
        run: tool_calls::run,
    },
    Target {
        name: "sse",
        run: sse::run,
    },
    Target {
        name: "config_disk",
        run: config_disk::run,
    },
];
