//! Choosing QEMU's accelerator: KVM when it can really boot a guest, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough: on nested hosts a stock kernel can hang
//! early under KVM. So the first time, clawpen boots the test guest under KVM
//! with a time limit and remembers the answer per host kernel.

use std::time::Duration;

use super::accel::{Accel, UnknownAccel};
use super::QemuBackend;

/// Overrides the choice: `kvm` or `tcg`.
pub const ACCEL_ENV: &str = "CLAWPEN_ACCEL";

/// How long the KVM probe boot may take before KVM is judged unusable.
pub const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// True when `/dev/kvm` can be opened read-write by this process.
pub fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// The key under which a probe result is remembered: the host kernel release.
pub fn probe_cache_key() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("accel.kvm_boots.{}", release.trim())
}

/// Picks the accelerator: `$CLAWPEN_ACCEL` if set; TCG if `/dev/kvm` cannot be
/// opened; otherwise the remembered probe result for this host kernel, or a new
/// bounded probe boot of `image` under KVM.
pub async fn choose(
    jail: &crate::jail::Jail,
    store: &crate::store::Store,
    image: &clawpen_vmimage::Image,
    state_dir: &crate::paths::StateDir,
) -> Result<Accel, UnknownAccel> {
    if let Ok(forced) = std::env::var(ACCEL_ENV) {
        return forced.parse();
    }
    if !kvm_device_usable() {
        return Ok(Accel::Tcg);
    }
    let key = probe_cache_key();
    if let Ok(Some(known)) = store.setting(&key) {
        return Ok(if known == "yes" {
            Accel::Kvm
        } else {
            Accel::Tcg
        });
    }
    tracing::info!(
        limit_s = PROBE_LIMIT.as_secs(),
        "probing whether KVM can boot a guest"
    );
    let boots = probe_kvm(jail, image, &state_dir.root().join("kvm-probe")).await;
    if let Err(e) = store.set_setting(&key, if boots { "yes" } else { "no" }) {
        tracing::warn!(error = %e, "cannot remember the KVM probe result");
    }
    Ok(if boots { Accel::Kvm } else { Accel::Tcg })
}

/// Boots `image` under KVM in a scratch VM directory and waits (bounded) for
/// its ready marker. Any failure means "KVM does not work here".
async fn probe_kvm(
    jail: &crate::jail::Jail,
    image: &clawpen_vmimage::Image,
    scratch: &std::path::Path,
) -> bool {
    use crate::vm::backend::Hypervisor;
    use crate::vm::dir::VmDir;

    let Some(marker) = image.ready_marker() else {
        return false;
    };
    let dir = VmDir::new(scratch.to_owned());
    let spec = clawpen_api::VmSpec {
        name: clawpen_api::VmName::parse("kvm-probe").expect("valid name"),
        image: image.manifest.name.clone(),
        cpus: 1,
        memory_mib: 256,
        disk_gib: None,
    };
    let backend = QemuBackend::new(Accel::Kvm, jail.clone());
    let booted = async {
        dir.create(&spec).ok()?;
        backend.fresh_disk(&dir, &spec, image).await.ok()?;
        let mut instance = backend.start(&dir, &spec, image, None, &[]).await.ok()?;
        let ok = crate::vm::serial::wait_for_marker(&dir.serial_log(), marker, PROBE_LIMIT)
            .await
            .is_ok();
        let _ = instance.stop().await;
        Some(ok)
    }
    .await
    .unwrap_or(false);
    backend.kill_strays(&dir, None).await;
    let _ = std::fs::remove_dir_all(scratch);
    tracing::info!(kvm_boots = booted, "KVM probe finished");
    booted
}
