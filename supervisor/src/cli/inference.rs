//! `clawpen inference serve`: the inference service alone (the "fast Mac"),
//! and the engine flags `clawpen up` shares with it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use clawpen_inference::engine::local::disk_cache::{DiskTierConfig, DEFAULT_DISK_BYTES};
use clawpen_inference::{Family, InferenceConfig};

use super::CliError;
use crate::paths::StateDir;

#[derive(Subcommand)]
pub enum InferenceCommand {
    /// Serve the OpenAI-compatible API.
    Serve(ServeArgs),
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to serve on. Any address other than loopback needs
    /// `--api-key` (the inference host of a VM host elsewhere).
    #[arg(long, default_value = "127.0.0.1:7080")]
    listen: SocketAddr,
    /// Requests must carry `Authorization: Bearer KEY`; they are attributed
    /// to client `vm-host`, which may name the VM it relays for (`clawpen up
    /// --inference-url ... --inference-key KEY`).
    #[arg(long, env = "CLAWPEN_INFERENCE_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

/// The client name `serve --api-key`'s key maps to.
pub const KEYED_CLIENT: &str = "vm-host";

/// Where generations come from and how their text is read.
#[derive(Args, Clone)]
pub struct EngineArgs {
    /// An OpenAI-compatible server to put behind clawpen (llama.cpp, Ollama,
    /// LM Studio, mlx-lm, vLLM), base URL with its API prefix:
    /// `http://127.0.0.1:8080/v1`. Repeatable, and together with `--model
    /// FILE.gguf`: a request's `model` picks the server that lists it.
    #[arg(long = "upstream", env = "CLAWPEN_UPSTREAM", value_delimiter = ',')]
    upstreams: Vec<String>,
    /// Which engine serves a model that several list: `MODEL=local` or
    /// `MODEL=UPSTREAM_URL` (repeatable). Without it such a model stops
    /// the start with both engines named.
    #[arg(long = "route", value_name = "MODEL=ENGINE", value_parser = parse_route)]
    routes: Vec<(String, String)>,
    /// A GGUF file to serve with the local engine (repeatable: the request's
    /// `model` picks one), or a model name: the one used when a request
    /// names none.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Tool-call syntax of the upstream's model (default: guessed from the
    /// model name): hermes, qwen3-coder, glm, harmony, kimi, mistral, llama3,
    /// deepseek, plain.
    #[arg(long, value_parser = parse_family)]
    tool_format: Option<Family>,
    /// Bearer key sent to the upstream.
    #[arg(long, env = "CLAWPEN_UPSTREAM_API_KEY", hide_env_values = true)]
    upstream_api_key: Option<String>,
    /// Extra folders to search for GGUF models (besides Ollama, LM Studio, Hugging Face).
    #[arg(long = "model-dir")]
    model_dirs: Vec<PathBuf>,
    /// Memory for each local model's KV prefix cache, in MiB (default 1024;
    /// 0 turns it off): what lets a conversation's next turn prefill only
    /// its new tokens.
    #[arg(long = "prefix-cache-mib", value_name = "MIB")]
    prefix_cache_mib: Option<u64>,
    /// Disk for each local model's KV prefix cache under the state
    /// directory's `prefix-cache/`, in MiB (default 4096; 0 turns it off):
    /// what lets the first turn after a restart skip the system prompt's
    /// prefill.
    #[arg(long = "prefix-cache-disk-mib", value_name = "MIB")]
    prefix_cache_disk_mib: Option<u64>,
    /// Sampling temperature of the local engine for requests that set none
    /// (default 0.8; 0 is greedy): agents rarely send one, and a small
    /// model's tool calls are steadier cooler. Upstreams sample their own way.
    #[arg(long, value_name = "T", value_parser = parse_temperature)]
    temperature: Option<f64>,
    /// Seed of the local engine's sampling for requests that set none
    /// (default: random per request): the same request then gets the same
    /// answer.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

fn parse_temperature(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(t) if t.is_finite() && (0.0..=2.0).contains(&t) => Ok(t),
        _ => Err(format!("{raw:?} is not a temperature from 0 to 2")),
    }
}

fn parse_route(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((model, engine)) if !model.trim().is_empty() && !engine.trim().is_empty() => {
            Ok((model.trim().to_owned(), engine.trim().to_owned()))
        }
        _ => Err(format!(
            "{raw:?} is not MODEL=ENGINE (ENGINE: local or an --upstream URL)"
        )),
    }
}

