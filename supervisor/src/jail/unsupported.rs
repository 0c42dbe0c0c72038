//! The jail on hosts other than Linux: seccomp, namespaces and the rest are
//! Linux facilities. The macOS backend runs VMs in process through
//! Virtualization.framework, whose own sandbox applies; QEMU on such a host
//! runs unjailed, and clawpen says so at start-up.

use std::time::Duration;

/// Same shape as the Linux jail's error, so callers compile unchanged.
#[allow(dead_code)]
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jailed process {pid} did not start its VMM within {waited:?}")]
    NoVmm { pid: u32, waited: Duration },
}

#[derive(Debug, Clone)]
pub struct Jail;

impl Jail {
    pub fn detect() -> Result<Self, JailError> {
        tracing::warn!("the VMM jail is Linux-only: VMMs run without it on this host");
        Ok(Self)
    }

    /// No jail (`CLAWPEN_JAIL=off`): the same as [`Self::detect`] here, so
    /// code and tests that ask for none compile on every host.
    #[allow(dead_code)]
    pub fn off() -> Self {
        Self
    }

    pub fn apply(&self, _command: &mut std::process::Command) {}

    pub async fn vmm_pid(&self, pid: u32) -> Result<u32, JailError> {
        Ok(pid)
    }
}
