//! Guest images for clawpen.
//!
//! An image is a folder in the image store holding a kernel, an initramfs, a
//! read-only qcow2 base disk and a `manifest.json` that describes them (see
//! [`ImageManifest`]). VMs never write to the base disk: the supervisor puts a
//! qcow2 overlay on top of it, which is what makes a reset cheap.
//!
//! The store builds the tiny **test guest** ([`ImageStore::ensure_test_guest`],
//! [`ImageStore::ensure_test_guest_for`] for aarch64): a Debian 12 kernel
//! plus a busybox initramfs that mounts the disk and offers a shell on the
//! serial console. It boots in seconds under TCG, which is what tests and CI
//! need.
//!
//! And the **OpenClaw guest** ([`ImageStore::ensure_openclaw`], see
//! [`openclaw`]): a Debian minbase root filesystem with Node.js and the
//! `openclaw` npm package at pinned versions, whose init starts the OpenClaw
//! gateway and reports ready only once it answers its health endpoint.
//!
//! The library never prints: long work reports [`Progress`] through a callback
//! and diagnostics go through `tracing`.

pub mod arch;
pub mod builder_vm;
mod command;
pub mod config_disk;
pub mod debian;
pub mod disk;
mod guest;
pub mod initramfs;
pub mod kmod;
pub mod manifest;
pub mod openclaw;
mod progress;
mod store;
pub mod test_guest;

pub use arch::Arch;
pub use command::CommandError;
pub use config_disk::{ConfigDiskError, GuestShare, ShareFs};
pub use manifest::{FileRole, ImageFile, ImageManifest, ManifestError, Software, SourcePackage};
pub use openclaw::{GuestConfig, InferenceConfig, OpenClawError};
pub use progress::Progress;
pub use store::{sha256_file, Image, ImageError, ImageStore, Listed};

/// Name of the tiny test guest image in the store.
pub const TEST_GUEST: &str = "test-guest";

/// Line the test guest prints on its serial console once the disk is mounted
/// at `/mnt` and the shell is about to start.
pub const READY_MARKER: &str = "CLAWPEN_GUEST_READY";

/// Line prefix the test guest prints instead of [`READY_MARKER`] when it could
/// not get ready (for example, no `/dev/vda`); the reason follows on the same
/// line. Lets a waiting caller fail at once instead of timing out.
pub const FAILED_MARKER: &str = "CLAWPEN_GUEST_FAILED";
