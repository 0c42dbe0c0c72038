//! `clawpen image create --macos IPSW [--name NAME] [--disk-gib N]`: a macOS
//! guest image for the VZ backend, installed from a restore image with
//! Apple's installer (macOS on Apple silicon only). The arguments are
//! checked on every host, so a bad path or size is reported the same way
//! everywhere; elsewhere the command then says what it needs.

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::vm::backend::vz::macos_image::{MacImageRequest, DEFAULT_DISK_GIB};

/// Only macOS guests are installed this way (Linux guests are built with
/// `clawpen image build`).
#[derive(Args)]
pub struct CreateArgs {
    /// The macOS restore image (`.ipsw`, e.g. from Apple's download pages
    /// or `ipsw.me`); it must be a macOS this Mac can run.
    #[arg(long, value_name = "IPSW")]
    macos: PathBuf,
    /// The image's name in the store (VMs name it as their image).
    #[arg(long, default_value = "macos")]
    name: String,
    /// The guest's disk size in GiB (a sparse file: only what the guest
    /// writes takes space).
    #[arg(long, default_value_t = DEFAULT_DISK_GIB)]
    disk_gib: u32,
    /// Image store folder (default: the state directory's `images/`).
    #[arg(long)]
    images: Option<PathBuf>,
}

/// Why this host cannot install macOS guests.
pub const NEEDS_APPLE_SILICON: &str = "image create --macos needs macOS on Apple silicon: \
     Virtualization.framework installs and runs macOS guests only there";

pub async fn create(home: Option<PathBuf>, args: CreateArgs) -> Result<(), CliError> {
    let request = MacImageRequest::new(&args.macos, &args.name, args.disk_gib)
        .map_err(|e| CliError::BadInput(e.to_string()))?;
    if !(cfg!(target_os = "macos") && cfg!(target_arch = "aarch64")) {
        return Err(CliError::BadInput(NEEDS_APPLE_SILICON.into()));
    }
    install(home, args.images, request).await
}

#[cfg(target_os = "macos")]
async fn install(
    home: Option<PathBuf>,
    images: Option<PathBuf>,
    request: MacImageRequest,
) -> Result<(), CliError> {
    use anyhow::Context;

    use super::progress::BuildProgress;
    use crate::vm::backend::vz::macos_install;

    let store = super::image::open_store(home, images)?;
    let started = std::time::Instant::now();
    let bar = BuildProgress::new(&request.name);
    let result = macos_install::install(&request, store.root(), &|p| bar.report(&p)).await;
    bar.finish();
    let image = result.context("installing macOS")?;
    println!(
        "{} ({}) in {} after {:.0} s",
        image.manifest.name,
        image
            .manifest
            .software
            .first()
            .map_or("macOS", |s| s.version.as_str()),
        image.dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(not(target_os = "macos"))]
async fn install(
    _home: Option<PathBuf>,
    _images: Option<PathBuf>,
    _request: MacImageRequest,
) -> Result<(), CliError> {
    Err(CliError::BadInput(NEEDS_APPLE_SILICON.into()))
}
