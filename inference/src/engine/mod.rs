//! Engines: what turns a conversation into generated text.
//!
//! Every engine takes the same [`GenerateRequest`] (a Chat Completions
//! conversation, already validated by the HTTP layer) and streams
//! [`EngineEvent`]s. Two shapes of engine fit behind [`Engine`]:
//!
//! - `upstream` ([`upstream::UpstreamEngine`]): another OpenAI-compatible
//!   server. It streams Chat Completions chunks, already split into content,
//!   reasoning and native tool calls; its `content` may still carry raw
//!   tool-call or `<think>` markup, which the generation pipeline repairs.
//! - `local` ([`local::LocalEngine`], candle): renders the chat template
//!   itself and streams the token pieces it generated as
//!   [`EngineEvent::Text`]; the family's parser does all the splitting.
//!
//! The HTTP layer never knows which engine it talks to.

use std::fmt;
use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::parse::Family;

pub mod chunk;
pub mod front_door;
pub mod local;
pub mod sse;
pub mod upstream;

/// The stream of one generation. Dropping it cancels the generation (the
/// upstream request is dropped, a local engine stops decoding).
pub type EngineStream = Pin<Box<dyn Stream<Item = Result<EngineEvent, EngineError>> + Send>>;

/// A text generation backend. Object-safe so the server holds `Arc<dyn Engine>`.
#[async_trait]
pub trait Engine: Send + Sync + fmt::Debug {
    /// `upstream` or `local`, for logs and `/v1/models` `owned_by`.
    fn kind(&self) -> &'static str;

    /// The model used when a request names none.
    fn default_model(&self) -> Option<String>;

    /// The models this engine serves, or `None` when it cannot tell (an
    /// upstream that does not answer `GET /models`): then any name is
    /// passed on and the engine decides.
    async fn models(&self) -> Option<Vec<String>>;

    /// [`Engine::models`] asked now, past any cache: the front door's
    /// health checks (a server that stopped answering must show at once).
    async fn models_now(&self) -> Option<Vec<String>> {
        self.models().await
    }

    /// The output syntax `model` writes tool calls and reasoning in.
    fn family(&self, model: &str) -> Family;

    /// Whether the engine hands over the model's raw text, tool calls in
    /// the family's syntax included (the local engine), rather than calls
    /// its server parsed already (an upstream). Only in the second case is
    /// a call clawpen finds in the text a repair.
    fn streams_raw_text(&self) -> bool {
        false
    }

    /// What `model` reads besides text. The HTTP layer refuses a part the
    /// model cannot read before anything is generated, naming it by the
    /// client's own path to it (`input[2].content[1]`).
    fn reads(&self, model: &str) -> Reads;

    /// What a client configures itself with for `model`, where the engine
    /// knows (the local engine reads it from the file); `None` otherwise
    /// (an upstream's `/models` says nothing of it).
    fn card(&self, _model: &str) -> Option<ModelCard> {
        None
    }

    /// Starts one generation. Resolves once the engine has accepted the
    /// request (for an upstream: its response headers arrived), so a
    /// refused request can still be answered with an error status.
    async fn generate(&self, request: GenerateRequest) -> Result<EngineStream, EngineError>;
}

/// A model's facts as `GET /v1/models` reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelCard {
    /// `general.architecture` of the file.
    pub architecture: String,
    /// Prompt plus output may not exceed this many tokens.
    pub context_length: u64,
    /// The model thinks before it answers (its template opens the
    /// family's reasoning tag).
    pub reasoning: bool,
    /// The model was trained to call tools (its template renders them).
    pub tools: bool,
    /// The model reads images.
    pub vision: bool,
    /// What a user should know before chatting with it: the file carries
    /// no chat template (a base model), and the turn format used instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The kinds of content a model reads besides text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    /// Image parts (`image_url`).
    pub images: bool,
    /// File parts (`file`: a document's bytes or URL).
    pub files: bool,
}

impl Reads {
    /// Text and nothing else.
    pub const TEXT_ONLY: Reads = Reads {
        images: false,
        files: false,
    };
    /// Whatever is sent: the engine behind decides (an upstream).
    pub const ANYTHING: Reads = Reads {
        images: true,
        files: true,
    };
}

/// What `presence_penalty` and `frequency_penalty` may be (OpenAI's and
/// Open Responses' range), checked by both APIs and the local engine.
pub const PENALTY_RANGE: std::ops::RangeInclusive<f64> = -2.0..=2.0;

