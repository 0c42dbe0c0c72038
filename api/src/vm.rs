//! VM names, specs and lifecycle states.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest VM name accepted: it becomes a directory name and part of socket paths,
/// and unix socket paths are limited to 108 bytes.
pub const MAX_NAME_LEN: usize = 32;

/// Why a string is not a valid [`VmName`] or [`SnapshotName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    #[error("{kind} name is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} name {name:?} must start with a lowercase letter or digit")]
    BadStart { kind: &'static str, name: String },
    #[error("{kind} name {name:?} contains {ch:?}; only a-z, 0-9 and '-' are allowed")]
    BadChar {
        kind: &'static str,
        name: String,
        ch: char,
    },
}

/// `[a-z0-9][a-z0-9-]{0,31}`: safe as a directory name, a socket path part and
/// a QEMU snapshot tag (no `/`, no `..`, no `,`).
fn check_name(kind: &'static str, raw: &str) -> Result<(), NameError> {
    let len = raw.chars().count();
    if len == 0 {
        return Err(NameError::Empty { kind });
    }
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, len });
    }
    let first = raw.chars().next().unwrap_or('-');
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadStart {
            kind,
            name: raw.to_string(),
        });
    }
    if let Some(ch) = raw
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar {
            kind,
            name: raw.to_string(),
            ch,
        });
    }
    Ok(())
}

macro_rules! checked_name {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            pub fn parse(raw: &str) -> Result<Self, NameError> {
                check_name($kind, raw)?;
                Ok(Self(raw.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> Self {
                value.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }
    };
}

checked_name!(
    /// A VM's name, checked on construction, so a value of this type is always
    /// safe to use as a directory name.
    VmName,
    "VM"
);

checked_name!(
    /// A snapshot's name (same rules as VM names).
    SnapshotName,
    "snapshot"
);

checked_name!(
    /// A shared folder's tag: the 9p/virtiofs mount tag, and the folder the
    /// test guest mounts it at (`/mnt/TAG`).
    ShareTag,
    "share tag"
);

/// A host folder shown to a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedFolder {
    pub tag: ShareTag,
    /// Canonical host path (symlinks and `..` resolved when it was added).
    pub host_path: String,
    /// Enforced by the VMM (QEMU `readonly=on`), not by a guest mount flag.
    pub read_only: bool,
}

/// Body of `POST /api/v1/vms/{name}/shares`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddShareRequest {
    pub host_path: String,
    pub tag: String,
    /// Writable by the guest; read-only unless set.
    #[serde(default)]
    pub rw: bool,
}

/// The snapshot every VM gets right after its first boot; reset returns to it.
pub const CLEAN_SNAPSHOT: &str = "clean";

/// What a VM is made of. Stored as the VM's `config.json` and in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: VmName,
    /// Name of the base image in the image store.
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Size of the VM's disk; `None` keeps the base image's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u32>,
}

/// The lifecycle of a VM: `Created → Starting → Running → Stopping →
/// Stopped`, plus `Resetting` and `Failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state")]
pub enum VmState {
    Created,
    Starting,
    Running,
    Stopping,
    Stopped,
    Resetting,
    Failed { reason: String },
}

impl VmState {
    /// Short label for tables and the console.
    pub fn label(&self) -> &'static str {
        match self {
            VmState::Created => "Created",
            VmState::Starting => "Starting",
            VmState::Running => "Running",
            VmState::Stopping => "Stopping",
            VmState::Stopped => "Stopped",
            VmState::Resetting => "Resetting",
            VmState::Failed { .. } => "Failed",
        }
    }

    /// True while a command is in progress and the VM cannot take another one.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Stopping | VmState::Resetting
        )
    }
}

impl fmt::Display for VmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmState::Failed { reason } => write!(f, "Failed: {reason}"),
            other => f.pad(other.label()),
        }
    }
}

/// A VM as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub spec: VmSpec,
    pub state: VmState,
    /// Process id of the VMM while one runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The accelerator the VMM runs with (`kvm`, `tcg`, `hvf`, `vz`), while running.
    #[serde(default)]
    pub accel: Option<String>,
}

/// Body of `POST /api/v1/vms/{name}/reset`. An empty body means defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// Force a cold reset (the snapshot's disk, full boot) even when a memory
    /// state exists.
    #[serde(default)]
    pub cold: bool,
}

/// Body of `POST /api/v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    #[serde(default)]
    pub disk_gib: Option<u32>,
}

/// Body of `POST /api/v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakeSnapshotRequest {
    pub name: String,
}

/// Body of `POST /api/v1/vms/{name}/snapshots/{snapshot}/restore` (may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Restore the disk only and boot, even when a memory state exists.
    #[serde(default)]
    pub cold: bool,
}

/// A named snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: SnapshotName,
    /// True when the snapshot holds the memory state too (restore without boot).
    pub has_memory: bool,
    pub created_unix: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        for bad in [
            "",
            "../x",
            "a/b",
            "A",
            "-x",
            ".",
            "x y",
            "a,b",
            &"a".repeat(300),
        ] {
            assert!(VmName::parse(bad).is_err(), "{bad:?} was accepted");
            assert!(SnapshotName::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for good in ["demo", "vm-1", "0x"] {
            assert_eq!(VmName::parse(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn state_serialises_with_a_tag() {
        let json = serde_json::to_string(&VmState::Failed {
            reason: "boom".into(),
        })
        .unwrap();
        assert_eq!(json, r#"{"state":"Failed","reason":"boom"}"#);
        let back: VmState = serde_json::from_str(r#"{"state":"Running"}"#).unwrap();
        assert_eq!(back, VmState::Running);
    }

    #[test]
    fn vm_name_deserialisation_is_checked() {
        let err = serde_json::from_str::<VmName>(r#""../etc""#).unwrap_err();
        assert!(err.to_string().contains("must start"), "{err}");
    }
}

/// A host port that reaches a guest port (`/api/v1/vms/{name}/forwards`):
/// the only way into a guest from the host, loopback only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardInfo {
    pub guest_port: u16,
    /// `127.0.0.1:PORT` on the supervisor's host.
    pub host_addr: String,
}

/// The guest port OpenClaw images run their gateway on; those VMs get a
/// forward to it, which the console labels "OpenClaw gateway". The image
/// recipe's `clawpen_vmimage::openclaw::DEFAULT_GATEWAY_PORT` must be the
/// same (the supervisor's tests check).
pub const OPENCLAW_GATEWAY_PORT: u16 = 18789;

/// Body of `POST /api/v1/vms/{name}/forwards`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    pub guest_port: u16,
}
