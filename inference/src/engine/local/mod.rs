//! The local engine: GGUF models run in-process on candle (CPU by default,
//! Metal / CUDA with the crate's `metal` / `cuda` features).
//!
//! Models load in the background, one after another, on a loader thread,
//! so the service answers at once; a request waits for loading to end.
//! A file that fails to load is logged with its reason and left out of the
//! model list; the other models keep serving. Each generation runs on its
//! own OS thread holding the model's lock (one generation per model at a
//! time) and streams through a
//! bounded channel; when the client goes away the receiver is dropped and
//! the thread stops at the next token. Requests wait for their turn in a
//! [`queue::FairQueue`] per model: clients (one per VM) take turns, so one
//! VM's backlog cannot starve another; a queued request holds no thread.
//! Each model keeps a bounded KV prefix cache ([`cache::PrefixCache`],
//! scoped per client): a prompt sharing a prefix with an earlier sequence
//! of the same client prefills only what follows the shared part. The
//! transformer is this crate's own ([`model::Transformer`]) so that its KV
//! cache can be kept, cut and restored.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use candle_core::Device;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::constrain::{ConstrainError, Constraint, Vocabulary};
use crate::engine::{
    ChatMessage, ChatTool, Content, Engine, EngineError, EngineEvent, EngineStream,
    GenerateRequest, Reads, Role,
};
use crate::parse::grammar::{self, OutputGrammar, ToolChoice};
use crate::parse::{Family, ToolSpec};

pub mod attention;
pub mod batched;
pub mod cache;
pub mod decode;
pub mod disk_cache;
pub mod gguf;
mod gguf_alignment;
pub mod interleaved;
#[cfg(test)]
mod kernel_tests;
pub mod matvec;
pub mod model;
pub mod mxfp4;
pub mod queue;
pub mod sentencepiece;
pub mod template;
pub mod tokenizer;

pub use decode::SamplingParams;
pub use gguf::{facts, LoadError, LoadedModel, ModelFacts, SUPPORTED_ARCHITECTURES};

/// Temperature when a request sets none (llama.cpp's default: the OpenAI
/// default of 1.0 makes small local models ramble).
pub const DEFAULT_TEMPERATURE: f64 = 0.8;

/// Events while models load, for a progress display.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadEvent {
    Started { model: String, path: PathBuf },
    Ready { model: String, seconds: f64 },
    Failed { model: String, error: String },
}

/// Called with every [`LoadEvent`].
pub type LoadCallback = Arc<dyn Fn(&LoadEvent) + Send + Sync>;

/// How a [`LocalEngine`] is set up.
#[derive(Clone, Default)]
pub struct LocalOptions {
    /// The model used when a request names none (default: the first).
    pub default_model: Option<String>,
    /// Overrides the tool-call family found from each chat template.
    pub tool_format: Option<Family>,
    pub on_load: Option<LoadCallback>,
    /// Told of every change in queue depth and prefix cache (the
    /// `/metrics` gauges).
    pub observer: Option<Arc<dyn Observer>>,
    /// Memory for each model's KV prefix cache, in bytes (`None`:
    /// [`DEFAULT_PREFIX_CACHE_BYTES`]; 0 turns the cache off).
    pub prefix_cache_bytes: Option<u64>,
    /// The prefix cache's disk tier (`None`: memory only).
    pub prefix_cache_disk: Option<disk_cache::DiskTierConfig>,
    /// Sampling for requests that leave it unset (`serve --temperature`,
    /// `--seed`).
    pub sampling: SamplingDefaults,
}

/// The server's sampling settings for requests that do not set their own,
/// as llama.cpp's `--temp` and `--seed`: an operator who wants a small
/// model's agent turns repeatable serves it greedy (`temperature` 0) or
/// with one seed, whatever the client sends by default.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplingDefaults {
    /// `None`: [`DEFAULT_TEMPERATURE`].
    pub temperature: Option<f64>,
    /// `None`: a random seed for each request.
    pub seed: Option<u64>,
}

