//! A config disk's bytes (the VM's settings, read back from a disk image):
//! decoding never panics, and what decodes round-trips through `encode`.

use clawpen_vmimage::config_disk::{decode, encode};

/// One input (the binary `config_disk` is this function under libFuzzer).
pub fn run(disk: &[u8]) {
    if let Ok(json) = decode(disk) {
        let again = encode(json).expect("what decoded fits");
        assert_eq!(decode(&again).expect("re-encoded disk decodes"), json);
    }
}
