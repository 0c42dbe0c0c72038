//! The `clawpen` command line: one file per verb.

mod client;
pub mod egress;
pub mod image;
mod image_macos;
pub mod inference;
mod progress;
mod remote;
pub mod share;
pub mod up;
pub mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "clawpen",
    version,
    about = "Run an AI agent in a disposable VM next to a local model"
)]
pub struct Cli {
    /// State directory (default: $CLAWPEN_HOME, else the platform data dir).
    #[arg(long, global = true, env = "CLAWPEN_HOME")]
    pub home: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run everything on this host: supervisor + console, inference, the demo VM.
    Up(up::UpArgs),
    /// Manage VMs of a running supervisor.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Host folders shown to VMs.
    #[command(subcommand)]
    Share(share::ShareCommand),
    /// A VM's egress rules and log (default deny).
    #[command(subcommand)]
    Egress(egress::EgressCommand),
    /// The inference service.
    #[command(subcommand)]
    Inference(inference::InferenceCommand),
    /// Guest images: build, list.
    #[command(subcommand)]
    Image(image::ImageCommand),
}

/// How a command failed, for the exit code: 2 for bad input, 1 otherwise.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}
