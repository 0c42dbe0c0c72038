//! The VZ configuration as plain data: what a VM is made of, decided by a
//! pure function from the VM spec, the image and the VM folder, so every
//! decision (boot loader, console, agent port, disk, NIC, shares, limits) is unit-tested
//! on any host. `objc.rs` (macOS only) turns a [`VzConfig`] into
//! Virtualization.framework objects one to one and decides nothing.

use std::path::{Path, PathBuf};

use clawpen_api::{SharedFolder, VmSpec};
use clawpen_vmimage::arch::AGENT_PORT_NAME;
use clawpen_vmimage::Image;

use super::disk::VzPaths;
use crate::egress::net::{GUEST_MAC, MTU};

/// Smallest guest memory Virtualization.framework accepts
/// (`VZVirtualMachineConfiguration.minimumAllowedMemorySize`, 128 MiB on
/// every macOS so far); checked here so the error names the VM spec.
pub const MIN_MEMORY_MIB: u32 = 128;
/// A virtio-fs tag is at most 36 bytes (the virtio spec's `tag[36]`);
/// `VZVirtioFileSystemDeviceConfiguration.validateTag` refuses longer ones.
pub const MAX_TAG_LEN: usize = 36;
/// The guest's serial console on VZ: a virtio console port, `hvc0` in Linux.
pub const VZ_CONSOLE: &str = "hvc0";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VzSpecError {
    #[error("VM {vm}: image {image} is built for {image_arch}; Virtualization.framework on this Mac runs {host_arch} guests only")]
    Arch {
        vm: String,
        image: String,
        image_arch: String,
        host_arch: String,
    },
    #[error("VM {vm}: {memory_mib} MiB of memory is below Virtualization.framework's minimum of {MIN_MEMORY_MIB} MiB")]
    Memory { vm: String, memory_mib: u32 },
    #[error("VM {vm}: at least one CPU is needed")]
    NoCpu { vm: String },
    #[error("VM {vm}: share tag {tag:?} is longer than {MAX_TAG_LEN} bytes (virtio-fs limit)")]
    Tag { vm: String, tag: String },
}

/// Everything a VZ virtual machine is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VzConfig {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub boot: BootLoader,
    /// Virtio block devices, in order (`/dev/vda` first): the VM's disk,
    /// then for Linux guests the read-only config disk.
    pub disks: Vec<DiskConfig>,
    /// The only NIC: a file-handle attachment on the gateway's socketpair.
    pub network: NetworkConfig,
    /// virtio-fs devices, one per share (the guest learns their tags from
    /// the config disk, as `virtiofs` shares).
    pub shares: Vec<ShareConfig>,
    /// Where the guest's console output is written (virtio console port).
    pub serial_log: PathBuf,
    /// The guest agent's named virtio console port (Linux guests; a macOS
    /// guest runs no agent).
    pub agent: Option<AgentPortConfig>,
    /// A virtio entropy device (the guest's RNG seeds from it).
    pub entropy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootLoader {
    /// `VZLinuxBootLoader`: the image manifest's kernel, initrd and command
    /// line (with the console moved to the virtio console).
    Linux {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    /// `VZMacOSBootLoader` on a `VZMacPlatformConfiguration` made from the
    /// files `clawpen image create --macos` saved from the installer.
    MacOs {
        auxiliary_storage: PathBuf,
        hardware_model: PathBuf,
        machine_identifier: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// A raw disk image (VZ reads no qcow2): the VM's APFS clone.
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// The same MAC QEMU gives the guest, so the gateway sees one guest.
    pub mac: String,
    /// The link MTU (`VZFileHandleNetworkDeviceAttachment.maximumTransmissionUnit`),
    /// the one the gateway's DHCP offers.
    pub mtu: u16,
}

/// A `VZVirtioConsolePortConfiguration` named like QEMU's
/// `virtserialport,name=...`, so the same guest image finds its agent port
/// under either VMM. Its host end is a socketpair that
/// [`super::agent_bridge::AgentBridge`] serves on `socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPortConfig {
    /// [`AGENT_PORT_NAME`], what the guest looks for in
    /// `/sys/class/virtio-ports/*/name`.
    pub name: String,
    /// The unix socket the supervisor's agent client connects to: the VM
    /// folder's `agent.sock`, as for QEMU.
    pub socket: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    pub tag: String,
    /// Canonical, already checked by `share::ShareScope` when it was added.
    pub host_path: PathBuf,
    /// Enforced by VZ (`VZSharedDirectory(readOnly:)`), not by the guest.
    pub read_only: bool,
}

/// The architecture name image manifests use for this host's guests.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "aarch64",
        other => other,
    }
}

