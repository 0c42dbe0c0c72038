//! The supervisor behind the `clawpen` binary (`main.rs` only calls
//! [`main`]). A library so that the fuzz targets (`fuzz/`) can reach the
//! parsers of guest bytes through [`fuzzing`]; nothing else is public.

mod api;
mod auth;
mod cli;
mod crash;
mod egress;
mod events;
mod inference_relay;
#[cfg(target_os = "linux")]
mod jail;
#[cfg(not(target_os = "linux"))]
#[path = "jail/unsupported.rs"]
mod jail;
mod paths;
mod private_file;
mod share;
mod store;
mod supervisor;
#[cfg(not(target_os = "macos"))]
mod tls;
mod vm;

/// The parsers that read what a guest sends, for the fuzz targets only.
#[doc(hidden)]
pub use egress::fuzzing;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, CliError, Command};

/// The `clawpen` command line: parses the arguments, runs the verb, and
/// maps its outcome to an exit status (2: bad input, named on one line).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clawpen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => cli::up::run(cli.home, args).await,
            Command::Vm(command) => cli::vm::run(cli.home, command).await,
            Command::Egress(command) => cli::egress::run(cli.home, command).await,
            Command::Share(command) => cli::share::run(cli.home, command).await,
            Command::Inference(command) => cli::inference::run(cli.home, command).await,
            Command::Image(command) => cli::image::run(cli.home, command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BadInput(message)) => {
            eprintln!("clawpen: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Other(error)) => {
            eprintln!("clawpen: {error:#}");
            ExitCode::FAILURE
        }
    }
}
