//! macOS only: a [`VzConfig`] turned into Virtualization.framework objects,
//! one object per field, deciding nothing (every decision is in `spec.rs`,
//! tested on Linux). Compile-checked in CI for `aarch64-apple-darwin`.

use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::Path;

use objc2::rc::Retained;
use objc2::AllocAnyThread;
use objc2_foundation::{NSArray, NSData, NSError, NSFileHandle, NSString, NSURL};
use objc2_virtualization::{
    VZBootLoader, VZConsoleDeviceConfiguration, VZDirectoryShare,
    VZDirectorySharingDeviceConfiguration, VZDiskImageStorageDeviceAttachment,
    VZEntropyDeviceConfiguration, VZFileHandleNetworkDeviceAttachment,
    VZFileHandleSerialPortAttachment, VZFileSerialPortAttachment, VZLinuxBootLoader, VZMACAddress,
    VZMacAuxiliaryStorage, VZMacHardwareModel, VZMacMachineIdentifier, VZMacOSBootLoader,
    VZMacPlatformConfiguration, VZNetworkDeviceAttachment, VZNetworkDeviceConfiguration,
    VZPlatformConfiguration, VZSerialPortAttachment, VZSerialPortConfiguration, VZSharedDirectory,
    VZSingleDirectoryShare, VZStorageDeviceAttachment, VZStorageDeviceConfiguration,
    VZVirtioBlockDeviceConfiguration, VZVirtioConsoleDeviceConfiguration,
    VZVirtioConsoleDeviceSerialPortConfiguration, VZVirtioConsolePortConfiguration,
    VZVirtioEntropyDeviceConfiguration, VZVirtioFileSystemDeviceConfiguration,
    VZVirtioNetworkDeviceConfiguration, VZVirtualMachineConfiguration,
};

use super::spec::{BootLoader, VzConfig};

