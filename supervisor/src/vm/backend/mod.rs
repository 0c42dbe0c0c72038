//! Hypervisor backends behind one trait.
//!
//! Only this module knows a hypervisor. The VM task drives a [`Hypervisor`]
//! and the [`Instance`] it returns; nothing in these traits is QEMU-specific,
//! so the macOS Virtualization.framework backend can implement them too
//! (its disks are APFS clones instead of qcow2 overlays, its instance lives in
//! process instead of in a child process).

mod process;
// macOS runs VZ; QEMU stays compiled there so one build checks both, and
// nothing on macOS constructs it.
#[cfg_attr(target_os = "macos", allow(dead_code))]
pub mod qemu;
mod qmp;
pub mod vz;

use async_trait::async_trait;
use clawpen_api::{SharedFolder, SnapshotName, VmSpec};
use clawpen_vmimage::Image;

use super::dir::VmDir;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Tool { command: String, stderr: String },
    #[error("the VMM exited during start-up ({status}); its log says: {log_tail}")]
    EarlyExit { status: String, log_tail: String },
    #[error("the VMM did not open its control socket within {secs} s; its log says: {log_tail}")]
    NoControlSocket { secs: u64, log_tail: String },
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    #[error(transparent)]
    Accel(#[from] qemu::accel::UnknownAccel),
    #[error("the VMM refused `{command}`: {message}")]
    Monitor { command: String, message: String },
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error("cannot signal VMM process {pid}: {source}")]
    Signal { pid: u32, source: nix::Error },
    #[error("Virtualization.framework: {0}")]
    Vz(String),
    #[error(transparent)]
    VzSpec(#[from] vz::spec::VzSpecError),
    #[error(transparent)]
    VzDisk(#[from] vz::disk::VzDiskError),
}

/// What [`for_host`] may need to build the host's backend; each backend
/// takes what it uses (VZ none of it, so macOS builds read no field).
#[cfg_attr(target_os = "macos", allow(dead_code))]
pub struct HostSetup<'a> {
    /// The jail every QEMU VMM is spawned in.
    pub jail: crate::jail::Jail,
    /// `up --accel`: QEMU's accelerator, forced; `None` lets
    /// [`qemu::kvm_probe::choose`] pick it.
    pub accel: Option<qemu::accel::Accel>,
    /// Where the KVM probe's answer is remembered.
    pub store: &'a crate::store::Store,
    /// The image the KVM probe boots.
    pub probe_image: &'a Image,
    /// Where the KVM probe's scratch VM lives.
    pub state_dir: &'a crate::paths::StateDir,
}

/// The host's hypervisor: Virtualization.framework on macOS (QEMU there
/// would need HVF and has no `/proc` to find its VMMs by), QEMU elsewhere,
/// with the accelerator forced or chosen by a probe boot.
pub async fn for_host(
    setup: HostSetup<'_>,
) -> Result<std::sync::Arc<dyn Hypervisor>, BackendError> {
    #[cfg(target_os = "macos")]
    {
        let _ = setup;
        Ok(std::sync::Arc::new(vz::VzBackend::new()))
    }
    #[cfg(not(target_os = "macos"))]
    {
        let accel = match setup.accel {
            Some(accel) => accel,
            None => {
                qemu::kvm_probe::choose(
                    &setup.jail,
                    setup.store,
                    setup.probe_image,
                    setup.state_dir,
                )
                .await?
            }
        };
        tracing::info!(accel = accel.qemu_name(), "accelerator");
        Ok(std::sync::Arc::new(qemu::QemuBackend::new(
            accel, setup.jail,
        )))
    }
}

/// Why the backend named `backend` ([`Hypervisor::name`]) cannot run
/// `image`, when it cannot: a macOS guest (`clawpen image create --macos`)
/// has no kernel to boot and runs only on Virtualization.framework. Checked
/// when a VM is created, so the error names the image instead of a VMM
/// failing at its first start.
pub fn unsupported_image(backend: &str, image: &Image) -> Option<String> {
    (image.manifest.is_macos() && backend != "vz").then(|| {
        format!(
            "image {:?} is a macOS guest: only the vz backend (a Mac on Apple silicon) runs it, this host uses {backend}",
            image.manifest.name
        )
    })
}

