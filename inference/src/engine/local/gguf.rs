//! Loading a GGUF file: header, checks, weights, tokenizer, template.
//!
//! GGUF bytes are untrusted (a half-downloaded file, a file from anywhere
//! on disk). candle's reader bounds every length against the file size,
//! but some values would still make it or the model builders divide by
//! zero, overflow, read through a misaligned pointer or allocate without
//! limit (`general.alignment = 0`, dimensions whose product overflows, a
//! tensor of no whole block, a head count of 0, a context length of 2^31),
//! so those are checked first, and the whole load runs under
//! `catch_unwind` as a last line of defence: a corrupt file is an error
//! naming the file, never a crashed service. The `gguf` fuzz target holds
//! the checks to that: any panic, even a caught one, fails it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;

use super::gguf_alignment;
use super::model::{Activation, Config, SlidingWindow, Transformer, Yarn};

use super::template::{ChatTemplate, TemplateError};
use super::tokenizer::{TextTokenizer, TokenizerError};

/// The `general.architecture` values the local engine runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "gpt-oss"];

/// Largest context length accepted (rotary tables are precomputed for it).
const MAX_CONTEXT: u64 = 1 << 20;
/// Largest layer count accepted.
const MAX_LAYERS: u64 = 4096;
/// Largest hidden size and head count accepted (today's largest models use
/// 16384 and 128): tables sized by them are allocated before any weight is
/// read, so a corrupt value must not reach the allocator.
const MAX_EMBEDDING: u64 = 1 << 16;
const MAX_HEADS: u64 = 1 << 12;
/// Largest expert count accepted (today's largest MoE models use 384).
const MAX_EXPERTS: u64 = 1 << 12;
/// Gemma 3: of every 6 layers the first 5 attend through the sliding
/// window, with a rotary base of 10,000 (llama.cpp's values; the GGUF
/// does not carry them).
const GEMMA3_SLIDING_PATTERN: usize = 6;
const GEMMA3_SLIDING_ROPE_BASE: f32 = 10_000.0;

/// Used when a GGUF carries no chat template: ChatML, the most common.
pub const DEFAULT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Gemma's turn format, for a gemma3 GGUF that carries no template (the
/// base models ship without one): `<start_of_turn>user` / `model` turns
/// closed by `<end_of_turn>`, system text folded into the first user turn
/// as Gemma's own template does, tool results as user turns and the
/// model's calls as their JSON (Gemma has no call syntax of its own). No
/// alternation check: an agent's conversation must render, not fail.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}{% set ns = namespace(prefix="") %}{% for message in messages %}{% if message.role == "system" %}{% set ns.prefix = ns.prefix ~ (message.content or "") ~ "\n\n" %}{% else %}{% set text = (message.content or "") | trim %}{{ "<start_of_turn>" ~ ("model" if message.role == "assistant" else "user") ~ "\n" ~ ns.prefix ~ text }}{% for call in message.tool_calls or [] %}{{ ("\n" if (text or not loop.first) else "") ~ ({"name": call.function.name, "arguments": call.function.arguments} | tojson) }}{% endfor %}{{ "<end_of_turn>\n" }}{% set ns.prefix = "" %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ "<start_of_turn>model\n" }}{% endif %}"#;

/// The template used for `arch` when the file carries none.
fn fallback_template(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Gemma3 => GEMMA_TEMPLATE,
        _ => DEFAULT_TEMPLATE,
    }
}

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
    /// The loader panicked on the file's data (caught): a corrupt file, and
    /// a loader bug the checks before it missed (the fuzz target fails on it).
    #[error("{path}: not a readable GGUF file: malformed model data ({reason})")]
    Malformed { path: PathBuf, reason: String },
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

/// The architectures [`SUPPORTED_ARCHITECTURES`] names. All run on one
/// transformer ([`Transformer`]); they differ in data: llama (interleaved
/// RoPE; with `llama.expert_count` a Mixtral-style MoE), qwen2 (NeoX RoPE,
/// q/k/v biases), qwen3 (NeoX RoPE, per-head q/k norms, its own head size),
/// qwen3moe (qwen3 with a mixture of experts), gemma3 (scaled embeddings,
/// q/k norms, norms after each block, GELU, sliding-window layers with
/// their own rotary base, a SentencePiece vocabulary), gpt-oss (a mixture
/// of experts with biases, a router bias and a clamped SwiGLU, MXFP4
/// experts, attention sinks, q/k/v/output biases, every other layer
/// windowed, YaRN rotary scaling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Qwen3Moe,
    Gemma3,
    GptOss,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
            Architecture::Qwen3Moe => "qwen3moe",
            Architecture::Gemma3 => "gemma3",
            Architecture::GptOss => "gpt-oss",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [
            Architecture::Llama,
            Architecture::Qwen2,
            Architecture::Qwen3,
            Architecture::Qwen3Moe,
            Architecture::Gemma3,
            Architecture::GptOss,
        ]
        .into_iter()
        .find(|a| a.as_str() == name)
    }
}

