//! `clawpen image build NAME [--arch ARCH]` and `clawpen image ls`: the image
//! store in the state directory (`images/`), worked on directly rather than
//! through a running supervisor. Builds take the store's per-image lock, so
//! a build here and one by `clawpen up` never collide, and a supervisor picks
//! a freshly built image up the next time it creates a VM disk.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use clawpen_vmimage::{openclaw, Arch, Image, ImageStore, TEST_GUEST};

use super::progress::BuildProgress;
use super::CliError;
use crate::paths::StateDir;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build an image (or find it cached): `openclaw` (the OpenClaw guest:
    /// Debian, Node.js, OpenClaw; needs root and network) or `test-guest`.
    /// `--arch aarch64` on an x86_64 host stores them as
    /// `openclaw-aarch64` / `test-guest-aarch64` (the OpenClaw one finishes
    /// in a builder VM under qemu-system-aarch64).
    Build {
        name: String,
        /// Guest architecture: x86_64 or aarch64 (default: this host's).
        #[arg(long)]
        arch: Option<String>,
        /// Image store folder (default: the state directory's `images/`).
        #[arg(long)]
        images: Option<PathBuf>,
    },
    /// Install a macOS guest image from an IPSW restore image (macOS on
    /// Apple silicon only): `clawpen image create --macos FILE.ipsw`.
    Create(super::image_macos::CreateArgs),
    /// List the images in the store.
    Ls {
        /// Image store folder (default: the state directory's `images/`).
        #[arg(long)]
        images: Option<PathBuf>,
    },
}

pub async fn run(home: Option<PathBuf>, command: ImageCommand) -> Result<(), CliError> {
    match command {
        ImageCommand::Build { name, arch, images } => {
            let arch = match arch.as_deref() {
                None => Arch::host().ok_or_else(|| {
                    CliError::BadInput(format!(
                        "no guest architecture for this host ({}); pass --arch",
                        std::env::consts::ARCH
                    ))
                })?,
                Some(a) => Arch::parse(a).ok_or_else(|| {
                    CliError::BadInput(format!("unknown --arch {a:?}: use x86_64 or aarch64"))
                })?,
            };
            let kind = match name.as_str() {
                "openclaw" => Kind::OpenClaw,
                TEST_GUEST => Kind::TestGuest,
                other => {
                    return Err(CliError::BadInput(format!(
                        "unknown image {other:?}: known images are openclaw and {TEST_GUEST}"
                    )))
                }
            };
            let store = open_store(home, images)?;
            let started = std::time::Instant::now();
            let image = tokio::task::spawn_blocking(move || {
                let bar = BuildProgress::new(&name);
                let result = match kind {
                    Kind::OpenClaw => store.ensure_openclaw(arch, &|p| bar.report(&p)),
                    Kind::TestGuest => store.ensure_test_guest_for(arch, &|p| bar.report(&p)),
                };
                bar.finish();
                result
            })
            .await
            .context("image build task")?
            .context("image build")?;
            println!(
                "{} ({}, recipe {}) in {} after {:.1} s",
                image.manifest.name,
                image.manifest.arch,
                image.manifest.recipe,
                image.dir.display(),
                started.elapsed().as_secs_f64()
            );
            print_details(&image);
            Ok(())
        }
        ImageCommand::Create(args) => super::image_macos::create(home, args).await,
        ImageCommand::Ls { images } => {
            let store = open_store(home, images)?;
            let list = store.list().context("listing images")?;
            println!(
                "{:<18} {:<8} {:>6} {:>9}  SOFTWARE",
                "NAME", "ARCH", "RECIPE", "DISK MiB"
            );
            for (name, image) in list {
                match image {
                    Ok(image) => {
                        let m = &image.manifest;
                        let disk = m
                            .file(clawpen_vmimage::FileRole::Disk)
                            .or(m.file(clawpen_vmimage::FileRole::MacDisk))
                            .map_or(0, |f| f.size >> 20);
                        let software: Vec<String> = m
                            .software
                            .iter()
                            .filter(|s| s.name != "debian")
                            .map(|s| format!("{} {}", s.name, s.version))
                            .collect();
                        println!(
                            "{:<18} {:<8} {:>6} {:>9}  {}",
                            name,
                            m.arch,
                            m.recipe,
                            disk,
                            software.join(", ")
                        );
                    }
                    Err(e) => println!("{name:<18} damaged: {e}"),
                }
            }
            Ok(())
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    OpenClaw,
    TestGuest,
}

pub(super) fn open_store(
    home: Option<PathBuf>,
    images: Option<PathBuf>,
) -> Result<ImageStore, CliError> {
    let dir = match images {
        Some(dir) => dir,
        None => StateDir::resolve(home).context("state directory")?.images(),
    };
    Ok(ImageStore::open(&dir).context("image store")?)
}

/// What a user needs to boot the image by hand, and what is in it.
fn print_details(image: &Image) {
    let m = &image.manifest;
    println!("  kernel   {}", image.kernel().display());
    println!("  initrd   {}", image.initrd().display());
    println!("  cmdline  {}", m.kernel_cmdline);
    if let Some(disk) = m.file(clawpen_vmimage::FileRole::Disk) {
        println!(
            "  disk     {} (sha256 {})",
            image.disk().display(),
            disk.sha256
        );
    }
    for s in &m.software {
        println!("  {:<8} {}", s.name, s.version);
    }
    for p in &m.packages {
        println!("  deb      {} {}", p.name, p.version);
    }
    if openclaw::is_openclaw_image(&m.name) {
        println!(
            "  config   a read-only config disk ({}, found by its magic); gateway health GET :{}{}",
            clawpen_vmimage::config_disk::HEADER.trim_end(),
            openclaw::DEFAULT_GATEWAY_PORT,
            openclaw::HEALTH_PATH
        );
    }
}
