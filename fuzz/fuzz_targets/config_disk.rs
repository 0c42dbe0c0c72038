//! libFuzzer entry of [`clawpen_fuzz::targets::config_disk`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::config_disk::run(data));
