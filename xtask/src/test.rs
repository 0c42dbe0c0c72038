//! `cargo xtask test [ARGS]`: everything the tests need (host packages, the
//! real inference clients, the real test models, the console's wasm bundle,
//! the `clawpen` binary in debug and release builds),
//! then every test of the workspace with cargo-nextest (ARGS go to nextest),
//! then, on a whole run, each fuzz target briefly (`crate::fuzz`).

use anyhow::Result;

use crate::cargo_ok;

#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed to `cargo nextest run`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    crate::deps::install(true)?;
    crate::deps::install_test_clients()?;
    crate::deps::install_test_models()?;
    crate::console::run(&crate::console::Args::default())?;
    cargo_ok(
        &["build", "-p", "clawpen-supervisor", "--bin", "clawpen"],
        &[],
    )?;
    // The real-model tests run what a user runs: the release binary (a
    // debug build decodes a real model at under 1 token/s).
    cargo_ok(
        &[
            "build",
            "--release",
            "-p",
            "clawpen-supervisor",
            "--bin",
            "clawpen",
        ],
        &[],
    )?;
    let has_nextest = crate::cargo()
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_nextest {
        cargo_ok(&["install", "cargo-nextest", "--locked"], &[])?;
    }
    cargo_ok(
        &["nextest", "run", "--workspace", "--no-fail-fast"],
        &args.rest,
    )?;
    // A whole run (no filter for nextest) also gives every fuzz target a
    // short run from its seeds and the corpus kept in target/fuzz.
    if args.rest.is_empty() {
        crate::fuzz::run(&crate::fuzz::Args {
            seconds: SMOKE_FUZZ_SECONDS,
            targets: Vec::new(),
        })?;
    }
    Ok(())
}

/// Seconds per fuzz target in `cargo xtask test`: enough to replay the
/// seeds and corpus and try a few hundred thousand mutations of the fast
/// targets; `cargo xtask fuzz --seconds N` is for searching longer.
const SMOKE_FUZZ_SECONDS: u64 = 10;
