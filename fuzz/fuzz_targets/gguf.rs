//! libFuzzer entry of [`clawpen_fuzz::targets::gguf`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::gguf::run(data));