/// A model ready to generate.
#[derive(Debug)]
pub struct LoadedModel {
    pub path: PathBuf,
    pub architecture: Architecture,
    pub weights: Transformer,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
    /// Prompt plus output may not exceed this many tokens.
    pub context_length: usize,
    /// Set when the file carries no chat template: what that means, and
    /// the turn format used instead.
    pub template_note: Option<String>,
}

/// Reads and checks `path`, then builds the model on `device`.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    read(path, BufReader::new(file), device)
}

/// What a client of a model configures itself with, read from the GGUF
/// header alone (no weights): the guest's OpenClaw gets its context window
/// and whether the model reasons from here, not from constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// Prompt plus output may not exceed this many tokens.
    pub context_length: usize,
    /// The chat template opens the family's reasoning tag (Qwen3's
    /// `<think>`): the model thinks before it answers.
    pub reasoning: bool,
}

/// Whether a model of `family` with chat template `template` thinks before
/// it answers: the template opens the family's reasoning tag (Qwen3's
/// `<think>`), or writes harmony's `analysis` channel.
pub fn template_reasons(family: crate::parse::Family, template: &str) -> bool {
    match family.reasoning_tags() {
        Some((open, _)) => template.contains(open),
        // Harmony reasons in its `analysis` channel.
        None => family == crate::parse::Family::Harmony && template.contains("analysis"),
    }
}

/// [`ModelFacts`] of the GGUF file `path`, checked as [`load`] checks them.
pub fn facts(path: &Path) -> Result<ModelFacts, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    let (content, _) = guarded(path, || read_header(path, BufReader::new(file)))?;
    let md = &content.metadata;
    let text = |key: &str| {
        md.get(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    };
    let arch = architecture(path, md)?;
    let (_, context_length) = check_shape(path, arch, md)?;
    let template = text("tokenizer.chat_template");
    let family = crate::parse::Family::detect(&path.to_string_lossy(), template);
    let reasoning = template.is_some_and(|t| template_reasons(family, t));
    Ok(ModelFacts {
        context_length,
        reasoning,
    })
}

/// [`load`] on GGUF bytes from `reader`; `path` names them in errors and
/// in the [`LoadedModel`]. The fuzz target (`fuzz/`) feeds it directly.
pub fn read(
    path: &Path,
    reader: impl Read + Seek,
    device: &Device,
) -> Result<LoadedModel, LoadError> {
    guarded(path, || read_unguarded(path, reader, device))
}

/// Runs `read` on the file `path`, a panic in candle's reader (which
/// trusts some of a file's numbers) becoming [`LoadError::Malformed`].
fn guarded<T>(path: &Path, read: impl FnOnce() -> Result<T, LoadError>) -> Result<T, LoadError> {
    match catch_unwind(AssertUnwindSafe(read)) {
        Ok(r) => r,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the loader panicked".into());
            Err(LoadError::Malformed {
                path: path.to_owned(),
                reason,
            })
        }
    }
}

