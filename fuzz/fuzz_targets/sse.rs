//! libFuzzer entry of [`clawpen_fuzz::targets::sse`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::sse::run(data));
