//! `cargo xtask test [ARGS]`: everything the tests need (host packages, the
//! real inference clients, the console's wasm bundle, the `clawpen` binary),
//! then every test of the workspace with cargo-nextest (ARGS go to nextest).

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
    )
}