/// Manifests spell arm64 both ways; compare canonical names.
fn canonical_arch(arch: &str) -> &str {
    match arch {
        "arm64" => "aarch64",
        "amd64" => "x86_64",
        other => other,
    }
}

/// The kernel command line for VZ: the image's, with every `console=` moved
/// to the virtio console (images are built for QEMU's `ttyS0`), and the
/// console added when the image named none.
pub fn vz_cmdline(image_cmdline: &str) -> String {
    let mut had_console = false;
    let mut words: Vec<String> = image_cmdline
        .split_whitespace()
        .map(|word| match word.strip_prefix("console=") {
            Some(_) if had_console => String::new(),
            Some(_) => {
                had_console = true;
                format!("console={VZ_CONSOLE}")
            }
            None => word.to_string(),
        })
        .filter(|w| !w.is_empty())
        .collect();
    if !had_console {
        words.push(format!("console={VZ_CONSOLE}"));
    }
    words.join(" ")
}

/// Describes a Linux guest booted from `image` (kernel + initrd from its
/// manifest) with the VM's cloned disk and the given (already checked)
/// shares, for a host that runs `host_arch` guests.
pub fn describe_linux(
    spec: &VmSpec,
    image: &Image,
    paths: &VzPaths,
    shares: &[SharedFolder],
    host_arch: &str,
) -> Result<VzConfig, VzSpecError> {
    let vm = spec.name.to_string();
    if canonical_arch(&image.manifest.arch) != canonical_arch(host_arch) {
        return Err(VzSpecError::Arch {
            vm,
            image: image.manifest.name.clone(),
            image_arch: image.manifest.arch.clone(),
            host_arch: host_arch.to_string(),
        });
    }
    let boot = BootLoader::Linux {
        kernel: image.kernel(),
        initrd: image.initrd(),
        cmdline: vz_cmdline(image.kernel_cmdline()),
    };
    let mut config = describe(spec, boot, paths, shares)?;
    // The guest's first-boot configuration (key, model, share tags): the
    // config disk the supervisor writes before every cold boot, read-only
    // as under QEMU. A macOS guest reads none, so it gets none.
    config.disks.push(DiskConfig {
        path: paths.guest_config_disk(),
        read_only: true,
    });
    config.agent = Some(AgentPortConfig {
        name: AGENT_PORT_NAME.to_string(),
        socket: paths.agent_socket(),
    });
    Ok(config)
}

/// Files a macOS guest image holds besides its disk, written when it was
/// installed from an IPSW: the platform's hardware model, the machine
/// identifier (`dataRepresentation` bytes) and the auxiliary (NVRAM) storage.
/// The names are the image manifest's ([`clawpen_vmimage::FileRole::MACOS`]).
pub const MACOS_HARDWARE_MODEL: &str = clawpen_vmimage::FileRole::MacHardwareModel.file_name();
/// See [`MACOS_HARDWARE_MODEL`].
pub const MACOS_MACHINE_ID: &str = clawpen_vmimage::FileRole::MacMachineId.file_name();
/// See [`MACOS_HARDWARE_MODEL`].
pub const MACOS_AUX_STORAGE: &str = clawpen_vmimage::FileRole::MacAux.file_name();

/// Whether an image folder holds a macOS guest (its hardware model file).
pub fn is_macos_image(image_dir: &Path) -> bool {
    image_dir.join(MACOS_HARDWARE_MODEL).is_file()
}

