//! Loading a GGUF file: header, checks, weights, tokenizer, template.
//!
//! GGUF bytes are untrusted (a half-downloaded file, a file from anywhere
//! on disk). candle's reader bounds every length against the file size,
//! but some values would still make it or the model builders divide by
//! zero or allocate without limit (`general.alignment = 0`, a head count
//! of 0, a context length of 2^31), so those are checked first, and the
//! whole load runs under `catch_unwind` as a last line of defence: a
//! corrupt file is an error naming the file, never a crashed service.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use super::template::{ChatTemplate, TemplateError};
use super::tokenizer::{TextTokenizer, TokenizerError};

/// The `general.architecture` values the local engine runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// Largest context length accepted (rotary tables are precomputed for it).
const MAX_CONTEXT: u64 = 1 << 20;
/// Largest layer count accepted.
const MAX_LAYERS: u64 = 4096;
/// Largest hidden size and head count accepted (today's largest models use
/// 16384 and 128): tables sized by them are allocated before any weight is
/// read, so a corrupt value must not reach the allocator.
const MAX_EMBEDDING: u64 = 1 << 16;
const MAX_HEADS: u64 = 1 << 12;

/// Used when a GGUF carries no chat template: ChatML, the most common.
pub const DEFAULT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Why a GGUF file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable GGUF file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: architecture '{found}' is not supported (supported: {})", SUPPORTED_ARCHITECTURES.join(", "))]
    Architecture { path: PathBuf, found: String },
    #[error("{path}: metadata {key}: {reason}")]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{path}: {source}")]
    Tokenizer {
        path: PathBuf,
        source: TokenizerError,
    },
    #[error("{path}: {source}")]
    Template {
        path: PathBuf,
        source: TemplateError,
    },
}

/// The architectures [`SUPPORTED_ARCHITECTURES`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// The transformer, whichever architecture it is. Holds its own KV cache.
pub enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Weights::Llama(_) => "Weights::Llama",
            Weights::Qwen2(_) => "Weights::Qwen2",
        })
    }
}

impl Weights {
    /// Logits of the last position after feeding `tokens` (shape
    /// `[1, n]`) at positions `pos..pos+n`. `pos == 0` starts a fresh KV
    /// cache; otherwise the tokens extend the cached ones.
    pub fn forward(&mut self, tokens: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Weights::Llama(m) => m.forward(tokens, pos),
            Weights::Qwen2(m) => m.forward(tokens, pos),
        }
    }
}

/// A model ready to generate.
#[derive(Debug)]
pub struct LoadedModel {
    pub path: PathBuf,
    pub architecture: Architecture,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    /// Prompt plus output may not exceed this many tokens.
    pub context_length: usize,
}

/// Reads and checks `path`, then builds the model on `device`.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel, LoadError> {
    match catch_unwind(AssertUnwindSafe(|| load_unguarded(path, device))) {
        Ok(r) => r,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the loader panicked".into());
            Err(LoadError::Corrupt {
                path: path.to_owned(),
                reason: format!("malformed model data ({reason})"),
            })
        }
    }
}

fn load_unguarded(path: &Path, device: &Device) -> Result<LoadedModel, LoadError> {
    let corrupt = |reason: String| LoadError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| corrupt(e.to_string()))?;
    let md = &content.metadata;
    let arch = match md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
    {
        Some("llama") => Architecture::Llama,
        Some("qwen2") => Architecture::Qwen2,
        other => {
            return Err(LoadError::Architecture {
                path: path.to_owned(),
                found: other.unwrap_or("(none)").to_owned(),
            })
        }
    };
    let context_length = check_shape(path, arch, md)?;
    let tokenizer = TextTokenizer::from_metadata(md).map_err(|source| LoadError::Tokenizer {
        path: path.to_owned(),
        source,
    })?;
    let template_src = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
        .unwrap_or(DEFAULT_TEMPLATE);
    let template = ChatTemplate::new(template_src, tokenizer.bos_token(), tokenizer.eos_token())
        .map_err(|source| LoadError::Template {
            path: path.to_owned(),
            source,
        })?;
    tracing::info!(
        path = %path.display(),
        architecture = arch.as_str(),
        tensors = content.tensor_infos.len(),
        vocab = tokenizer.len(),
        context_length,
        "loading model weights"
    );
    let weights = match arch {
        Architecture::Llama => {
            quantized_llama::ModelWeights::from_gguf(content, &mut reader, device)
                .map(Weights::Llama)
        }
        Architecture::Qwen2 => {
            quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, device)
                .map(Weights::Qwen2)
        }
    }
    .map_err(|e| corrupt(format!("loading weights: {e}")))?;
    Ok(LoadedModel {
        path: path.to_owned(),
        architecture: arch,
        weights,
        tokenizer,
        template,
        context_length,
    })
}

