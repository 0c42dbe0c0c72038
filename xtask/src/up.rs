//! `cargo xtask up [ARGS]`: install what the product needs, build it, and run
//! `clawpen up ARGS` on its embedded defaults.

use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed to `clawpen up`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    crate::deps::install(false)?;
    crate::console::run(&crate::console::Args::default())?;
    // Release: the local inference engine built without optimisations
    // decodes a 0.5B model at ~0.4 tokens/s instead of ~60 (measured with
    // `clawpen up --model` on a debug build), and the VMM side gains too.
    let status = crate::cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "clawpen-supervisor",
            "--bin",
            "clawpen",
            "--",
            "up",
        ])
        .args(&args.rest)
        .current_dir(crate::workspace_root())
        .status()
        .context("cargo run clawpen up")?;
    if !status.success() {
        bail!("clawpen up exited with {status}");
    }
    Ok(())
}
