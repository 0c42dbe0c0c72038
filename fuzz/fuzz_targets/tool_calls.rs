//! libFuzzer entry of [`clawpen_fuzz::targets::tool_calls`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::tool_calls::run(data));