/// A hypervisor that can run VMs described by a [`VmSpec`] on an [`Image`].
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// Short name for logs (`qemu`, `vz`).
    fn name(&self) -> &'static str;

    /// The file system shares reach the guest by (QEMU `-virtfs`: 9p; VZ:
    /// virtio-fs), written into the guest's config disk so the guest
    /// mounts each share with the right type.
    fn guest_share_fs(&self) -> clawpen_vmimage::ShareFs {
        clawpen_vmimage::ShareFs::NineP
    }

    /// The size in bytes of the image's base disk as a guest sees it (a VM's
    /// disk may be larger, never smaller).
    async fn base_disk_size(&self, image: &Image) -> Result<u64, BackendError>;

    /// Throws away the VM's writable disk (and the snapshots stored with it)
    /// and makes a fresh one from the base image, `spec.disk_gib` large. Must
    /// not copy the base (overlay or clone), and must be atomic: a crash leaves
    /// either the old disk or the new one, never half of one.
    async fn fresh_disk(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
    ) -> Result<(), BackendError>;

    /// Boots the VM, or with `restore` resumes it from that snapshot's memory
    /// state (no boot), with `shares` attached (read-only ones enforced by
    /// the VMM). Returns once the VMM runs and is under control; after a
    /// plain boot the guest may still be booting.
    async fn start(
        &self,
        dir: &VmDir,
        spec: &VmSpec,
        image: &Image,
        restore: Option<&SnapshotName>,
        shares: &[SharedFolder],
    ) -> Result<Box<dyn Instance>, BackendError>;

    /// Snapshot of a stopped VM's disk (no memory state).
    async fn snapshot_disk(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError>;

    /// Returns a stopped VM's disk to a snapshot's disk state.
    async fn revert_disk(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError>;

    /// Deletes a snapshot of a stopped VM.
    async fn delete_snapshot(&self, dir: &VmDir, name: &SnapshotName) -> Result<(), BackendError>;

    /// The snapshots stored with the VM's disk, `(name, has_memory)`; readable
    /// while the VM runs. Used to make the store agree with the disk.
    async fn list_snapshots(&self, dir: &VmDir) -> Result<Vec<(String, bool)>, BackendError>;

    /// Takes control again of a VMM left running by a previous supervisor
    /// process (pid from the store). `None` when that process is gone or is not
    /// this VM's VMM.
    async fn adopt(&self, dir: &VmDir, pid: u32)
        -> Result<Option<Box<dyn Instance>>, BackendError>;

    /// Kills every VMM process of this VM except `keep` (left behind by a crash
    /// between spawning a VMM and recording it). Returns the pids it killed.
    async fn kill_strays(&self, dir: &VmDir, keep: Option<u32>) -> Vec<u32>;
}

/// How a VM ended by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// The guest powered off (VMM exit status 0), as opposed to a crash or kill.
    pub clean: bool,
    /// What happened, for the `Failed` reason and logs.
    pub detail: String,
}

/// One running VM.
#[async_trait]
pub trait Instance: Send {
    /// The VMM process, when the VM runs in one.
    fn pid(&self) -> Option<u32>;

    /// The accelerator in use (`kvm`, `tcg`, `hvf`, `vz`).
    fn accel(&self) -> &str;

    /// The VM's network link when the instance holds it itself (VZ: the
    /// gateway's end of a socketpair); `None` means QEMU's `net.sock`.
    fn network(&self) -> Option<crate::egress::LinkSource> {
        None
    }

    /// Resolves when the VM has stopped by itself (guest power-off, VMM crash).
    /// Cancel-safe: may be polled in `select!` repeatedly.
    async fn exited(&mut self) -> VmExit;

    /// Stops the VM now (the disk is disposable, so no guest shutdown) and
    /// waits until the VMM is gone.
    async fn stop(&mut self) -> Result<(), BackendError>;

    /// Saves disk and memory state under `name` (replacing one of that name);
    /// the VM keeps running afterwards.
    async fn save_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError>;

    /// Returns the running VM to the snapshot's disk and memory state: the
    /// guest continues from the moment the snapshot was taken, without a boot.
    async fn restore_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError>;

    /// Deletes a snapshot while the VM runs.
    async fn delete_snapshot(&mut self, name: &SnapshotName) -> Result<(), BackendError>;
}

/// A Linux image of `arch` with every file role, for the backends' unit
/// tests of what they make of an image (nothing is read from its folder).
/// Built from JSON so the tests do not list every manifest field.
#[cfg(test)]
pub(crate) fn test_image(arch: &str) -> clawpen_vmimage::Image {
    use clawpen_vmimage::manifest::{FileRole, ImageManifest, FORMAT};
    let files: Vec<_> = FileRole::ALL
        .iter()
        .map(|role| {
            serde_json::json!({
                "role": role, "file": role.file_name(), "size": 1, "sha256": "0".repeat(64)
            })
        })
        .collect();
    let manifest: ImageManifest = serde_json::from_value(serde_json::json!({
        "format": FORMAT, "name": "tiny", "arch": arch, "recipe": 1,
        "kernel_cmdline": "console=ttyS0 panic=-1 quiet",
        "kernel_release": "6.1.0-1", "packages": [], "files": files, "created_unix": 0,
    }))
    .unwrap();
    clawpen_vmimage::Image {
        manifest,
        dir: std::path::PathBuf::from("/images/tiny"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macos_guests_need_the_vz_backend() {
        let h = "ab".repeat(32);
        let manifest = |roles: &[clawpen_vmimage::FileRole]| clawpen_vmimage::ImageManifest {
            format: clawpen_vmimage::manifest::FORMAT,
            name: "img".into(),
            arch: "aarch64".into(),
            recipe: 1,
            kernel_cmdline: "console=ttyAMA0".into(),
            kernel_release: String::new(),
            kernel_modules: Vec::new(),
            packages: Vec::new(),
            software: Vec::new(),
            files: roles
                .iter()
                .map(|&role| clawpen_vmimage::ImageFile {
                    role,
                    file: role.file_name().into(),
                    size: 1,
                    sha256: h.clone(),
                })
                .collect(),
            created_unix: 0,
        };
        let image = |roles| Image {
            manifest: manifest(roles),
            dir: "/images/img".into(),
        };
        let mac = image(&clawpen_vmimage::FileRole::MACOS);
        let linux = image(&clawpen_vmimage::FileRole::ALL);
        let why = unsupported_image("qemu", &mac).unwrap();
        assert!(why.contains("macOS guest") && why.contains("qemu"), "{why}");
        assert_eq!(unsupported_image("vz", &mac), None);
        assert_eq!(unsupported_image("qemu", &linux), None);
        assert_eq!(unsupported_image("vz", &linux), None);
    }
}
