//! `cargo xtask <command>`: workspace automation that needs nothing but cargo.
//!
//! One module per subcommand; add a variant to [`Command`] and a module next
//! to `console.rs` for a new one.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

mod console;
mod deps;
mod fuzz;
mod lint;
mod test;
mod up;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "clawpen workspace tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the console's browser bundle (wasm + JS) into target/site/pkg.
    Console(console::Args),
    /// Install what the product needs, build it and run `clawpen up` (args follow).
    Up(up::Args),
    /// Install what the tests need and run every test (args go to nextest).
    Test(test::Args),
    /// rustfmt check and clippy with warnings as errors.
    Lint,
    /// Build the fuzz targets instrumented and run each for a while.
    Fuzz(fuzz::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Console(args) => console::run(&args),
        Command::Up(args) => up::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Lint => lint::run(),
        Command::Fuzz(args) => fuzz::run(&args),
    }
}

/// The workspace root (the folder above `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        None => workspace_root().join("target"),
    }
}

/// Runs `cargo ARGS EXTRA` in the workspace root, echoing the command;
/// an unsuccessful exit is an error naming it.
pub fn cargo_ok(args: &[&str], extra: &[String]) -> anyhow::Result<()> {
    run_ok(
        cargo().args(args).args(extra),
        &format!("cargo {}", args.join(" ")),
    )
}

/// Runs `command` in the workspace root, echoing `what` first; failing to
/// start it or an unsuccessful exit is an error naming `what`.
pub fn run_ok(command: &mut std::process::Command, what: &str) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let started = std::time::Instant::now();
    let status = command
        .current_dir(workspace_root())
        .status()
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    // Each step's time, so a slow CI run tells where its minutes went.
    eprintln!("xtask: {what}: {:.0} s", started.elapsed().as_secs_f64());
    if !status.success() {
        anyhow::bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The cargo that runs us (`$CARGO`), so a `+toolchain` choice carries over.
pub fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
