//! Random identifiers in OpenAI's styles (`resp_…`, `msg_…`, `call_…`).

use rand::Rng;

/// `prefix` followed by 24 random hex digits (96 bits: unguessable, so a
/// stored response cannot be found by guessing its id).
pub fn new_id(prefix: &str) -> String {
    let bytes: [u8; 12] = rand::rng().random();
    format!("{prefix}{}", hex::encode(bytes))
}

/// Unix time in seconds.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