/// The header of GGUF bytes from `reader` and the names of its MXFP4
/// tensors, refusing `general.alignment = 0` first (candle would divide by
/// it). candle reads the MXFP4 tensors' entries as F32 (it does not know
/// the type); [`super::mxfp4`] reads their data.
fn read_header(
    path: &Path,
    mut reader: impl Read + Seek,
) -> Result<(Content, HashSet<String>), LoadError> {
    let ahead = gguf_alignment::read_ahead(&mut reader);
    if ahead.alignment == Some(0) {
        return Err(LoadError::Metadata {
            path: path.to_owned(),
            key: "general.alignment".into(),
            reason: "0 (tensor data cannot be aligned to 0 bytes)".into(),
        });
    }
    let mxfp4 = ahead.mxfp4;
    let corrupt = |e: candle_core::Error| LoadError::Corrupt {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let content = if mxfp4.is_empty() {
        Content::read(&mut reader).map_err(corrupt)?
    } else {
        let patched: Vec<u64> = mxfp4.iter().map(|(_, at)| *at).collect();
        let mut overlay =
            gguf_alignment::Overlay::new(&mut reader, &patched).map_err(|e| corrupt(e.into()))?;
        Content::read(&mut overlay).map_err(corrupt)?
    };
    Ok((content, mxfp4.into_iter().map(|(name, _)| name).collect()))
}

fn read_unguarded(
    path: &Path,
    mut reader: impl Read + Seek,
    device: &Device,
) -> Result<LoadedModel, LoadError> {
    let corrupt = |reason: String| LoadError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let (content, mxfp4) = read_header(path, &mut reader)?;
    let md = &content.metadata;
    let arch = architecture(path, md)?;
    let (config, context_length) = check_shape(path, arch, md)?;
    check_tensors(path, &content)?;
    let (tokenizer, template, template_note) = tokenizer_and_template(path, arch, md)?;
    tracing::info!(
        path = %path.display(),
        architecture = arch.as_str(),
        tensors = content.tensor_infos.len(),
        vocab = tokenizer.len(),
        context_length,
        "loading model weights"
    );
    let weights = Transformer::from_gguf(config, &content, &mxfp4, &mut reader, device)
        .map_err(|e| corrupt(format!("loading weights: {e}")))?;
    Ok(LoadedModel {
        path: path.to_owned(),
        architecture: arch,
        weights,
        tokenizer,
        template,
        context_length,
        template_note,
    })
}

/// The tokenizer and chat template of a GGUF's metadata (the template by
/// architecture where the file carries none, with a note saying so).
fn tokenizer_and_template(
    path: &Path,
    arch: Architecture,
    md: &HashMap<String, Value>,
) -> Result<(TextTokenizer, ChatTemplate, Option<String>), LoadError> {
    let tokenizer = TextTokenizer::from_metadata(md).map_err(|source| LoadError::Tokenizer {
        path: path.to_owned(),
        source,
    })?;
    let file_template = md
        .get("tokenizer.chat_template")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    let template_src = file_template.unwrap_or(fallback_template(arch));
    let template_note = file_template.is_none().then(|| {
        let format = match arch {
            Architecture::Gemma3 => "Gemma's turn format",
            _ => "ChatML",
        };
        format!(
            "no chat template in the file: likely a base model, which continues text \
             rather than follows a conversation; chat is rendered in {format} by its architecture"
        )
    });
    let template = ChatTemplate::new(template_src, tokenizer.bos_token(), tokenizer.eos_token())
        .map_err(|source| LoadError::Template {
            path: path.to_owned(),
            source,
        })?;
    Ok((tokenizer, template, template_note))
}

/// The tokenizer and chat template of the GGUF file `path`, as [`load`]
/// builds them, without the weights (benches and tools render prompts
/// with them).
pub fn chat_parts(path: &Path) -> Result<(TextTokenizer, ChatTemplate), LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Open {
        path: path.to_owned(),
        source,
    })?;
    guarded(path, || {
        let (content, _) = read_header(path, BufReader::new(file))?;
        let md = &content.metadata;
        let arch = architecture(path, md)?;
        let (tokenizer, template, _) = tokenizer_and_template(path, arch, md)?;
        Ok((tokenizer, template))
    })
}

/// The file's architecture, or the error naming what it says and what is
/// supported.
fn architecture(path: &Path, md: &HashMap<String, Value>) -> Result<Architecture, LoadError> {
    let name = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .map(String::as_str);
    name.and_then(Architecture::from_name)
        .ok_or_else(|| LoadError::Architecture {
            path: path.to_owned(),
            found: name.unwrap_or("(none)").to_owned(),
        })
}

/// Checks that every tensor's size can be computed and is whole blocks of
/// its type, at least one. candle multiplies the dimensions unchecked (a
/// product that wraps around makes a small buffer for a huge shape, which
/// the kernels would then index past), and views a tensor's bytes as a
/// slice of blocks without checking: a tensor of no whole block (a
/// dimension of 0, or 16 values of a 256-value type) is an empty buffer
/// seen through a misaligned pointer, undefined behaviour and a process
/// abort (not a panic) in builds with debug assertions. Both found by the
/// `gguf` fuzz target. (candle itself checks the bytes against the file.)
fn check_tensors(path: &Path, content: &Content) -> Result<(), LoadError> {
    let bad = |name: &str, what: String| LoadError::Corrupt {
        path: path.to_owned(),
        reason: format!("tensor {name} {what}"),
    };
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        let block = info.ggml_dtype.block_size();
        let values = dims
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(name, format!("has dimensions {dims:?} too large to hold")))?;
        if values == 0 || !values.is_multiple_of(block) {
            return Err(bad(
                name,
                format!(
                    "has {values} values, not whole blocks of {block} ({:?})",
                    info.ggml_dtype
                ),
            ));
        }
        (values / block)
            .checked_mul(info.ggml_dtype.type_size())
            .ok_or_else(|| bad(name, format!("of {values} values is too large to hold")))?;
    }
    Ok(())
}

