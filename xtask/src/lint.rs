//! `cargo xtask lint`: formatting, clippy with warnings as errors, and a
//! compile check + clippy of the macOS target (the VZ backend cannot run
//! here, so this is what keeps it building).

use anyhow::{bail, Context, Result};

/// The Mac target the VZ backend and the `metal` inference feature are
/// checked for. `cargo check` needs no Mac SDK for it: nothing links, and
/// no crate compiles C for macOS (SQLite is the system's there, see the
/// root Cargo.toml).
const MAC_TARGET: &str = "aarch64-apple-darwin";

fn cargo_ok(args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = crate::cargo()
        .args(args)
        .current_dir(crate::workspace_root())
        .status()
        .with_context(|| format!("cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Installs the Mac target's standard library (idempotent, no-op when present).
fn ensure_target(target: &str) -> Result<()> {
    let status = std::process::Command::new("rustup")
        .args(["target", "add", target])
        .status()
        .context("rustup target add")?;
    if !status.success() {
        bail!("rustup target add {target} failed ({status})");
    }
    Ok(())
}

pub fn run() -> Result<()> {
    cargo_ok(&["fmt", "--all", "--check"])?;
    cargo_ok(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    ensure_target(MAC_TARGET)?;
    cargo_ok(&["check", "--workspace", "--target", MAC_TARGET])?;
    cargo_ok(&[
        "check",
        "-p",
        "clawpen-inference",
        "--features",
        "metal",
        "--target",
        MAC_TARGET,
    ])?;
    cargo_ok(&[
        "clippy",
        "--workspace",
        "--target",
        MAC_TARGET,
        "--",
        "-D",
        "warnings",
    ])
}
