//! `cargo xtask console`: builds `clawpen-console` for the browser and runs
//! wasm-bindgen (as a library, so no CLI tool has to be installed) into
//! `target/site/pkg`, where the supervisor serves it from.

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{cargo, target_dir, workspace_root};

const WASM_TARGET: &str = "wasm32-unknown-unknown";
/// The name Leptos' hydration script loads: `pkg/clawpen_console.js` and
/// `pkg/clawpen_console_bg.wasm`.
const OUT_NAME: &str = "clawpen_console";

/// The Cargo profile of the bundle users get: see the workspace's
/// `[profile.wasm-release]`.
const PROFILE: &str = "wasm-release";

#[derive(clap::Args, Default)]
pub struct Args {
    /// Build an unoptimised bundle instead (quicker to build, about six
    /// times the size; for working on the console).
    #[arg(long)]
    pub dev: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_wasm_target()?;

    let profile = if args.dev { "debug" } else { PROFILE };
    println!("xtask console: building clawpen-console for {WASM_TARGET} ({profile})");
    let mut build = cargo();
    build.current_dir(workspace_root()).args([
        "build",
        "-p",
        "clawpen-console",
        "--lib",
        "--target",
        WASM_TARGET,
        "--no-default-features",
        "--features",
        "hydrate",
    ]);
    if !args.dev {
        build.args(["--profile", PROFILE]);
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the console for {WASM_TARGET} failed ({status})");
    }

    let input = target_dir()
        .join(WASM_TARGET)
        .join(profile)
        .join(format!("{}.wasm", OUT_NAME));
    let out_dir = target_dir().join("site").join("pkg");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    println!(
        "xtask console: wasm-bindgen {} -> {}",
        input.display(),
        out_dir.display()
    );
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&input)
        .web(true)?
        .out_name(OUT_NAME)
        .typescript(false)
        .debug(args.dev)
        // Function names are most of an optimised bundle (1.6 of 2.7 MB):
        // kept for `--dev`, where a browser's stack traces need them.
        .remove_name_section(!args.dev)
        .remove_producers_section(!args.dev)
        .generate(&out_dir)
        .with_context(|| format!("wasm-bindgen on {}", input.display()))?;

    for file in [format!("{OUT_NAME}.js"), format!("{OUT_NAME}_bg.wasm")] {
        let path = out_dir.join(&file);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("wasm-bindgen did not write {}", path.display()))?
            .len();
        println!("xtask console:   {file} ({} KiB)", len / 1024);
    }
    println!(
        "xtask console: done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Makes sure the wasm32 standard library is installed (via rustup when it is
/// there; a toolchain without rustup has to bring it itself).
fn ensure_wasm_target() -> anyhow::Result<()> {
    let listed = match Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => bail!(
            "rustup target list --installed failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(_) => {
            println!("xtask console: rustup not found; assuming {WASM_TARGET} is installed");
            return Ok(());
        }
    };
    if listed.lines().any(|line| line.trim() == WASM_TARGET) {
        return Ok(());
    }
    println!("xtask console: installing the {WASM_TARGET} target (rustup target add)");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .status()
        .context("running rustup target add")?;
    if !status.success() {
        bail!("rustup target add {WASM_TARGET} failed ({status})");
    }
    Ok(())
}