/// One generation, in Chat Completions terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ChatTool>,
    /// Chat Completions `tool_choice` (`"auto"`, `"none"`, `"required"`,
    /// `{"type":"function","function":{"name":..}}`).
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Chat Completions `response_format` (`json_object`, `json_schema`).
    pub response_format: Option<Value>,
    pub reasoning_effort: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub stop: Option<Value>,
    /// Open Responses `truncation: "auto"`: a conversation longer than the
    /// context drops its oldest turns (system messages stay) rather than
    /// being refused. The local engine does it; an upstream applies its
    /// own limits.
    pub truncate: bool,
    /// The client (one per VM, from its API key) the request comes from:
    /// the local engine queues clients fairly by it. Sent upstream only to
    /// another clawpen (`UpstreamSettings::forward_client`).
    pub client: Option<String>,
    /// Fields the client sent that clawpen does not interpret (`seed`,
    /// `top_k`, `chat_template_kwargs`, ...): passed on to an upstream as-is.
    pub extra: Map<String, Value>,
}

/// One Chat Completions message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// A string, or an array of content parts (`text`, `image_url`, ...);
    /// `None` for an assistant message that only calls tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Reasoning of an earlier assistant turn, replayed for templates that
    /// render it (llama.cpp, vLLM and Ollama accept this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

/// The author of a [`ChatMessage`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    #[default]
    User,
    Assistant,
    Tool,
}

/// Message content: plain text or typed parts (kept as JSON: images and
/// other parts are the engine's business).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Value>),
}

impl Content {
    /// The text of the content (text parts joined), for token estimates
    /// and logs.
    pub fn text(&self) -> String {
        match self {
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

/// A tool call in an assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

/// The function a [`ToolCall`] calls, with its arguments as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatTool {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionDef,
}

/// A function tool's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments; always an object (checked on input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `null` reads as the default (clients send `"tool_calls": null`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn function_type() -> String {
    "function".into()
}

/// One piece of an engine's output.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    /// The request waits behind others in the engine's queue (local
    /// engine; sent first, and only when it waits). `Admitted` follows
    /// when its turn comes.
    Queued,
    /// The request left the engine's queue and starts generating, after
    /// waiting `queue_wait` behind other requests (local engine; an
    /// upstream's queue is invisible). Sent before any output.
    Admitted { queue_wait: std::time::Duration },
    /// Generated text, possibly with tool-call or reasoning markup the
    /// family's parser recognises.
    Text(String),
    /// Reasoning the engine already separated (upstream `reasoning_content`).
    Reasoning(String),
    /// The model declined, as an upstream said so (Chat Completions'
    /// `refusal`): passed on as a refusal, never parsed as text.
    Refusal(String),
    /// A fragment of a tool call the engine already recognised (upstream
    /// `tool_calls`): fragments with one `index` make one call.
    ToolCallDelta {
        index: usize,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// The end of the output. `usage` is `None` when the engine could not
    /// tell; the pipeline then estimates.
    Finished {
        reason: FinishReason,
        usage: Option<Usage>,
    },
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    /// Reads a Chat Completions `finish_reason` (unknown ones are `Stop`;
    /// `function_call` is the legacy name of `tool_calls`).
    pub fn from_wire(s: &str) -> Self {
        match s {
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            _ => FinishReason::Stop,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Token counts of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    /// Prompt tokens served from a prefix cache (not recomputed).
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// Completion tokens spent on reasoning, when the engine tells.
    pub reasoning_tokens: u64,
}

/// Why an engine could not generate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached at all.
    #[error("upstream {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The engine refused the request.
    #[error("upstream answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// The engine answered something that is not the protocol.
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    /// A local engine refused the request (bad for this model: a prompt
    /// longer than its context, a template that rejects the conversation).
    /// `status` is the HTTP status it deserves (400, 404).
    #[error("{message}")]
    Rejected { status: u16, message: String },
    /// The engine failed while generating.
    #[error("generation failed: {0}")]
    Failed(String),
    /// A local model failed on an otherwise valid request (it did not
    /// load, or its forward pass failed): Open Responses' `model_error`.
    #[error("the model failed: {0}")]
    Model(String),
    /// No engine serves requests (no upstream configured, no local engine).
    #[error("no inference engine is configured: start the service with --upstream URL")]
    NotConfigured,
}

impl EngineError {
    /// Open Responses' error type of this failure: `model_error` where the
    /// model failed, `server_error` for everything else that goes wrong
    /// while a response streams.
    pub fn error_type(&self) -> &'static str {
        match self {
            EngineError::Model(_) => "model_error",
            _ => "server_error",
        }
    }
}
