//! `cargo xtask test [ARGS]`: everything the tests need (host packages, the
//! real inference clients, the real test models, the console's wasm bundle,
//! the `clawpen` binary),
//! then every test of the workspace with cargo-nextest (ARGS go to nextest),
//! (the fuzz targets' seed replay among them: the instrumented libFuzzer
//! build is `cargo xtask fuzz`, too slow for every CI run).

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
    Ok(())
}
