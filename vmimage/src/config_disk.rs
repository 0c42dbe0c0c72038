//! The **config disk**: how the supervisor hands a guest its first-boot
//! configuration ([`GuestConfig`](crate::GuestConfig): the VM's inference
//! key, model, gateway port, shares) under every VMM. QEMU's `fw_cfg` does
//! not exist under Virtualization.framework, and a key on a host command
//! line (kernel `-append`) would show in `ps`; a small read-only virtio
//! block device exists under both, so both backends attach the same file:
//! QEMU as a second `if=virtio` raw drive with `readonly=on`, VZ as a second
//! `VZVirtioBlockDeviceConfiguration` on a read-only
//! `VZDiskImageStorageDeviceAttachment`. The guest finds it by its magic,
//! not by its position among the `vd*` disks.
//!
//! Format, version 1 (all of it ASCII up to the JSON):
//!
//! ```text
//! offset 0   "CLAWPEN-CONFIG v1\n"            magic and version (18 bytes)
//!            LEN "\n"                          the JSON's length in bytes, decimal,
//!                                              1..=7 digits (at most MAX_JSON_LEN)
//!            JSON                              LEN bytes of UTF-8 JSON
//!            0x00 ...                          zeros up to the next 4 KiB boundary
//! ```
//!
//! The whole file is a multiple of [`BLOCK`] bytes (VZ wants whole 512-byte
//! sectors; 4 KiB is every disk's page). A reader checks the magic, the
//! version, the length line, that the file holds the whole JSON and that the
//! padding is zeros, and refuses anything else: a config disk is written by
//! the supervisor, but a guest must not act on a half-written or foreign
//! one. Readers: [`decode`] (tests, tools), the OpenClaw image's
//! `render-config.mjs` ([`crate::openclaw::RENDER_CONFIG_JS`]) and the
//! guests' shell `config_json` (`guest::SHARE_FUNCTIONS`). A new version
//! changes the magic line's number; version 1 readers refuse it by name.

use serde::{Deserialize, Serialize};

/// The magic line's text before the version number.
pub const MAGIC: &str = "CLAWPEN-CONFIG v";
/// The format version this module writes and reads.
pub const VERSION: u32 = 1;
/// The whole first line of a version-1 config disk.
pub const HEADER: &str = "CLAWPEN-CONFIG v1\n";
/// The file's size is a multiple of this.
pub const BLOCK: usize = 4096;
/// The largest JSON a config disk carries (7 decimal digits); a guest
/// config is a few hundred bytes, so anything near this is a mistake.
pub const MAX_JSON_LEN: usize = 1 << 20;

/// Why bytes are not a config disk this version reads.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigDiskError {
    #[error("not a clawpen config disk: it does not start with {HEADER:?}")]
    BadMagic,
    #[error("config disk version {found:?} is not supported (this reader knows v{VERSION})")]
    UnsupportedVersion { found: String },
    #[error("config disk length line {line:?} is not a decimal byte count of 1 to 7 digits")]
    BadLength { line: String },
    #[error("config disk JSON of {len} bytes is over the limit of {MAX_JSON_LEN}")]
    TooLarge { len: usize },
    #[error("config disk truncated: its JSON ends at byte {need}, the file has {have}")]
    Truncated { need: usize, have: usize },
    #[error("config disk padding at byte {offset} is not zero")]
    BadPadding { offset: usize },
    #[error("config disk size {size} is not a multiple of {BLOCK} bytes")]
    BadSize { size: usize },
}

/// The file system a share reaches the guest with: what the VMM offers
/// (QEMU `-virtfs` is 9p, VZ `VZVirtioFileSystemDeviceConfiguration` is
/// virtio-fs), so the guest mounts it with the right type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareFs {
    #[serde(rename = "9p")]
    NineP,
    #[serde(rename = "virtiofs")]
    Virtiofs,
}

impl ShareFs {
    /// The `mount -t` type (and the JSON value).
    pub fn mount_type(self) -> &'static str {
        match self {
            Self::NineP => "9p",
            Self::Virtiofs => "virtiofs",
        }
    }
}

/// One share as the guest learns it from the config disk: its tag (a
/// `ShareTag`, `[a-z0-9][a-z0-9-]*`, mounted at `/mnt/TAG`) and how to
/// mount it. The field order is part of the contract: the guests' shell
/// finds `"tag":"TAG","fs":"FS"` in the compact JSON serde writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestShare {
    pub tag: String,
    pub fs: ShareFs,
}

/// The config disk holding `json`, padded to whole [`BLOCK`]s.
pub fn encode(json: &[u8]) -> Result<Vec<u8>, ConfigDiskError> {
    if json.len() > MAX_JSON_LEN {
        return Err(ConfigDiskError::TooLarge { len: json.len() });
    }
    let mut out = format!("{HEADER}{}\n", json.len()).into_bytes();
    out.extend_from_slice(json);
    let padded = out.len().div_ceil(BLOCK) * BLOCK;
    out.resize(padded, 0);
    Ok(out)
}

