//! `clawpen inference serve`: the inference service alone (the "fast Mac").

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::CliError;

#[derive(Subcommand)]
pub enum InferenceCommand {
    /// Serve the OpenAI-compatible API.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Extra folders to search for GGUF models (besides Ollama, LM Studio, Hugging Face).
    #[arg(long = "model-dir")]
    model_dirs: Vec<PathBuf>,
}

pub async fn run(command: InferenceCommand) -> Result<(), CliError> {
    let InferenceCommand::Serve(args) = command;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    println!("inference: http://{addr}/v1");
    let config = clawpen_inference::InferenceConfig {
        model_dirs: args.model_dirs,
        ..Default::default()
    };
    clawpen_inference::serve(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("inference service")?;
    Ok(())
}