/// Checks the hyper-parameters the model divides by or allocates for;
/// returns the model's shape and its context length.
fn check_shape(
    path: &Path,
    arch: Architecture,
    md: &HashMap<String, Value>,
) -> Result<(Config, usize), LoadError> {
    let a = arch.as_str();
    let key = |name: &str| format!("{a}.{name}");
    let bad = |name: &str, reason: String| LoadError::Metadata {
        path: path.to_owned(),
        key: key(name),
        reason,
    };
    let get = |name: &str| -> Result<Option<u64>, LoadError> {
        match md.get(&key(name)) {
            None => Ok(None),
            Some(v) => v
                .to_u64()
                .or_else(|_| v.to_u32().map(u64::from))
                .map(Some)
                .map_err(|e| bad(name, e.to_string())),
        }
    };
    let get_text = |name: &str| {
        md.get(&key(name))
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    };
    let get_f32 = |name: &str| -> Result<Option<f32>, LoadError> {
        match md.get(&key(name)) {
            None => Ok(None),
            Some(v) => v.to_f32().map(Some).map_err(|e| bad(name, e.to_string())),
        }
    };
    let need = |name: &str| -> Result<u64, LoadError> {
        get(name)?.ok_or_else(|| bad(name, "missing".into()))
    };
    let heads = need("attention.head_count")?;
    let kv_heads = need("attention.head_count_kv")?;
    let embd = need("embedding_length")?;
    let layers = need("block_count")?;
    if heads > MAX_HEADS {
        return Err(bad(
            "attention.head_count",
            format!("{heads} heads (at most {MAX_HEADS})"),
        ));
    }
    if embd == 0 || embd > MAX_EMBEDDING {
        return Err(bad(
            "embedding_length",
            format!("{embd} (must be 1..={MAX_EMBEDDING})"),
        ));
    }
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(bad(
            "attention.head_count_kv",
            format!("{kv_heads} KV heads for {heads} heads"),
        ));
    }
    if layers > MAX_LAYERS {
        return Err(bad("block_count", format!("{layers} layers")));
    }
    // Qwen3 states its head size; the others split the hidden size.
    let head_dim = match get("attention.key_length")? {
        Some(k) => k,
        None if embd % heads == 0 => embd / heads,
        None => {
            return Err(bad(
                "embedding_length",
                format!("{embd} does not split into {heads} heads"),
            ))
        }
    };
    if head_dim == 0 || head_dim % 2 != 0 || head_dim > MAX_EMBEDDING {
        return Err(bad(
            "attention.key_length",
            format!("heads of size {head_dim} (must be even, 2..={MAX_EMBEDDING})"),
        ));
    }
    if let Some(v) = get("attention.value_length")? {
        if v != head_dim {
            return Err(bad(
                "attention.value_length",
                format!("{v}, unlike the key length {head_dim} (not supported)"),
            ));
        }
    }
    match get("rope.dimension_count")? {
        // Partial rotary embeddings (a part of each head rotated) are not
        // implemented: refuse rather than generate garbage.
        Some(rope) if rope != head_dim => {
            return Err(bad(
                "rope.dimension_count",
                format!("{rope} for heads of size {head_dim} (only whole-head RoPE is supported)"),
            ))
        }
        Some(_) => {}
        None if arch == Architecture::Llama => {
            return Err(bad("rope.dimension_count", "missing".into()))
        }
        None => {}
    }
    let rms_eps = get_f32("attention.layer_norm_rms_epsilon")?
        .ok_or_else(|| bad("attention.layer_norm_rms_epsilon", "missing".into()))?;
    if !(rms_eps > 0.0 && rms_eps < 1.0) {
        return Err(bad(
            "attention.layer_norm_rms_epsilon",
            format!("{rms_eps} (must be in (0, 1))"),
        ));
    }
    let rope_base = get_f32("rope.freq_base")?.unwrap_or(10_000.0);
    if !(rope_base.is_finite() && rope_base > 1.0) {
        return Err(bad("rope.freq_base", format!("{rope_base} (must be > 1)")));
    }
    let experts = match (get("expert_count")?.unwrap_or(0), arch) {
        (0, Architecture::Qwen3Moe | Architecture::GptOss) => {
            return Err(bad(
                "expert_count",
                format!("missing (a {a} model has experts)"),
            ))
        }
        (0 | 1, _) => None,
        (n, _) if n > MAX_EXPERTS => {
            return Err(bad("expert_count", format!("{n} (at most {MAX_EXPERTS})")))
        }
        (n, _) => {
            let used = need("expert_used_count")?;
            if used == 0 || used > n {
                return Err(bad("expert_used_count", format!("{used} of {n} experts")));
            }
            Some((n as usize, used as usize))
        }
    };
    let context = match (arch, get("context_length")?) {
        (_, Some(c)) if c == 0 || c > MAX_CONTEXT => {
            return Err(bad(
                "context_length",
                format!("{c} (must be 1..={MAX_CONTEXT})"),
            ))
        }
        (_, Some(c)) => c,
        // Old llama files: llama.cpp's default.
        (Architecture::Llama, None) => 4096,
        (_, None) => return Err(bad("context_length", "missing".into())),
    };
    let mut config = Config::plain(
        heads as usize,
        kv_heads as usize,
        head_dim as usize,
        layers as usize,
        embd as usize,
        f64::from(rms_eps),
        rope_base,
        arch != Architecture::Llama,
    );
    config.experts = experts;
    match get_text("rope.scaling.type") {
        None | Some("none") => {}
        Some("linear") => {
            let factor = get_f32("rope.scaling.factor")?.unwrap_or(1.0);
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(bad(
                    "rope.scaling.factor",
                    format!("{factor} (must be >= 1)"),
                ));
            }
            config.rope_scale = factor;
        }
        Some("yarn") if arch == Architecture::GptOss => {
            let factor = get_f32("rope.scaling.factor")?.unwrap_or(1.0);
            if !(factor.is_finite() && factor >= 1.0) {
                return Err(bad(
                    "rope.scaling.factor",
                    format!("{factor} (must be >= 1)"),
                ));
            }
            let original = get("rope.scaling.original_context_length")?
                .ok_or_else(|| bad("rope.scaling.original_context_length", "missing".into()))?;
            if original == 0 || original > MAX_CONTEXT {
                return Err(bad(
                    "rope.scaling.original_context_length",
                    format!("{original} (must be 1..={MAX_CONTEXT})"),
                ));
            }
            // llama.cpp's defaults where the file says nothing.
            let positive = |name: &str, default: f32| -> Result<f32, LoadError> {
                match get_f32(name)? {
                    None => Ok(default),
                    Some(v) if v.is_finite() && v > 0.0 => Ok(v),
                    Some(v) => Err(bad(name, format!("{v} (must be > 0)"))),
                }
            };
            config.yarn = Some(Yarn {
                factor,
                original_context: original as f32,
                beta_fast: positive("rope.scaling.yarn_beta_fast", 32.0)?,
                beta_slow: positive("rope.scaling.yarn_beta_slow", 1.0)?,
                attn_factor: positive("rope.scaling.yarn_attn_factor", 1.0)?,
            });
        }
        // YaRN and the rest change more than the positions: refuse rather
        // than generate garbage past the trained context.
        Some(other) if matches!(arch, Architecture::Gemma3 | Architecture::GptOss) => {
            return Err(bad(
                "rope.scaling.type",
                format!("'{other}' (only linear scaling is supported)"),
            ))
        }
        Some(_) => {}
    }
    // `attention.sliding_window` (0 or none: no window), with the layer
    // pattern and rotary base of the architecture.
    let sliding = |pattern: usize, rope_base: Option<f32>| match get("attention.sliding_window")? {
        None | Some(0) => Ok(None),
        Some(w) if w > MAX_CONTEXT => Err(bad(
            "attention.sliding_window",
            format!("{w} (at most {MAX_CONTEXT})"),
        )),
        Some(w) => Ok(Some(SlidingWindow {
            size: w as usize,
            pattern,
            rope_base,
        })),
    };
    if arch == Architecture::GptOss {
        config.activation = Activation::SwigluOai;
        // Even layers windowed, odd ones full (llama.cpp's pattern 2), all
        // on the same rotary.
        config.sliding = sliding(2, None)?;
    }
    if arch == Architecture::Gemma3 {
        config.embedding_scale = Some((embd as f32).sqrt());
        config.activation = Activation::GeluTanh;
        config.post_norms = true;
        // llama.cpp (after gemma_pytorch): 27B (62 layers) scales by the
        // hidden size per head, the others by the head size.
        if layers == 62 {
            config.attention_scale = 1.0 / ((embd / heads) as f32).sqrt();
        }
        config.sliding = sliding(GEMMA3_SLIDING_PATTERN, Some(GEMMA3_SLIDING_ROPE_BASE))?;
        config.logit_softcap = match get_f32("final_logit_softcapping")? {
            Some(cap) if cap.is_finite() && cap > 0.0 => Some(cap),
            _ => None,
        };
    }
    Ok((config, context as usize))
}