/// The JSON a config disk holds, every part of the format checked.
pub fn decode(disk: &[u8]) -> Result<&[u8], ConfigDiskError> {
    let first = line(disk, 0).ok_or(ConfigDiskError::BadMagic)?;
    let version = first
        .strip_prefix(MAGIC.as_bytes())
        .ok_or(ConfigDiskError::BadMagic)?;
    if version != VERSION.to_string().as_bytes() {
        return Err(ConfigDiskError::UnsupportedVersion {
            found: String::from_utf8_lossy(version).into_owned(),
        });
    }
    let start = HEADER.len();
    let bad_length = |text: &[u8]| ConfigDiskError::BadLength {
        line: String::from_utf8_lossy(&text[..text.len().min(16)]).into_owned(),
    };
    let text = line(disk, start).ok_or_else(|| bad_length(&disk[start..]))?;
    if text.is_empty() || text.len() > 7 || !text.iter().all(u8::is_ascii_digit) {
        return Err(bad_length(text));
    }
    let len: usize = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| bad_length(text))?;
    if len > MAX_JSON_LEN {
        return Err(ConfigDiskError::TooLarge { len });
    }
    let json_start = start + text.len() + 1;
    let json_end = json_start + len;
    if disk.len() < json_end {
        return Err(ConfigDiskError::Truncated {
            need: json_end,
            have: disk.len(),
        });
    }
    if let Some(i) = disk[json_end..].iter().position(|&b| b != 0) {
        return Err(ConfigDiskError::BadPadding {
            offset: json_end + i,
        });
    }
    if !disk.len().is_multiple_of(BLOCK) {
        return Err(ConfigDiskError::BadSize { size: disk.len() });
    }
    Ok(&disk[json_start..json_end])
}

/// The line starting at `from`, without its `\n`; `None` without one
/// within the first 64 bytes (the header's lines are short).
fn line(bytes: &[u8], from: usize) -> Option<&[u8]> {
    let rest = bytes.get(from..)?;
    let end = rest.iter().take(64).position(|&b| b == b'\n')?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_padded_to_whole_blocks() {
        let json = br#"{"vm":"demo"}"#;
        let disk = encode(json).unwrap();
        assert_eq!(disk.len(), BLOCK);
        assert!(disk.starts_with(b"CLAWPEN-CONFIG v1\n13\n{\"vm\":\"demo\"}\0"));
        assert_eq!(decode(&disk).unwrap(), json);

        // A JSON that fills more than one block.
        let big = vec![b' '; BLOCK];
        let disk = encode(&big).unwrap();
        assert_eq!(disk.len(), 2 * BLOCK);
        assert_eq!(decode(&disk).unwrap(), &big[..]);
        // Exactly one block: no extra block of padding.
        let exact = vec![b' '; BLOCK - HEADER.len() - 5];
        assert_eq!(encode(&exact).unwrap().len(), BLOCK);
    }

    #[test]
    fn bad_magic_and_other_versions_are_refused() {
        let mut disk = encode(b"{}").unwrap();
        disk[0] = b'X';
        assert_eq!(decode(&disk), Err(ConfigDiskError::BadMagic));
        assert_eq!(decode(&[0; BLOCK]), Err(ConfigDiskError::BadMagic));
        assert_eq!(decode(b""), Err(ConfigDiskError::BadMagic));

        let mut v2 = b"CLAWPEN-CONFIG v2\n2\n{}".to_vec();
        v2.resize(BLOCK, 0);
        assert_eq!(
            decode(&v2),
            Err(ConfigDiskError::UnsupportedVersion { found: "2".into() })
        );
    }

    #[test]
    fn bad_lengths_are_refused() {
        for line in ["", "x2", "-1", "12345678", "2 "] {
            let mut disk = format!("{HEADER}{line}\n{{}}").into_bytes();
            disk.resize(BLOCK, 0);
            assert!(
                matches!(decode(&disk), Err(ConfigDiskError::BadLength { .. })),
                "{line:?}: {:?}",
                decode(&disk)
            );
        }
        // No end of line at all.
        let mut disk = HEADER.as_bytes().to_vec();
        disk.resize(BLOCK, b'7');
        assert!(matches!(
            decode(&disk),
            Err(ConfigDiskError::BadLength { .. })
        ));
        let mut disk = format!("{HEADER}2000000\n").into_bytes();
        disk.resize(BLOCK, 0);
        assert_eq!(
            decode(&disk),
            Err(ConfigDiskError::TooLarge { len: 2_000_000 })
        );
        assert_eq!(
            encode(&vec![b' '; MAX_JSON_LEN + 1]),
            Err(ConfigDiskError::TooLarge {
                len: MAX_JSON_LEN + 1
            })
        );
    }

    #[test]
    fn truncated_padding_and_size_are_checked() {
        let disk = encode(br#"{"vm":"demo"}"#).unwrap();
        // Cut inside the JSON.
        assert_eq!(
            decode(&disk[..25]),
            Err(ConfigDiskError::Truncated { need: 34, have: 25 })
        );
        // Cut inside the padding: the JSON is whole but the file is not.
        assert_eq!(
            decode(&disk[..100]),
            Err(ConfigDiskError::BadSize { size: 100 })
        );
        // A length shorter than the JSON leaves JSON bytes in the padding.
        let mut short = disk.clone();
        short[18] = b'9';
        short[19] = b'\n';
        short.remove(20);
        short.push(0);
        assert!(matches!(
            decode(&short),
            Err(ConfigDiskError::BadPadding { .. })
        ));
    }

    #[test]
    fn shares_serialise_in_the_shape_the_guest_shell_greps() {
        let share = GuestShare {
            tag: "work".into(),
            fs: ShareFs::Virtiofs,
        };
        assert_eq!(
            serde_json::to_string(&share).unwrap(),
            r#"{"tag":"work","fs":"virtiofs"}"#
        );
        let nine = GuestShare {
            tag: "data-1".into(),
            fs: ShareFs::NineP,
        };
        assert_eq!(
            serde_json::to_string(&nine).unwrap(),
            r#"{"tag":"data-1","fs":"9p"}"#
        );
        assert_eq!(ShareFs::Virtiofs.mount_type(), "virtiofs");
    }
}
