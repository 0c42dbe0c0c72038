//! QEMU's accelerator: KVM or TCG, as `-accel` and `-cpu` name them.
//! Which one a host gets is [`super::kvm_probe`]'s choice.

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown accelerator {0:?}: use kvm or tcg")]
pub struct UnknownAccel(String);

impl FromStr for Accel {
    type Err = UnknownAccel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(UnknownAccel(other.to_string())),
        }
    }
}

impl Accel {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// `host` passes the real CPU through under KVM; `max` is TCG's richest model.
    pub fn qemu_cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}
