//! clawpen's OpenAI-compatible inference service.
//!
//! - [`models`] finds GGUF files where users already keep them (Ollama's
//!   store, LM Studio's folders, the Hugging Face cache, extra folders).
//! - [`server`] is the axum HTTP layer ([`router`], [`serve`]).
//! - [`parse`] turns raw model output into text, reasoning and tool calls,
//!   one incremental parser per model family.

use std::path::PathBuf;
use std::time::Duration;

pub mod models;
pub mod parse;
pub mod server;

pub use models::{ModelInfo, ModelLocations, ModelSource};
pub use server::{router, serve};

/// Configuration of the inference service.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Extra folders scanned (recursively, bounded) for `*.gguf` files, on
    /// top of [`InferenceConfig::locations`].
    pub model_dirs: Vec<PathBuf>,
    /// The standard places models are looked for (Ollama, LM Studio, the
    /// Hugging Face cache). [`ModelLocations::none`] turns them off.
    pub locations: ModelLocations,
    /// How long a model scan is reused before the folders are scanned again.
    pub models_cache_ttl: Duration,
}

impl Default for InferenceConfig {
    /// No extra folders, the standard locations of the current user
    /// (honouring `OLLAMA_MODELS`, `HF_HUB_CACHE`, `HF_HOME`), a 5 s scan cache.
    fn default() -> Self {
        Self {
            model_dirs: Vec::new(),
            locations: ModelLocations::standard(),
            models_cache_ttl: Duration::from_secs(5),
        }
    }
}

/// Errors of the inference service as a whole (not per request: those are
/// [`server::error::ApiError`]).
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("inference server I/O error: {0}")]
    Io(#[from] std::io::Error),
}
