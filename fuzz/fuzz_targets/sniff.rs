//! libFuzzer entry of [`clawpen_fuzz::targets::sniff`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::sniff::run(data));