/// Each model's KV prefix cache when none is configured: 1 GiB holds
/// ~44k tokens of a Qwen2.5-0.5B, ~9k of a 7B model.
pub const DEFAULT_PREFIX_CACHE_BYTES: u64 = 1 << 30;

/// Told what the `/metrics` gauges show of the local engine.
pub trait Observer: Send + Sync {
    /// `client` now has `waiting` requests in line for `model`.
    fn queue_depth(&self, model: &str, client: &str, waiting: usize);
    /// `model`'s prefix cache after a generation; `bytes` is what its
    /// tokens take.
    fn prefix_cache(&self, model: &str, stats: cache::CacheStats, bytes: u64);
}

impl std::fmt::Debug for LocalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalOptions")
            .field("default_model", &self.default_model)
            .field("tool_format", &self.tool_format)
            .field("sampling", &self.sampling)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum SlotState {
    Loading,
    Ready(Arc<Model>),
    Failed(Arc<str>),
}

/// A loaded model and what generating with it needs.
struct Model {
    /// The transformer and what its KV cache holds; one generation at a time.
    session: Mutex<Session>,
    tokenizer: Arc<tokenizer::TextTokenizer>,
    /// The vocabulary as the grammar engine sees it, built on the first
    /// constrained request (a few hundred ms for 150k tokens).
    vocabulary: OnceLock<Result<Arc<Vocabulary>, ConstrainError>>,
    template: template::ChatTemplate,
    context_length: usize,
    family: Family,
    /// What `GET /v1/models` says of it.
    card: crate::engine::ModelCard,
    device: Device,
    /// Whose turn it is to generate.
    queue: Arc<queue::FairQueue>,
    id: String,
    observer: Option<Arc<dyn Observer>>,
    /// The prefix cache's stats after the last generation (readable
    /// without waiting for the session lock).
    cache_stats: Mutex<cache::CacheStats>,
}

struct Session {
    weights: model::Transformer,
    cache: cache::PrefixCache,
}

/// One configured file.
struct Slot {
    id: String,
    path: PathBuf,
    state: watch::Receiver<SlotState>,
}

/// See the module documentation.
pub struct LocalEngine {
    slots: Vec<Slot>,
    default_model: Option<String>,
    sampling: SamplingDefaults,
    counters: Arc<Counters>,
}

