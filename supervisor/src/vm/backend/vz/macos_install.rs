//! macOS only: `clawpen image create --macos IPSW`, the Objective-C calls.
//! Every decision (checks, folder, manifest, installer VM, progress) is in
//! `macos_image.rs`, tested on Linux; this file loads the restore image,
//! writes the platform files Virtualization.framework makes, and runs
//! `VZMacOSInstaller`. Compile-checked in CI for `aarch64-apple-darwin`;
//! never run here (no Mac).

use std::path::Path;

use block2::RcBlock;
use clawpen_vmimage::{FileRole, Image, Progress};
use objc2::rc::Retained;
use objc2::AllocAnyThread;
use objc2_foundation::{NSData, NSError, NSString, NSURL};
use objc2_virtualization::{
    VZMacAuxiliaryStorage, VZMacAuxiliaryStorageInitializationOptions, VZMacHardwareModel,
    VZMacMachineIdentifier, VZMacOSRestoreImage,
};
use tokio::sync::oneshot;

use super::machine::Machine;
use super::macos_image::{
    install_resources, macos_version, InstallProgress, MacImageError, MacImageRequest, Staging,
};
use super::objc::{self, describe_error, VzObjcError};
use crate::egress::datagram_pair;

#[derive(Debug, thiserror::Error)]
pub enum MacInstallError {
    #[error(transparent)]
    Image(#[from] MacImageError),
    #[error("cannot load the restore image {path}: {message}")]
    Load { path: String, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Objc(#[from] VzObjcError),
    #[error("the macOS installer failed: {0}")]
    Install(String),
    #[error("cannot create the installer's network socketpair: {0}")]
    Socket(std::io::Error),
}

/// What the installer needs from the restore image, read inside the load
/// handler (the image object itself is not `Send`).
struct Restore {
    hardware_model: Vec<u8>,
    min_cpus: usize,
    min_memory: u64,
    version: String,
}

fn file_url(path: &Path) -> Retained<NSURL> {
    NSURL::fileURLWithPath(&NSString::from_str(&path.to_string_lossy()))
}

/// `VZMacOSRestoreImage.loadFileURL` and `mostFeaturefulSupportedConfiguration`.
async fn load(ipsw: &Path) -> Result<Restore, MacInstallError> {
    let (tx, rx) = oneshot::channel::<Result<Restore, String>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let handler = RcBlock::new(
        move |image: *mut VZMacOSRestoreImage, error: *mut NSError| {
            // SAFETY: the framework passes a valid image or a valid error (the
            // other nil), alive for the duration of the handler, which may run
            // on any thread; the restore image's getters may be called there.
            let result = unsafe {
                match (image.as_ref(), error.as_ref()) {
                    (_, Some(error)) => Err(describe_error(error)),
                    (None, None) => Err("no restore image and no error".to_string()),
                    (Some(image), None) => match image.mostFeaturefulSupportedConfiguration() {
                        None => Err("no hardware model in this restore image runs on this Mac \
                         (is it a newer macOS than the host's?)"
                            .to_string()),
                        Some(req) => {
                            let model = req.hardwareModel();
                            if model.isSupported() {
                                let v = image.operatingSystemVersion();
                                Ok(Restore {
                                    hardware_model: model.dataRepresentation().to_vec(),
                                    min_cpus: req.minimumSupportedCPUCount(),
                                    min_memory: req.minimumSupportedMemorySize(),
                                    version: macos_version(
                                        v.majorVersion,
                                        v.minorVersion,
                                        v.patchVersion,
                                        &image.buildVersion().to_string(),
                                    ),
                                })
                            } else {
                                Err("the restore image's hardware model is not supported on this Mac"
                                .to_string())
                            }
                        }
                    },
                }
            };
            if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(result);
            }
        },
    );
    // SAFETY: `ipsw` is a local file URL (checked by `MacImageRequest`);
    // the handler has the block type the method declares.
    unsafe { VZMacOSRestoreImage::loadFileURL_completionHandler(&file_url(ipsw), &handler) };
    let load_error = |message: String| MacInstallError::Load {
        path: ipsw.display().to_string(),
        message,
    };
    match rx.await {
        Ok(Ok(restore)) => Ok(restore),
        Ok(Err(message)) if message.contains("this Mac") => {
            Err(MacInstallError::Unsupported(message))
        }
        Ok(Err(message)) => Err(load_error(message)),
        Err(_) => Err(load_error("the loader ended without an answer".into())),
    }
}

/// The platform files: hardware model, a new machine identifier, and the
/// auxiliary storage created for that model.
fn write_platform(staging: &Staging, model_bytes: &[u8]) -> Result<(), MacInstallError> {
    let write = |role: FileRole, bytes: &[u8]| {
        let path = staging.file(role);
        std::fs::write(&path, bytes).map_err(|source| MacImageError::Io {
            action: "write",
            path,
            source,
        })
    };
    write(FileRole::MacHardwareModel, model_bytes)?;
    // SAFETY: plain constructors and getters on objects made here;
    // configuration objects may be used on any thread.
    unsafe {
        let model = VZMacHardwareModel::initWithDataRepresentation(
            VZMacHardwareModel::alloc(),
            &NSData::with_bytes(model_bytes),
        )
        .ok_or_else(|| {
            MacInstallError::Unsupported(
                "the restore image's hardware model does not read back".into(),
            )
        })?;
        let id = VZMacMachineIdentifier::new();
        write(FileRole::MacMachineId, &id.dataRepresentation().to_vec())?;
        VZMacAuxiliaryStorage::initCreatingStorageAtURL_hardwareModel_options_error(
            VZMacAuxiliaryStorage::alloc(),
            &file_url(&staging.file(FileRole::MacAux)),
            &model,
            VZMacAuxiliaryStorageInitializationOptions::AllowOverwrite,
        )
        .map_err(|e| VzObjcError::Refused {
            what: "creating the auxiliary storage".into(),
            message: describe_error(&e),
        })?;
    }
    Ok(())
}

/// Installs macOS from `request.ipsw` into a new image of `store_root`.
pub async fn install(
    request: &MacImageRequest,
    store_root: &Path,
    progress: &dyn Fn(Progress),
) -> Result<Image, MacInstallError> {
    let step = |name: &str| {
        progress(Progress {
            step: name.into(),
            done: 0,
            total: None,
        })
    };
    let staging = Staging::create(store_root, &request.name)?;
    step("load restore image");
    let restore = load(&request.ipsw).await?;
    step("create platform files");
    write_platform(&staging, &restore.hardware_model)?;
    step("create disk");
    staging.create_disk(request.disk_bytes)?;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (cpus, memory) = install_resources(restore.min_cpus, restore.min_memory, host_cpus);
    let config = staging.installer_config(cpus, memory);
    // The installer needs no network; the gateway's end is held, unread,
    // until the install ends, so the NIC has a live peer.
    let (_gateway, vmm) = datagram_pair().map_err(MacInstallError::Socket)?;
    let machine = {
        let built = objc::build(&config, vmm.into(), None)?;
        Machine::new(&built, &format!("clawpen.vz.install.{}", request.name))
    };
    let mut bar = InstallProgress::default();
    machine
        .install_macos(request.ipsw.clone(), |fraction| {
            progress(bar.report(fraction))
        })
        .await
        .map_err(MacInstallError::Install)?;
    drop(machine);
    Ok(staging.finish(&restore.version, progress)?)
}