fn parse_family(raw: &str) -> Result<Family, String> {
    Family::from_name(raw).ok_or_else(|| {
        let known: Vec<String> = Family::ALL
            .iter()
            .map(|f| format!("{f:?}").to_lowercase())
            .collect();
        format!("unknown tool format {raw:?}; known: {}", known.join(", "))
    })
}

impl EngineArgs {
    /// The service's configuration; stored responses go to `state`'s
    /// `inference.db` so `previous_response_id` survives a restart.
    pub fn config(self, state: &StateDir) -> InferenceConfig {
        // `*.gguf` values are files for the local engine; another value is a
        // model name (for an upstream, or the default among local models).
        let (files, names): (Vec<String>, Vec<String>) = self
            .models
            .into_iter()
            .partition(|m| m.to_ascii_lowercase().ends_with(".gguf"));
        let local_models = files.into_iter().map(PathBuf::from).collect();
        let model = names.into_iter().last();
        InferenceConfig {
            model_dirs: self.model_dirs,
            upstreams: self.upstreams,
            routes: self.routes,
            model,
            local_models,
            tool_format: self.tool_format,
            upstream_api_key: self.upstream_api_key,
            store_path: Some(state.root().join("inference.db")),
            prefix_cache_bytes: self.prefix_cache_mib.map(|mib| mib.saturating_mul(1 << 20)),
            prefix_cache_disk: Some(DiskTierConfig {
                dir: state.root().join("prefix-cache"),
                bytes: self
                    .prefix_cache_disk_mib
                    .map_or(DEFAULT_DISK_BYTES, |mib| mib.saturating_mul(1 << 20)),
            }),
            sampling: clawpen_inference::engine::local::SamplingDefaults {
                temperature: self.temperature,
                seed: self.seed,
            },
            ..Default::default()
        }
    }
}

pub async fn run(home: Option<PathBuf>, command: InferenceCommand) -> Result<(), CliError> {
    let InferenceCommand::Serve(args) = command;
    let api_key = serve_key(args.listen, args.api_key)?;
    let state = StateDir::resolve(home).context("state directory")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("local address")?;
    println!("inference: http://{addr}/v1");
    let mut config = args.engine.config(&state);
    if let Some(key) = api_key {
        config.api_keys.insert(key, KEYED_CLIENT.to_owned());
    }
    clawpen_inference::serve(listener, config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    .context("inference service")?;
    Ok(())
}

/// `--api-key`, checked: a listener beyond loopback without one would serve
/// anyone on the network, so it is refused; an empty key is refused too.
fn serve_key(listen: SocketAddr, key: Option<String>) -> Result<Option<String>, CliError> {
    match key {
        Some(k) if k.trim().is_empty() => Err(CliError::BadInput("--api-key is empty".into())),
        Some(k) => Ok(Some(k)),
        None if listen.ip().is_loopback() => Ok(None),
        None => Err(CliError::BadInput(format!(
            "--listen {listen}: serving inference beyond this machine needs --api-key \
             (the VM host then passes it as `clawpen up --inference-key`)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_beyond_loopback_needs_a_key() {
        let lan: SocketAddr = "0.0.0.0:7080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:7080".parse().unwrap();
        assert!(
            matches!(serve_key(lan, None), Err(CliError::BadInput(m)) if m.contains("--api-key"))
        );
        assert_eq!(
            serve_key(lan, Some("k".into())).unwrap().as_deref(),
            Some("k")
        );
        assert_eq!(serve_key(local, None).unwrap(), None);
        assert!(serve_key(local, Some(" ".into())).is_err());
    }
}
