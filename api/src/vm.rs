//! VM names, specs and lifecycle states.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest VM name accepted: it becomes a directory name and part of socket paths,
/// and unix socket paths are limited to 108 bytes.
pub const MAX_NAME_LEN: usize = 32;

/// Why a string is not a valid [`VmName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("VM name is empty")]
    Empty,
    #[error("VM name is {len} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong { len: usize },
    #[error("VM name {name:?} must start with a lowercase letter or digit")]
    BadStart { name: String },
    #[error("VM name {name:?} contains {ch:?}; only a-z, 0-9 and '-' are allowed")]
    BadChar { name: String, ch: char },
}

/// A VM's name: `[a-z0-9][a-z0-9-]{0,31}`. Checked on construction, so a value of
/// this type is always safe to use as a directory name (no `/`, no `..`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let len = raw.chars().count();
        if len == 0 {
            return Err(NameError::Empty);
        }
        if len > MAX_NAME_LEN {
            return Err(NameError::TooLong { len });
        }
        let first = raw.chars().next().unwrap_or('-');
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(NameError::BadStart {
                name: raw.to_string(),
            });
        }
        if let Some(ch) = raw
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::BadChar {
                name: raw.to_string(),
                ch,
            });
        }
        Ok(Self(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for VmName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<VmName> for String {
    fn from(value: VmName) -> Self {
        value.0
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// What a VM is made of. Stored as the VM's `config.json` and in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub name: VmName,
    /// Name of the base image in the image store.
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// The lifecycle of a VM (DESIGN.md): `Created → Starting → Running → Stopping →
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
    /// Force a cold reset (fresh disk from the base image, full boot).
    #[serde(default)]
    pub cold: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        for bad in ["", "../x", "a/b", "A", "-x", ".", "x y", &"a".repeat(300)] {
            assert!(VmName::parse(bad).is_err(), "{bad:?} was accepted");
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
