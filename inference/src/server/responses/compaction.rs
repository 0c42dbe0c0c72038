//! The compaction item's `encrypted_content`: what `POST
//! /v1/responses/compact` hands the client, and what a later request's
//! `compaction` input item is read back from.
//!
//! Open Responses leaves the content opaque to clients. clawpen's is the
//! summary the model wrote, as `base64url(JSON {"v", "summary",
//! "sha256"})`: self-made, so every engine behind clawpen can read it (an
//! upstream's own compaction would be readable only by that upstream).
//! The digest catches corruption and content clawpen did not make (another
//! provider's, a truncated copy), which is refused with a 400. It is not a
//! signature, and need not be one: a summary grants nothing the client
//! could not send as a plain message, and a keyed digest would make every
//! compacted window unreadable after a restart.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The version written; the only one read.
const VERSION: u32 = 1;

/// How a compaction's summary opens in the prompt: it stands where the
/// conversation it replaces stood, so the model is told what it is.
pub const SUMMARY_PREFIX: &str =
    "Summary of the earlier conversation (compacted; continue from it):\n\n";

/// Why an `encrypted_content` cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompactionError {
    #[error("it is not base64url text, so it was not made by this server's compaction")]
    Encoding,
    #[error("its decoded form is not a compaction this server made")]
    Shape,
    #[error("it is version {0} of the format; this server reads version {VERSION}")]
    Version(u32),
    #[error("its summary does not match its digest: the content is corrupt")]
    Digest,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    v: u32,
    summary: String,
    sha256: String,
}

fn digest(summary: &str) -> String {
    hex::encode(Sha256::digest(summary.as_bytes()))
}

/// The `encrypted_content` carrying `summary`.
pub fn seal(summary: &str) -> String {
    let sealed = Sealed {
        v: VERSION,
        summary: summary.to_owned(),
        sha256: digest(summary),
    };
    // A struct of a number and two strings always serializes.
    let json = serde_json::to_vec(&sealed).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// The summary `content` carries, if clawpen made it and it is intact.
pub fn open(content: &str) -> Result<String, CompactionError> {
    let json = URL_SAFE_NO_PAD
        .decode(content.trim())
        .map_err(|_| CompactionError::Encoding)?;
    let sealed: Sealed = serde_json::from_slice(&json).map_err(|_| CompactionError::Shape)?;
    if sealed.v != VERSION {
        return Err(CompactionError::Version(sealed.v));
    }
    if digest(&sealed.summary) != sealed.sha256 {
        return Err(CompactionError::Digest);
    }
    Ok(sealed.summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_summary_opens_and_damage_is_named() {
        let content = seal("The user asked about Paris; it is sunny.");
        assert_eq!(
            open(&content).unwrap(),
            "The user asked about Paris; it is sunny."
        );

        // Another provider's opaque content, and plain garbage.
        assert_eq!(open("gAAAAABpM0Yj-...="), Err(CompactionError::Encoding));
        assert_eq!(
            open(&URL_SAFE_NO_PAD.encode(b"{\"summary\": \"x\"}")),
            Err(CompactionError::Shape)
        );
        // A summary edited without its digest.
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(&content).unwrap()).unwrap();
        let edited = URL_SAFE_NO_PAD.encode(json.replace("sunny", "rainy"));
        assert_eq!(open(&edited), Err(CompactionError::Digest));
        // A later format.
        let v2 = URL_SAFE_NO_PAD.encode(json.replace("\"v\":1", "\"v\":2"));
        assert_eq!(open(&v2), Err(CompactionError::Version(2)));
        // One byte cut off the end.
        assert!(open(&content[..content.len() - 1]).is_err());
    }
}