#[derive(Debug, thiserror::Error)]
pub enum VzObjcError {
    #[error("Virtualization.framework refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("the agent port {name} has no socket")]
    NoAgentSocket { name: String },
    #[error("cannot duplicate the agent port's socket: {0}")]
    AgentSocket(std::io::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// An `NSError`'s text.
pub fn describe_error(error: &NSError) -> String {
    error.localizedDescription().to_string()
}

fn refused(what: impl std::fmt::Display) -> impl FnOnce(Retained<NSError>) -> VzObjcError {
    let what = what.to_string();
    move |e| VzObjcError::Refused {
        what,
        message: describe_error(&e),
    }
}

fn file_url(path: &Path) -> Retained<NSURL> {
    NSURL::fileURLWithPath(&NSString::from_str(&path.to_string_lossy()))
}

fn read_data(path: &Path) -> Result<Retained<NSData>, VzObjcError> {
    let bytes = std::fs::read(path).map_err(|source| VzObjcError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(NSData::with_bytes(&bytes))
}

/// Builds and validates the configuration. `network` is the VMM's end of the
/// gateway's datagram socketpair, `agent` the VMM's end of the agent port's
/// stream socketpair (needed when `config.agent` is set); the configuration
/// owns them from here on (`closeOnDealloc`).
pub fn build(
    config: &VzConfig,
    network: OwnedFd,
    agent: Option<OwnedFd>,
) -> Result<Retained<VZVirtualMachineConfiguration>, VzObjcError> {
    // SAFETY: every call below is a plain Objective-C message to an object
    // created here, with arguments of the types the framework declares;
    // configuration objects may be built on any thread (only a
    // VZVirtualMachine is bound to its queue).
    unsafe {
        let vm = VZVirtualMachineConfiguration::new();
        vm.setCPUCount(config.cpus as usize);
        vm.setMemorySize(config.memory_bytes);

        match &config.boot {
            BootLoader::Linux {
                kernel,
                initrd,
                cmdline,
            } => {
                let loader = VZLinuxBootLoader::initWithKernelURL(
                    VZLinuxBootLoader::alloc(),
                    &file_url(kernel),
                );
                loader.setInitialRamdiskURL(Some(&file_url(initrd)));
                loader.setCommandLine(&NSString::from_str(cmdline));
                let loader: &VZBootLoader = &loader;
                vm.setBootLoader(Some(loader));
            }
            BootLoader::MacOs {
                auxiliary_storage,
                hardware_model,
                machine_identifier,
            } => {
                let platform = VZMacPlatformConfiguration::new();
                let model_data = read_data(hardware_model)?;
                let id_data = read_data(machine_identifier)?;
                let model = VZMacHardwareModel::initWithDataRepresentation(
                    VZMacHardwareModel::alloc(),
                    &model_data,
                )
                .ok_or_else(|| VzObjcError::Refused {
                    what: format!("hardware model {}", hardware_model.display()),
                    message: "not a hardware model this Mac supports".into(),
                })?;
                let id = VZMacMachineIdentifier::initWithDataRepresentation(
                    VZMacMachineIdentifier::alloc(),
                    &id_data,
                )
                .ok_or_else(|| VzObjcError::Refused {
                    what: format!("machine identifier {}", machine_identifier.display()),
                    message: "unreadable".into(),
                })?;
                let aux = VZMacAuxiliaryStorage::initWithURL(
                    VZMacAuxiliaryStorage::alloc(),
                    &file_url(auxiliary_storage),
                );
                platform.setHardwareModel(&model);
                platform.setMachineIdentifier(&id);
                platform.setAuxiliaryStorage(Some(&aux));
                let platform: &VZPlatformConfiguration = &platform;
                vm.setPlatform(platform);
                let loader = VZMacOSBootLoader::new();
                let loader: &VZBootLoader = &loader;
                vm.setBootLoader(Some(loader));
            }
        }

        let mut disks: Vec<Retained<VZStorageDeviceConfiguration>> = Vec::new();
        for disk in &config.disks {
            let attachment = VZDiskImageStorageDeviceAttachment::initWithURL_readOnly_error(
                VZDiskImageStorageDeviceAttachment::alloc(),
                &file_url(&disk.path),
                disk.read_only,
            )
            .map_err(refused(format!("disk {}", disk.path.display())))?;
            let attachment: &VZStorageDeviceAttachment = &attachment;
            let block = VZVirtioBlockDeviceConfiguration::initWithAttachment(
                VZVirtioBlockDeviceConfiguration::alloc(),
                attachment,
            );
            disks.push(Retained::into_super(block));
        }
        vm.setStorageDevices(&NSArray::from_retained_slice(&disks));

        let handle = NSFileHandle::initWithFileDescriptor_closeOnDealloc(
            NSFileHandle::alloc(),
            network.into_raw_fd(),
            true,
        );
        let attachment = VZFileHandleNetworkDeviceAttachment::initWithFileHandle(
            VZFileHandleNetworkDeviceAttachment::alloc(),
            &handle,
        );
        // macOS 13+: the default (1500) would cut the guest's 65520 MTU.
        attachment.setMaximumTransmissionUnit(config.network.mtu as isize);
        let nic = VZVirtioNetworkDeviceConfiguration::new();
        let attachment: &VZNetworkDeviceAttachment = &attachment;
        nic.setAttachment(Some(attachment));
        let mac = VZMACAddress::initWithString(
            VZMACAddress::alloc(),
            &NSString::from_str(&config.network.mac),
        )
        .ok_or_else(|| VzObjcError::Refused {
            what: format!("MAC address {}", config.network.mac),
            message: "not a MAC address".into(),
        })?;
        nic.setMACAddress(&mac);
        let nic: Retained<VZNetworkDeviceConfiguration> = Retained::into_super(nic);
        vm.setNetworkDevices(&NSArray::from_retained_slice(&[nic]));

        let mut shares: Vec<Retained<VZDirectorySharingDeviceConfiguration>> = Vec::new();
        for share in &config.shares {
            let directory = VZSharedDirectory::initWithURL_readOnly(
                VZSharedDirectory::alloc(),
                &file_url(&share.host_path),
                share.read_only,
            );
            let single = VZSingleDirectoryShare::initWithDirectory(
                VZSingleDirectoryShare::alloc(),
                &directory,
            );
            let tag = NSString::from_str(&share.tag);
            VZVirtioFileSystemDeviceConfiguration::validateTag_error(&tag)
                .map_err(refused(format!("share tag {}", share.tag)))?;
            let device = VZVirtioFileSystemDeviceConfiguration::initWithTag(
                VZVirtioFileSystemDeviceConfiguration::alloc(),
                &tag,
            );
            let single: &VZDirectoryShare = &single;
            device.setShare(Some(single));
            shares.push(Retained::into_super(device));
        }
        vm.setDirectorySharingDevices(&NSArray::from_retained_slice(&shares));

        let log = VZFileSerialPortAttachment::initWithURL_append_error(
            VZFileSerialPortAttachment::alloc(),
            &file_url(&config.serial_log),
            false,
        )
        .map_err(refused(format!(
            "serial log {}",
            config.serial_log.display()
        )))?;
        let console = VZVirtioConsoleDeviceSerialPortConfiguration::new();
        let log: &VZSerialPortAttachment = &log;
        console.setAttachment(Some(log));
        let console: Retained<VZSerialPortConfiguration> = Retained::into_super(console);
        vm.setSerialPorts(&NSArray::from_retained_slice(&[console]));

        // The guest agent: a named port (macOS 13+) on a console device of
        // its own (the hvc0 console above is a serial port configuration,
        // which has no named ports). Not a console port, so the guest sees
        // a plain `/dev/vportNp0` with that name in sysfs, as under QEMU.
        if let Some(port_config) = &config.agent {
            let fd = agent.ok_or_else(|| VzObjcError::NoAgentSocket {
                name: port_config.name.clone(),
            })?;
            // Two handles, two descriptors: each closes its own.
            let write_fd = fd.try_clone().map_err(VzObjcError::AgentSocket)?;
            let reading = NSFileHandle::initWithFileDescriptor_closeOnDealloc(
                NSFileHandle::alloc(),
                fd.into_raw_fd(),
                true,
            );
            let writing = NSFileHandle::initWithFileDescriptor_closeOnDealloc(
                NSFileHandle::alloc(),
                write_fd.into_raw_fd(),
                true,
            );
            let attachment =
                VZFileHandleSerialPortAttachment::initWithFileHandleForReading_fileHandleForWriting(
                    VZFileHandleSerialPortAttachment::alloc(),
                    Some(&reading),
                    Some(&writing),
                );
            let port = VZVirtioConsolePortConfiguration::new();
            port.setName(Some(&NSString::from_str(&port_config.name)));
            port.setIsConsole(false);
            let attachment: &VZSerialPortAttachment = &attachment;
            port.setAttachment(Some(attachment));
            let device = VZVirtioConsoleDeviceConfiguration::new();
            device.ports().setObject_atIndexedSubscript(Some(&port), 0);
            let device: Retained<VZConsoleDeviceConfiguration> = Retained::into_super(device);
            vm.setConsoleDevices(&NSArray::from_retained_slice(&[device]));
        }

        if config.entropy {
            let entropy: Retained<VZEntropyDeviceConfiguration> =
                Retained::into_super(VZVirtioEntropyDeviceConfiguration::new());
            vm.setEntropyDevices(&NSArray::from_retained_slice(&[entropy]));
        }

        vm.validateWithError()
            .map_err(refused("the VM configuration"))?;
        Ok(vm)
    }
}
