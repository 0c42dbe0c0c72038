//! The macOS backend: Virtualization.framework through `objc2-virtualization`.
//!
//! Split so that everything that decides something runs and is tested on
//! Linux, and only the thin layer that talks to the framework is macOS-only:
//!
//! - `spec` (portable) — a pure function from the VM spec, image and shares
//!   to [`spec::VzConfig`], a plain description (CPUs, memory, boot loader,
//!   disks, NIC, shares, console, agent port).
//! - `agent_bridge` (portable) — serves the agent port's socketpair on the
//!   VM folder's `agent.sock`, as QEMU serves its agent chardev.
//! - `disk` (portable) — the VM folder's VZ files and APFS `clonefile`
//!   disks: fresh disk = clone of the raw base, snapshot = clone of the disk,
//!   reset = clone again; only the [`disk::Cloner`] needs APFS.
//! - `objc` (macOS) — `VzConfig` → `VZVirtualMachineConfiguration`.
//! - `machine` (macOS) — one `VZVirtualMachine` on its serial dispatch queue,
//!   completion handlers turned into futures.
//! - `backend` (macOS) — `VzBackend: Hypervisor`, `VzInstance: Instance`.
//! - `macos_image` (portable) — `clawpen image create --macos IPSW`: the
//!   request's checks, the image folder and manifest, the installer VM's
//!   configuration, installer progress → progress bar.
//! - `macos_install` (macOS) — the same command's Objective-C calls:
//!   `VZMacOSRestoreImage`, the platform files, `VZMacOSInstaller`.
//!
//! The macOS-only parts are compile-checked in CI (`cargo xtask lint` checks
//! and lints the workspace for `aarch64-apple-darwin`); no Mac runs them here.

// The portable halves are only called by the macOS-only ones (and tests).
#![cfg_attr(not(target_os = "macos"), allow(dead_code))]

pub mod agent_bridge;
#[cfg(target_os = "macos")]
mod backend;
pub mod disk;
#[cfg(target_os = "macos")]
mod machine;
pub mod macos_image;
#[cfg(target_os = "macos")]
pub mod macos_install;
#[cfg(target_os = "macos")]
mod objc;
pub mod spec;

#[cfg(target_os = "macos")]
pub use backend::VzBackend;
