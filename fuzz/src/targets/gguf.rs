//! A GGUF file from anywhere (half downloaded, damaged, hostile): loading it
//! ends in a model or an error, never a panic (the loader's `catch_unwind`
//! is a last line of defence, not a plan: libFuzzer's panic hook aborts on
//! any panic, caught or not) and never memory the input's size does not
//! justify (`-rss_limit_mb`, set by `cargo xtask fuzz`).

use std::io::Cursor;
use std::path::Path;

use candle_core::Device;
use clawpen_inference::engine::local::gguf::{self, LoadError};

/// One input (the binary `gguf` is this function under libFuzzer).
pub fn run(data: &[u8]) {
    let loaded = gguf::read(Path::new("fuzz.gguf"), Cursor::new(data), &Device::Cpu);
    if let Err(e @ LoadError::Malformed { .. }) = loaded {
        panic!("the loader panicked: {e}");
    }
}
