//! libFuzzer entry of [`clawpen_fuzz::targets::http_stream`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clawpen_fuzz::targets::http_stream::run(data));
