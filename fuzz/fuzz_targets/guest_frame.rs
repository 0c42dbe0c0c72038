//! libFuzzer entry of [`clawpen_fuzz::targets::guest_frame`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::guest_frame::run(data));
