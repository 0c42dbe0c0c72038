//! libFuzzer entry of [`clawpen_fuzz::targets::dhcp`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::dhcp::run(data));