/// Describes a macOS guest from an image folder installed from an IPSW.
pub fn describe_macos(
    spec: &VmSpec,
    image_dir: &Path,
    paths: &VzPaths,
    shares: &[SharedFolder],
) -> Result<VzConfig, VzSpecError> {
    let boot = BootLoader::MacOs {
        auxiliary_storage: image_dir.join(MACOS_AUX_STORAGE),
        hardware_model: image_dir.join(MACOS_HARDWARE_MODEL),
        machine_identifier: image_dir.join(MACOS_MACHINE_ID),
    };
    describe(spec, boot, paths, shares)
}

/// The parts every guest shares, whatever boots it.
pub fn describe(
    spec: &VmSpec,
    boot: BootLoader,
    paths: &VzPaths,
    shares: &[SharedFolder],
) -> Result<VzConfig, VzSpecError> {
    let vm = spec.name.to_string();
    if spec.cpus == 0 {
        return Err(VzSpecError::NoCpu { vm });
    }
    if spec.memory_mib < MIN_MEMORY_MIB {
        return Err(VzSpecError::Memory {
            vm,
            memory_mib: spec.memory_mib,
        });
    }
    let shares = shares
        .iter()
        .map(|share| {
            let tag = share.tag.to_string();
            if tag.len() > MAX_TAG_LEN {
                return Err(VzSpecError::Tag {
                    vm: vm.clone(),
                    tag,
                });
            }
            Ok(ShareConfig {
                tag,
                host_path: PathBuf::from(&share.host_path),
                read_only: share.read_only,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VzConfig {
        cpus: spec.cpus,
        memory_bytes: u64::from(spec.memory_mib) * 1024 * 1024,
        boot,
        disks: vec![DiskConfig {
            path: paths.disk(),
            read_only: false,
        }],
        network: NetworkConfig {
            mac: GUEST_MAC.to_string(),
            mtu: MTU,
        },
        shares,
        serial_log: paths.serial_log(),
        agent: None,
        entropy: true,
    })
}

#[cfg(test)]
mod tests {
    use clawpen_api::{ShareTag, VmName};

    use super::*;

    fn image(arch: &str) -> Image {
        crate::vm::backend::test_image(arch)
    }

    fn spec(cpus: u32, memory_mib: u32) -> VmSpec {
        VmSpec {
            name: VmName::parse("demo").unwrap(),
            image: "tiny".into(),
            cpus,
            memory_mib,
            disk_gib: None,
        }
    }

    fn share(tag: &str, path: &str, read_only: bool) -> SharedFolder {
        SharedFolder {
            tag: ShareTag::parse(tag).unwrap(),
            host_path: path.into(),
            read_only,
        }
    }

    #[test]
    fn a_linux_guest_boots_the_manifest_kernel_on_the_virtio_console() {
        let paths = VzPaths::new(Path::new("/vms/demo"));
        let shares = [share("work", "/Users/me/work", true)];
        let config =
            describe_linux(&spec(2, 512), &image("aarch64"), &paths, &shares, "aarch64").unwrap();
        assert_eq!(
            config.boot,
            BootLoader::Linux {
                kernel: "/images/tiny/vmlinuz".into(),
                initrd: "/images/tiny/initrd.cpio".into(),
                cmdline: "console=hvc0 panic=-1 quiet".into(),
            }
        );
        assert_eq!(config.cpus, 2);
        assert_eq!(config.memory_bytes, 512 << 20);
        assert_eq!(
            config.disks,
            vec![
                DiskConfig {
                    path: "/vms/demo/disk.img".into(),
                    read_only: false
                },
                // The config disk second (the root stays vda), read-only,
                // the file QEMU VMs get too.
                DiskConfig {
                    path: "/vms/demo/guest-config.img".into(),
                    read_only: true
                },
            ]
        );
        assert_eq!(
            config.disks[1].path,
            crate::vm::dir::VmDir::new("/vms/demo".into()).guest_config_disk()
        );
        assert_eq!(config.network.mac, "52:54:00:c1:a5:02");
        assert_eq!(config.network.mtu, 65520);
        assert_eq!(
            config.shares,
            vec![ShareConfig {
                tag: "work".into(),
                host_path: "/Users/me/work".into(),
                read_only: true
            }]
        );
        assert_eq!(config.serial_log, Path::new("/vms/demo/serial.log"));
        assert!(config.entropy);
    }

    #[test]
    fn a_linux_guest_gets_the_agent_port_the_images_look_for() {
        let paths = VzPaths::new(Path::new("/vms/demo"));
        let config =
            describe_linux(&spec(1, 256), &image("aarch64"), &paths, &[], "aarch64").unwrap();
        let agent = config.agent.expect("an agent port");
        assert_eq!(agent.name, "org.clawpen.agent");
        assert_eq!(agent.name, clawpen_vmimage::arch::AGENT_PORT_NAME);
        // Where QEMU VMs have it, so `vm::agent::call` works unchanged.
        assert_eq!(
            agent.socket,
            crate::vm::dir::VmDir::new("/vms/demo".into()).agent_socket()
        );
        assert_eq!(agent.socket, Path::new("/vms/demo/agent.sock"));

        // A macOS guest runs no agent: no port, no socket.
        let mac = describe_macos(&spec(4, 8192), Path::new("/images/macos"), &paths, &[]).unwrap();
        assert_eq!(mac.agent, None);
    }

    #[test]
    fn arm64_is_aarch64_and_an_x86_image_is_refused_on_apple_silicon() {
        let paths = VzPaths::new(Path::new("/vms/demo"));
        assert!(describe_linux(&spec(1, 256), &image("arm64"), &paths, &[], "aarch64").is_ok());
        let err =
            describe_linux(&spec(1, 256), &image("x86_64"), &paths, &[], "aarch64").unwrap_err();
        assert!(matches!(err, VzSpecError::Arch { .. }));
        assert!(err.to_string().contains("x86_64"), "{err}");
    }

    #[test]
    fn limits_are_checked_with_the_vm_named() {
        let paths = VzPaths::new(Path::new("/vms/demo"));
        let img = image("aarch64");
        let err = describe_linux(&spec(1, 64), &img, &paths, &[], "aarch64").unwrap_err();
        assert_eq!(
            err,
            VzSpecError::Memory {
                vm: "demo".into(),
                memory_mib: 64
            }
        );
        let err = describe_linux(&spec(0, 256), &img, &paths, &[], "aarch64").unwrap_err();
        assert_eq!(err, VzSpecError::NoCpu { vm: "demo".into() });
    }

    #[test]
    fn the_console_moves_to_hvc0_once() {
        assert_eq!(vz_cmdline("console=ttyS0 quiet"), "console=hvc0 quiet");
        assert_eq!(
            vz_cmdline("console=tty0 console=ttyS0,115200 ro"),
            "console=hvc0 ro"
        );
        assert_eq!(vz_cmdline("quiet"), "quiet console=hvc0");
    }

    #[test]
    fn a_macos_guest_boots_from_its_platform_files() {
        let paths = VzPaths::new(Path::new("/vms/mac"));
        let config =
            describe_macos(&spec(4, 8192), Path::new("/images/macos"), &paths, &[]).unwrap();
        assert_eq!(
            config.boot,
            BootLoader::MacOs {
                auxiliary_storage: "/images/macos/aux.img".into(),
                hardware_model: "/images/macos/hardware-model.bin".into(),
                machine_identifier: "/images/macos/machine-id.bin".into(),
            }
        );
        assert_eq!(config.disks[0].path, Path::new("/vms/mac/disk.img"));
        // No config disk for a macOS guest: it would read none.
        assert_eq!(config.disks.len(), 1);

        let dir = tempfile::tempdir().unwrap();
        assert!(!is_macos_image(dir.path()));
        std::fs::write(dir.path().join(MACOS_HARDWARE_MODEL), b"model").unwrap();
        assert!(is_macos_image(dir.path()));
    }
}