/// Checks the hyper-parameters the model builders divide by or allocate
/// for; returns the context length.
fn check_shape(
    path: &Path,
    arch: Architecture,
    md: &HashMap<String, Value>,
) -> Result<usize, LoadError> {
    let a = arch.as_str();
    let bad = |key: &str, reason: String| LoadError::Metadata {
        path: path.to_owned(),
        key: key.to_owned(),
        reason,
    };
    let get = |name: &str| -> Result<Option<u64>, LoadError> {
        let key = format!("{a}.{name}");
        match md.get(&key) {
            None => Ok(None),
            Some(v) => v
                .to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .map(Some)
                .map_err(|e| bad(&key, e.to_string())),
        }
    };
    let need = |name: &str| -> Result<u64, LoadError> {
        get(name)?.ok_or_else(|| bad(&format!("{a}.{name}"), "missing".into()))
    };
    let heads = need("attention.head_count")?;
    let kv_heads = need("attention.head_count_kv")?;
    let embd = need("embedding_length")?;
    let layers = need("block_count")?;
    if heads > MAX_HEADS {
        return Err(bad(
            &format!("{a}.attention.head_count"),
            format!("{heads} heads (at most {MAX_HEADS})"),
        ));
    }
    if embd > MAX_EMBEDDING {
        return Err(bad(
            &format!("{a}.embedding_length"),
            format!("{embd} (at most {MAX_EMBEDDING})"),
        ));
    }
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(bad(
            &format!("{a}.attention.head_count_kv"),
            format!("{kv_heads} KV heads for {heads} heads"),
        ));
    }
    if embd == 0 || embd % heads != 0 || (embd / heads) % 2 != 0 {
        return Err(bad(
            &format!("{a}.embedding_length"),
            format!("{embd} does not split into {heads} heads of even size"),
        ));
    }
    if layers > MAX_LAYERS {
        return Err(bad(&format!("{a}.block_count"), format!("{layers} layers")));
    }
    if let Some(rope) = get("rope.dimension_count")? {
        if rope == 0 || rope % 2 != 0 || rope > embd / heads {
            return Err(bad(
                &format!("{a}.rope.dimension_count"),
                format!("{rope} for heads of size {}", embd / heads),
            ));
        }
    } else if arch == Architecture::Llama {
        return Err(bad(&format!("{a}.rope.dimension_count"), "missing".into()));
    }
    let context = match (arch, get("context_length")?) {
        (_, Some(c)) if c == 0 || c > MAX_CONTEXT => {
            return Err(bad(
                &format!("{a}.context_length"),
                format!("{c} (must be 1..={MAX_CONTEXT})"),
            ))
        }
        (_, Some(c)) => c,
        (Architecture::Qwen2, None) => {
            return Err(bad(&format!("{a}.context_length"), "missing".into()))
        }
        // quantized_llama builds its rotary table for 4096 positions.
        (Architecture::Llama, None) => 4096,
    };
    // quantized_llama's rotary table is fixed at 4096 positions.
    let context = match arch {
        Architecture::Llama => context.min(4096),
        Architecture::Qwen2 => context,
    };
    Ok(context as usize)
}