/// Generation counts since start, for tests and logs.
#[derive(Debug, Default)]
struct Counters {
    running: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of [`LocalEngine::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalStats {
    /// Generation threads running now.
    pub running: u64,
    /// Generations that ran to their end (stop, length).
    pub finished: u64,
    /// Generations stopped because the client went away.
    pub cancelled: u64,
    pub failed: u64,
    /// Requests waiting for their turn, all models.
    pub queued: u64,
}

impl std::fmt::Debug for LocalEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field(
                "models",
                &self
                    .slots
                    .iter()
                    .map(|s| (&s.id, &s.path))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A model's id: its file name without `.gguf`.
pub fn model_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

impl LocalEngine {
    /// Starts loading `paths` in the background and returns at once.
    /// Ids are file stems; a repeated stem gets `-2`, `-3`, ...
    pub fn start(paths: &[PathBuf], options: LocalOptions) -> Self {
        let device = pick_device();
        let mut slots = Vec::new();
        let mut senders = Vec::new();
        for path in paths {
            let stem = model_id(path);
            let mut id = stem.clone();
            let mut n = 1;
            while slots.iter().any(|s: &Slot| s.id == id) {
                n += 1;
                id = format!("{stem}-{n}");
            }
            let (tx, rx) = watch::channel(SlotState::Loading);
            senders.push((id.clone(), path.clone(), tx));
            slots.push(Slot {
                id,
                path: path.clone(),
                state: rx,
            });
        }
        let default_model = options
            .default_model
            .clone()
            .or_else(|| slots.first().map(|s| s.id.clone()));
        let sampling = options.sampling;
        let spawned = std::thread::Builder::new()
            .name("clawpen-model-loader".into())
            .spawn(move || {
                for (id, path, tx) in senders {
                    let state = load_one(&id, &path, &device, &options);
                    tx.send_replace(state);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the model loader thread: {e}");
        }
        Self {
            slots,
            default_model,
            sampling,
            counters: Arc::default(),
        }
    }

    /// Generation counts since start.
    pub fn stats(&self) -> LocalStats {
        let c = &self.counters;
        LocalStats {
            running: c.running.load(Ordering::SeqCst),
            finished: c.finished.load(Ordering::SeqCst),
            cancelled: c.cancelled.load(Ordering::SeqCst),
            failed: c.failed.load(Ordering::SeqCst),
            queued: self
                .slots
                .iter()
                .map(|s| match &*s.state.borrow() {
                    SlotState::Ready(m) => m.queue.waiting() as u64,
                    _ => 0,
                })
                .sum(),
        }
    }

    /// Waits until every model has loaded or failed; returns the failures
    /// as (model, error).
    pub async fn wait_loaded(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for slot in &self.slots {
            if let SlotState::Failed(e) = wait_slot(slot).await {
                failed.push((slot.id.clone(), e.to_string()));
            }
        }
        failed
    }

    /// `model`'s prefix cache after its last generation; `None` for a
    /// model that is not loaded.
    pub fn prefix_cache_stats(&self, model: &str) -> Option<cache::CacheStats> {
        match &*self.slot(model)?.state.borrow() {
            SlotState::Ready(m) => m.cache_stats.lock().ok().map(|s| *s),
            _ => None,
        }
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.id == id)
    }
}

async fn wait_slot(slot: &Slot) -> SlotState {
    let mut rx = slot.state.clone();
    let state = match rx.wait_for(|s| !matches!(s, SlotState::Loading)).await {
        Ok(s) => s.clone(),
        // The loader thread is gone without an answer (it could not start).
        Err(_) => SlotState::Failed("the model loader stopped".into()),
    };
    state
}

fn load_one(id: &str, path: &Path, device: &Device, options: &LocalOptions) -> SlotState {
    let report = |e: LoadEvent| {
        if let Some(cb) = &options.on_load {
            cb(&e);
        }
    };
    tracing::info!(model = id, path = %path.display(), "loading model");
    report(LoadEvent::Started {
        model: id.to_owned(),
        path: path.to_owned(),
    });
    let started = Instant::now();
    match gguf::load(path, device) {
        Ok(m) => {
            let family = options
                .tool_format
                .unwrap_or_else(|| Family::detect(id, Some(m.template.source())));
            let seconds = started.elapsed().as_secs_f64();
            let bytes = options
                .prefix_cache_bytes
                .unwrap_or(DEFAULT_PREFIX_CACHE_BYTES);
            let per_token = m.weights.kv_bytes_per_token().max(1) as u64;
            let cache_tokens = usize::try_from(bytes / per_token).unwrap_or(usize::MAX);
            tracing::info!(
                model = id,
                architecture = m.architecture.as_str(),
                family = family.name(),
                seconds,
                "model ready"
            );
            report(LoadEvent::Ready {
                model: id.to_owned(),
                seconds,
            });
            let cache = with_disk_tier(
                cache::PrefixCache::new(cache_tokens),
                options.prefix_cache_disk.as_ref(),
                path,
                &m.weights,
                id,
            );
            let card = model_card(&m, family);
            SlotState::Ready(Arc::new(Model {
                card,
                session: Mutex::new(Session {
                    cache,
                    weights: m.weights,
                }),
                tokenizer: Arc::new(m.tokenizer),
                vocabulary: OnceLock::new(),
                template: m.template,
                context_length: m.context_length,
                family,
                device: device.clone(),
                queue: queue::FairQueue::new(id, options.observer.clone()),
                id: id.to_owned(),
                observer: options.observer.clone(),
                cache_stats: Mutex::default(),
            }))
        }
        Err(e) => {
            let error = e.to_string();
            tracing::error!(model = id, "model failed to load: {error}");
            report(LoadEvent::Failed {
                model: id.to_owned(),
                error: error.clone(),
            });
            SlotState::Failed(error.into())
        }
    }
}

/// The accelerator the crate was built for, else the CPU.
/// What `GET /v1/models` says of a loaded model. Whether it reasons is
/// read as [`gguf::facts`] reads it (the template opens the family's
/// reasoning tag); whether it calls tools, from its template rendering
/// them; never vision (no projector is loaded).
fn model_card(m: &gguf::LoadedModel, family: Family) -> crate::engine::ModelCard {
    let source = m.template.source();
    crate::engine::ModelCard {
        architecture: m.architecture.as_str().to_owned(),
        context_length: m.context_length as u64,
        reasoning: gguf::template_reasons(family, source),
        tools: m.template_note.is_none() && source.contains("tools"),
        vision: false,
        note: m.template_note.clone(),
    }
}

/// `cache` with the disk tier behind it when one is configured and can be
/// opened; a tier that cannot (an unreadable model file, a folder that
/// cannot be made) is logged and the model is served from memory alone.
fn with_disk_tier(
    cache: cache::PrefixCache,
    config: Option<&disk_cache::DiskTierConfig>,
    path: &Path,
    weights: &model::Transformer,
    id: &str,
) -> cache::PrefixCache {
    let Some(config) = config.filter(|c| c.bytes > 0) else {
        return cache;
    };
    let c = weights.config();
    let shape = disk_cache::KvShape {
        layers: c.layers,
        kv_heads: c.kv_heads,
        head_dim: c.head_dim,
    };
    let opened = disk_cache::fingerprint(path)
        .map_err(|source| disk_cache::DiskCacheError::Io {
            path: path.to_owned(),
            source,
        })
        .and_then(|print| disk_cache::DiskCache::open(&config.dir, print, shape, config.bytes));
    match opened {
        Ok(disk) => {
            tracing::info!(model = id, dir = %config.dir.display(), "prefix cache disk tier ready");
            cache.with_disk(disk, weights.device().clone())
        }
        Err(e) => {
            tracing::warn!(model = id, error = %e, "prefix cache disk tier off");
            cache
        }
    }
}

fn pick_device() -> Device {
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(d) => return d,
        Err(e) => tracing::warn!("CUDA unavailable, using the CPU: {e}"),
    }
    #[cfg(feature = "metal")]
    match Device::new_metal(0) {
        Ok(d) => return d,
        Err(e) => tracing::warn!("Metal unavailable, using the CPU: {e}"),
    }
    Device::Cpu
}

/// The grammar a request's tools, `tool_choice` and `response_format`
/// call for: calls when they are required, else the JSON format when one
/// is asked for, else calls started lazily (see [`grammar`]).
fn output_grammar(r: &GenerateRequest, family: Family) -> Result<Option<OutputGrammar>, String> {
    let choice = ToolChoice::from_wire(r.tool_choice.as_ref()).map_err(|e| e.to_string())?;
    let tools = tool_specs(r);
    let parallel = r.parallel_tool_calls.unwrap_or(true);
    let calls =
        grammar::tool_grammar(family, &tools, &choice, parallel).map_err(|e| e.to_string())?;
    if matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) && calls.is_some() {
        return Ok(calls);
    }
    match grammar::format_grammar(r.response_format.as_ref()).map_err(|e| e.to_string())? {
        Some(format) => Ok(Some(format)),
        None => Ok(calls),
    }
}

fn tool_specs(r: &GenerateRequest) -> Vec<ToolSpec> {
    r.tools
        .iter()
        .map(|t| ToolSpec {
            name: t.function.name.clone(),
            parameters: t.function.parameters.clone().unwrap_or(Value::Null),
        })
        .collect()
}

impl Model {
    /// The prompt of `messages` as text and tokens. With `fit`, the
    /// oldest turns are dropped until it is at most `fit` tokens (Open
    /// Responses `truncation: auto`): system messages and the last
    /// message stay, and tool results whose call was dropped go with it.
    /// A prompt that still does not fit is the caller's to refuse.
    fn render_prompt(
        &self,
        mut messages: Vec<ChatMessage>,
        tools: &[ChatTool],
        reasoning_effort: Option<&str>,
        fit: Option<usize>,
    ) -> Result<(String, Vec<u32>), String> {
        let is_turn = |m: &ChatMessage| !matches!(m.role, Role::System | Role::Developer);
        let mut dropped = 0;
        loop {
            let text = self
                .template
                .render_with_effort(&messages, tools, true, reasoning_effort)
                .map_err(|e| e.to_string())?;
            let ids = self.tokenizer.encode(&text).map_err(|e| e.to_string())?;
            let turns = messages.iter().filter(|m| is_turn(m)).count();
            if fit.is_none_or(|fit| ids.len() <= fit) || turns <= 1 {
                if dropped > 0 {
                    tracing::debug!(model = %self.id, dropped, "oldest turns dropped to fit the context");
                }
                return Ok((text, ids));
            }
            let mut first = messages.iter().position(is_turn);
            while let Some(i) = first {
                messages.remove(i);
                dropped += 1;
                // An orphaned tool result goes too, unless it is all that is left.
                first = messages
                    .iter()
                    .position(is_turn)
                    .filter(|i| messages[*i].role == Role::Tool)
                    .filter(|_| messages.iter().filter(|m| is_turn(m)).count() > 1);
            }
        }
    }

    /// The model's vocabulary for grammars (built once).
    fn vocabulary(&self) -> Result<Arc<Vocabulary>, ConstrainError> {
        self.vocabulary
            .get_or_init(|| {
                let started = Instant::now();
                let tokenizer = Arc::clone(&self.tokenizer);
                let encode: crate::constrain::Encoder = Arc::new(move |bytes: &[u8]| {
                    tokenizer
                        .encode(&String::from_utf8_lossy(bytes))
                        .unwrap_or_default()
                });
                let v = Vocabulary::new(
                    self.tokenizer.pieces(),
                    self.tokenizer.len(),
                    &self.tokenizer.end_ids(),
                    encode,
                )
                .map(Arc::new);
                tracing::info!(model = %self.id, ms = started.elapsed().as_millis() as u64, "grammar vocabulary built");
                v
            })
            .clone()
    }

    /// A compiled constraint for `grammar`; an error names the tool whose
    /// schema does not compile.
    fn constraint(
        &self,
        grammar: &OutputGrammar,
        tools: &[crate::engine::ChatTool],
    ) -> Result<Constraint, String> {
        let vocabulary = self.vocabulary().map_err(|e| e.to_string())?;
        Constraint::new(Arc::clone(&vocabulary), grammar).map_err(|e| {
            for (i, tool) in tools.iter().enumerate() {
                let spec = ToolSpec {
                    name: tool.function.name.clone(),
                    parameters: tool.function.parameters.clone().unwrap_or(Value::Null),
                };
                let compile = |schema: &Value| {
                    vocabulary.matcher(&format!("start: {}", grammar::json_rule(schema)))
                };
                if let Err(e) = compile(&grammar::arguments_schema(&spec)) {
                    let path =
                        grammar::failing_schema_path(&spec.parameters, &|sub| compile(sub).is_ok());
                    let at = if path.is_empty() {
                        String::new()
                    } else {
                        format!(" at {path}")
                    };
                    return format!(
                        "tools[{i}] '{}': its parameters schema cannot be enforced{at}: {}",
                        spec.name,
                        compile_reason(&e)
                    );
                }
            }
            format!(
                "the requested output format cannot be enforced: {}",
                compile_reason(&e)
            )
        })
    }
}

/// llguidance's compile error without the echo of the grammar that it
/// appends (the user wrote a schema, not that grammar).
fn compile_reason(error: &impl std::fmt::Display) -> String {
    let text = error.to_string();
    let reason = text.split("\n   1 | ").next().unwrap_or(&text);
    let reason = reason.split_once("): ").map_or(reason, |(_, rest)| rest);
    reason.trim().to_string()
}

/// The type of `content`'s first part that is not text (an image, audio),
/// if any: the template would drop it and the model answer as if it had
/// seen it.
fn not_text(content: &Content) -> Option<&str> {
    let Content::Parts(parts) = content else {
        return None;
    };
    parts.iter().find_map(|p| {
        let kind = p.get("type").and_then(serde_json::Value::as_str);
        (kind != Some("text")).then_some(kind.unwrap_or("untyped"))
    })
}

/// The reasoning tag a model's output starts inside, if any: a model whose
/// rendered prompt opens `<think>` starts its output inside reasoning.
fn opening_tag(family: Family, prompt: &str) -> Option<&'static str> {
    if family.prompt_opens_reasoning(prompt) {
        family.reasoning_tags().map(|(open, _)| open)
    } else {
        None
    }
}

/// Reads the sampling settings of `r` for a model with `room` tokens left;
/// what `r` leaves unset comes from `defaults`.
fn sampling_params(
    r: &GenerateRequest,
    room: usize,
    defaults: SamplingDefaults,
) -> Result<SamplingParams, EngineError> {
    let bad = |m: String| EngineError::Rejected {
        status: 400,
        message: m,
    };
    let seed = match r.extra.get("seed") {
        None | Some(Value::Null) => defaults.seed.unwrap_or_else(rand::random),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|i| i as u64))
            .ok_or_else(|| bad(format!("'seed' must be an integer, got {v}")))?,
    };
    let top_k = match r.extra.get("top_k") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| bad(format!("'top_k' must be a non-negative integer, got {v}")))?
                as usize,
        ),
    };
    let penalty = |name: &str| match r.extra.get(name) {
        None | Some(Value::Null) => Ok(0.0),
        Some(v) => v
            .as_f64()
            .filter(|p| crate::engine::PENALTY_RANGE.contains(p))
            .map(|p| p as f32)
            .ok_or_else(|| bad(format!("'{name}' must be a number from -2 to 2, got {v}"))),
    };
    let presence_penalty = penalty("presence_penalty")?;
    let frequency_penalty = penalty("frequency_penalty")?;
    let stop = match &r.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("'stop' must be a string or an array of strings".into()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("'stop' must be a string or an array of strings".into())),
    };
    let max_tokens = r
        .max_tokens
        .map(|m| (m.min(usize::MAX as u64) as usize).min(room))
        .unwrap_or(room);
    Ok(SamplingParams {
        temperature: r
            .temperature
            .or(defaults.temperature)
            .unwrap_or(DEFAULT_TEMPERATURE),
        top_p: r.top_p,
        top_k,
        presence_penalty,
        frequency_penalty,
        seed,
        max_tokens,
        stop,
    })
}

#[async_trait]
impl Engine for LocalEngine {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn default_model(&self) -> Option<String> {
        self.default_model.clone()
    }

    /// The models that loaded. Waits for loading to end, so a request
    /// during start-up waits rather than being told the model is unknown.
    async fn models(&self) -> Option<Vec<String>> {
        let mut ids = Vec::new();
        for slot in &self.slots {
            if let SlotState::Ready(_) = wait_slot(slot).await {
                ids.push(slot.id.clone());
            }
        }
        Some(ids)
    }

    fn streams_raw_text(&self) -> bool {
        true
    }

    fn family(&self, model: &str) -> Family {
        match self.slot(model).map(|s| s.state.borrow().clone()) {
            Some(SlotState::Ready(m)) => m.family,
            _ => Family::detect(model, None),
        }
    }

    /// Text only: vision projectors (`mmproj-*.gguf`) are not loaded, so
    /// no local model sees an image or a file.
    fn reads(&self, _model: &str) -> Reads {
        Reads::TEXT_ONLY
    }

    fn card(&self, model: &str) -> Option<crate::engine::ModelCard> {
        match self.slot(model).map(|s| s.state.borrow().clone()) {
            Some(SlotState::Ready(m)) => Some(m.card.clone()),
            _ => None,
        }
    }

    async fn generate(&self, mut request: GenerateRequest) -> Result<EngineStream, EngineError> {
        let slot = self
            .slot(&request.model)
            .ok_or_else(|| EngineError::Rejected {
                status: 404,
                message: format!("The model '{}' does not exist.", request.model),
            })?;
        let model = match wait_slot(slot).await {
            SlotState::Ready(m) => m,
            SlotState::Failed(e) => {
                return Err(EngineError::Model(format!(
                    "model '{}' failed to load: {e}",
                    slot.id
                )))
            }
            SlotState::Loading => return Err(EngineError::Failed("model still loading".into())),
        };
        let rejected = |message: String| EngineError::Rejected {
            status: 400,
            message,
        };
        if let Some((at, kind)) = request
            .messages
            .iter()
            .enumerate()
            .find_map(|(at, m)| m.content.as_ref().and_then(not_text).map(|kind| (at, kind)))
        {
            return Err(rejected(format!(
                "messages[{at}] holds a '{kind}' part, and model '{}' reads text only \
                 (the local engine serves no vision or audio models).",
                request.model
            )));
        }
        // Asked for and silently left out is worse than refused: a client
        // that reads them would take the absence for an answer.
        let wants_logprobs = request.extra.get("logprobs") == Some(&Value::Bool(true))
            || request
                .extra
                .get("top_logprobs")
                .and_then(Value::as_u64)
                .is_some_and(|n| n > 0);
        if wants_logprobs {
            return Err(rejected(
                "logprobs are not available from the local engine; send the request without                  'logprobs' and 'top_logprobs'."
                    .into(),
            ));
        }
        let grammar = output_grammar(&request, model.family).map_err(rejected)?;
        // Rendering and tokenizing a long conversation, and compiling a
        // grammar, take milliseconds: off the async workers.
        let (prompt_text, prompt, constraint) = {
            let model = Arc::clone(&model);
            let messages = std::mem::take(&mut request.messages);
            let tools = std::mem::take(&mut request.tools);
            let effort = request.reasoning_effort.clone();
            let fit = request.truncate.then(|| {
                // Room for the output asked for, up to half the context.
                let room = request.max_tokens.unwrap_or(1).max(1) as usize;
                model.context_length - room.min(model.context_length / 2)
            });
            tokio::task::spawn_blocking(move || {
                let constraint = match &grammar {
                    Some(g) => Some(model.constraint(g, &tools)?),
                    None => None,
                };
                let (text, ids) = model.render_prompt(messages, &tools, effort.as_deref(), fit)?;
                Ok::<_, String>((text, ids, constraint))
            })
            .await
            .map_err(|e| EngineError::Failed(format!("prompt preparation: {e}")))?
            .map_err(rejected)?
        };
        if prompt.is_empty() {
            return Err(rejected("the rendered prompt is empty".into()));
        }
        if prompt.len() >= model.context_length {
            return Err(rejected(format!(
                "This model's maximum context length is {} tokens; the prompt is {} tokens.",
                model.context_length,
                prompt.len()
            )));
        }
        let params = sampling_params(&request, model.context_length - prompt.len(), self.sampling)?;
        tracing::debug!(
            model = %request.model,
            prompt_tokens = prompt.len(),
            max_tokens = params.max_tokens,
            seed = params.seed,
            "local generation"
        );
        let open = opening_tag(model.family, &prompt_text);
        let client = request.client.as_deref().unwrap_or(ANONYMOUS);
        let scope = client.to_owned();
        // The place in line is taken now, in arrival order; the stream
        // waits for the turn (keep-alives flow meanwhile), and dropping it
        // leaves the line.
        let waiter = model.queue.acquire(client);
        let queued = waiter.is_queued();
        let counters = Arc::clone(&self.counters);
        let started = async move {
            let turn = waiter.await;
            let queue_wait = turn.waited();
            let (tx, mut rx) = mpsc::channel::<Result<EngineEvent, EngineError>>(CHANNEL_DEPTH);
            counters.running.fetch_add(1, Ordering::SeqCst);
            let thread_counters = Arc::clone(&counters);
            let spawned = std::thread::Builder::new()
                .name("clawpen-generate".into())
                .spawn(move || {
                    let end =
                        generate_blocking(&model, &prompt, &params, constraint, open, &scope, tx);
                    // The next in line may start only once the model's lock
                    // is free: `generate_blocking` has released it.
                    drop(turn);
                    let c = &thread_counters;
                    let counter = match end {
                        End::Finished => &c.finished,
                        End::Cancelled => &c.cancelled,
                        End::Failed => &c.failed,
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    c.running.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                counters.running.fetch_sub(1, Ordering::SeqCst);
                let error = EngineError::Model(format!("cannot start a generation thread: {e}"));
                return futures::stream::iter([Err(error)]).boxed();
            }
            let admitted = Ok(EngineEvent::Admitted { queue_wait });
            futures::stream::once(async move { admitted })
                .chain(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
                .boxed()
        };
        // A request that waits says so first, before its turn comes.
        let queued = futures::stream::iter(queued.then_some(Ok(EngineEvent::Queued)));
        Ok(Box::pin(
            queued.chain(futures::stream::once(started).flatten()),
        ))
    }
}

/// The client of a request that names none (no API keys configured).
const ANONYMOUS: &str = "anonymous";

/// Events buffered between the decode thread and the client: a client that
/// stops reading stops the decoding within this many tokens.
pub const CHANNEL_DEPTH: usize = 64;

/// How a generation thread ended.
enum End {
    Finished,
    Cancelled,
    Failed,
}

/// One generation on the calling (non-async) thread.
fn generate_blocking(
    model: &Model,
    prompt: &[u32],
    params: &SamplingParams,
    constraint: Option<Constraint>,
    open: Option<&'static str>,
    scope: &str,
    tx: mpsc::Sender<Result<EngineEvent, EngineError>>,
) -> End {
    // A panic inside candle (a malformed tensor shape) must end this
    // request with an error, not poison the service; the prefix cache is
    // only written once a generation's KV cache is whole.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut session = model.session.lock().unwrap_or_else(|p| p.into_inner());
        let Session { weights, cache } = &mut *session;
        if tx.is_closed() {
            return Ok(None);
        }
        if let Some(tag) = open {
            if tx.blocking_send(Ok(EngineEvent::Text(tag.into()))).is_err() {
                return Ok(None);
            }
        }
        // The last event waits until the cache statistics below are
        // published: a client that reads the metrics after its answer
        // must find its own request counted.
        let mut finished = None;
        let mut emit = |e: EngineEvent| match e {
            EngineEvent::Finished { .. } => {
                finished = Some(e);
                true
            }
            e => tx.blocking_send(Ok(e)).is_ok(),
        };
        let result = decode::run(
            decode::DecodeModel {
                weights,
                cache,
                scope,
                tokenizer: &model.tokenizer,
                device: &model.device,
                context_length: model.context_length,
            },
            prompt,
            params,
            constraint,
            &mut emit,
            &|| tx.is_closed(),
        );
        let stats = cache.stats();
        if let Ok(mut s) = model.cache_stats.lock() {
            *s = stats;
        }
        if let Some(o) = &model.observer {
            let bytes = stats.tokens * weights.kv_bytes_per_token() as u64;
            o.prefix_cache(&model.id, stats, bytes);
        }
        if let Some(e) = finished {
            if tx.blocking_send(Ok(e)).is_err() {
                return Ok(None);
            }
        }
        result
    }));
    let error = match outcome {
        Ok(Ok(Some(_))) => return End::Finished,
        Ok(Ok(None)) => {
            tracing::debug!("generation cancelled: the client went away");
            return End::Cancelled;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the model panicked while generating".to_owned(),
    };
    tracing::warn!("local generation failed: {error}");
    let _ = tx.blocking_send(Err(EngineError::Model(error)));
    End::Failed
}
