//! `POST /v1/chat/completions`, streamed and whole.
//!
//! The request is checked, then run through the same generation pipeline
//! as Responses: an upstream's output is repaired (tool calls left in
//! `content` become `tool_calls`, `<think>` text becomes
//! `reasoning_content`). Fields clawpen does not interpret are passed on
//! to the engine untouched.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::Client;
use super::body::parse_json;
use super::stream::{json_response, sse_response, Driver, Protocol};
use super::{ApiError, AppState};
use crate::engine::{ChatMessage, ChatTool, EngineError, FinishReason, GenerateRequest};
use crate::generation::{GenEvent, Outcome, OutputOptions, ToolCallOut};
use crate::ids::{new_id, unix_secs};
use crate::metrics::{Endpoint, RequestMetrics};
use crate::parse::ToolSpec;

/// The request body.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    tools: Option<Vec<ChatTool>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    #[serde(default)]
    prompt_cache_key: Option<String>,
    #[serde(default)]
    stop: Option<Value>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// Fields that must not reach the upstream from `extra` (clawpen decides
/// them, or they make no sense past clawpen).
const DROPPED: [&str; 4] = ["store", "metadata", "service_tier", "user"];

/// `POST /v1/chat/completions`.
pub async fn create(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    match prepare(&state, body).await {
        Ok(p) => run(state, client, p, started).await,
        Err(e) => {
            tracing::info!(client = %client.0, "chat request refused: {e}");
            state.metrics.rejected(&client.0, Endpoint::ChatCompletions);
            e.into_response()
        }
    }
}

struct Prepared {
    engine: Arc<dyn crate::engine::Engine>,
    /// The engine's name (`local`, an upstream's URL), for the record.
    engine_name: String,
    generate: GenerateRequest,
    tools: Vec<ToolSpec>,
    stream: bool,
    include_usage: bool,
    prompt_chars: usize,
}

async fn prepare(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Prepared, ApiError> {
    let mut r: ChatRequest = parse_json(body, state.config.max_body_bytes)?;
    if r.n.unwrap_or(1) != 1 {
        return Err(ApiError::invalid_param("n", "Only n=1 is supported."));
    }
    if r.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must contain at least one message.",
        ));
    }
    let tools = r.tools.take().unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].type"),
                format!(
                    "Unsupported tool type '{}': only 'function' tools are served here.",
                    t.kind
                ),
            ));
        }
        if t.function.name.is_empty() {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].function.name"),
                "A function tool needs a non-empty 'name'.",
            ));
        }
        if t.function
            .parameters
            .as_ref()
            .is_some_and(|p| !p.is_object() && !p.is_null())
        {
            return Err(ApiError::invalid_param(
                format!("tools[{i}].function.parameters"),
                "Invalid schema for function: 'parameters' must be a JSON schema object.",
            )
            .with_code("invalid_function_parameters"));
        }
    }
    let crate::engine::front_door::Routed {
        engine,
        model,
        engine_name,
    } = state.resolve_model(r.model.as_deref()).await?;
    for k in DROPPED {
        r.extra.remove(k);
    }
    let specs = tools
        .iter()
        .map(|t| ToolSpec {
            name: t.function.name.clone(),
            parameters: t.function.parameters.clone().unwrap_or(Value::Null),
        })
        .collect();
    let callable = crate::generation::callable_tools(specs, r.tool_choice.as_ref())
        .map_err(|e| ApiError::invalid_param("tool_choice", e.to_string()))?;
    let prompt_chars = r
        .messages
        .iter()
        .map(|m| m.content.as_ref().map_or(0, |c| c.text().len()))
        .sum();
    Ok(Prepared {
        engine,
        engine_name,
        generate: GenerateRequest {
            model,
            messages: r.messages,
            tools,
            tool_choice: r.tool_choice,
            parallel_tool_calls: r.parallel_tool_calls,
            max_tokens: r.max_completion_tokens.or(r.max_tokens),
            temperature: r.temperature,
            top_p: r.top_p,
            response_format: r.response_format,
            reasoning_effort: r.reasoning_effort,
            prompt_cache_key: r.prompt_cache_key,
            stop: r.stop,
            truncate: false,
            client: None,
            extra: r.extra,
        },
        tools: callable,
        stream: r.stream.unwrap_or(false),
        include_usage: r
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        prompt_chars,
    })
}

async fn run(state: AppState, client: Client, p: Prepared, started: Instant) -> Response {
    let id = new_id("chatcmpl-");
    let client_name = client.0.clone();
    let model = p.generate.model.clone();
    let recorder = state.metrics.recorder(
        RequestMetrics::begin(
            id.clone(),
            client.0,
            Endpoint::ChatCompletions,
            model.clone(),
            p.generate.prompt_cache_key.clone(),
            None,
            p.stream,
        )
        .served_by(&p.engine_name)
        .with_tool_results(&p.generate.messages)
        .in_conversation(&state.metrics, &p.generate.messages),
    );
    let output =
        OutputOptions::for_request(p.engine.as_ref(), &p.generate, p.tools, p.prompt_chars);
    let engine = Arc::clone(&p.engine);
    let generate = GenerateRequest {
        client: Some(client_name),
        ..p.generate
    };
    let start = async move { engine.generate(generate).await }.boxed();
    let chat = Chat {
        id,
        created: unix_secs(),
        model,
        include_usage: p.include_usage,
        role_sent: false,
        text: String::new(),
        reasoning: String::new(),
        refusal: String::new(),
        calls: Vec::new(),
        status: StatusCode::OK,
    };
    let keepalive = state.config.keepalive_interval;
    let grace = state.accept_grace();
    if p.stream {
        let mut driver = Driver::new(start, output, Streamed(chat), recorder, keepalive, started);
        if let Err(e) = driver.accept(grace).await {
            return ApiError::from_engine(&e).into_response();
        }
        sse_response(driver)
    } else {
        let mut driver = Driver::new(start, output, Whole(chat), recorder, keepalive, started);
        if let Err(e) = driver.accept(grace).await {
            return ApiError::from_engine(&e).into_response();
        }
        json_response(driver).await
    }
}

/// What both renderings share: the completion's identity and its output so far.
struct Chat {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    role_sent: bool,
    text: String,
    reasoning: String,
    refusal: String,
    calls: Vec<ToolCallOut>,
    status: StatusCode,
}

impl Chat {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    }

    fn usage(outcome: &Outcome) -> Value {
        let u = &outcome.usage;
        json!({
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        })
    }

    fn call_json(index: usize, c: &ToolCallOut) -> Value {
        json!({"index": index, "id": c.id, "type": "function",
               "function": {"name": c.name, "arguments": c.arguments}})
    }

    fn error_body(&mut self, error: &EngineError) -> Value {
        let e = ApiError::from_engine(error);
        self.status = e.status;
        json!(e.body())
    }
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Streamed: `chat.completion.chunk`s, `data: [DONE]`.
struct Streamed(Chat);

#[async_trait]
impl Protocol for Streamed {
    fn content_type(&self) -> &'static str {
        "text/event-stream"
    }

    fn start(&mut self, _queued: bool) -> Vec<Bytes> {
        Vec::new()
    }

    fn event(&mut self, event: GenEvent) -> Vec<Bytes> {
        let c = &mut self.0;
        let mut delta = match event {
            // Chat Completions has no word for waiting: keep-alives cover it.
            GenEvent::Queued | GenEvent::Dequeued => return Vec::new(),
            GenEvent::Text(s) => json!({"content": s}),
            GenEvent::Reasoning(s) => json!({"reasoning_content": s}),
            GenEvent::Refusal(s) => json!({"refusal": s}),
            GenEvent::ToolCall(call) => {
                let d = json!({"tool_calls": [Chat::call_json(c.calls.len(), &call)]});
                c.calls.push(call);
                d
            }
        };
        if !c.role_sent {
            c.role_sent = true;
            delta["role"] = json!("assistant");
        }
        vec![data(&c.chunk(delta, None))]
    }

    fn keepalive(&mut self) -> Bytes {
        Bytes::from_static(b": keep-alive\n\n")
    }

    async fn done(&mut self, outcome: &Outcome) -> Vec<Bytes> {
        let c = &self.0;
        let mut out = vec![data(&c.chunk(json!({}), Some(outcome.finish.as_str())))];
        if c.include_usage {
            out.push(data(&json!({
                "id": c.id,
                "object": "chat.completion.chunk",
                "created": c.created,
                "model": c.model,
                "choices": [],
                "usage": Chat::usage(outcome),
            })));
        }
        out.push(Bytes::from_static(super::stream::DONE));
        out
    }

    fn failed(&mut self, error: &EngineError) -> Vec<Bytes> {
        vec![data(&self.0.error_body(error))]
    }

    fn status(&self) -> StatusCode {
        StatusCode::OK
    }
}

/// Whole: one `chat.completion`.
struct Whole(Chat);

#[async_trait]
impl Protocol for Whole {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn start(&mut self, _queued: bool) -> Vec<Bytes> {
        Vec::new()
    }

    fn event(&mut self, event: GenEvent) -> Vec<Bytes> {
        match event {
            GenEvent::Queued | GenEvent::Dequeued => {}
            GenEvent::Text(s) => self.0.text.push_str(&s),
            GenEvent::Reasoning(s) => self.0.reasoning.push_str(&s),
            GenEvent::Refusal(s) => self.0.refusal.push_str(&s),
            GenEvent::ToolCall(call) => self.0.calls.push(call),
        }
        Vec::new()
    }

    fn keepalive(&mut self) -> Bytes {
        Bytes::from_static(b" ")
    }

    async fn done(&mut self, outcome: &Outcome) -> Vec<Bytes> {
        let c = &self.0;
        let mut message = json!({
            "role": "assistant",
            "content": (!c.text.is_empty() || (c.calls.is_empty() && c.refusal.is_empty()))
                .then_some(&c.text),
            "refusal": (!c.refusal.is_empty()).then_some(&c.refusal),
        });
        if !c.reasoning.is_empty() {
            message["reasoning_content"] = json!(c.reasoning);
        }
        if !c.calls.is_empty() {
            let calls: Vec<Value> = c
                .calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut v = Chat::call_json(i, call);
                    if let Some(o) = v.as_object_mut() {
                        o.remove("index");
                    }
                    v
                })
                .collect();
            message["tool_calls"] = json!(calls);
        }
        let finish = if outcome.finish == FinishReason::Stop && !c.calls.is_empty() {
            FinishReason::ToolCalls
        } else {
            outcome.finish
        };
        let body = json!({
            "id": c.id,
            "object": "chat.completion",
            "created": c.created,
            "model": c.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "message": message, "logprobs": null,
                         "finish_reason": finish.as_str()}],
            "usage": Chat::usage(outcome),
        });
        vec![Bytes::from(body.to_string())]
    }

    fn failed(&mut self, error: &EngineError) -> Vec<Bytes> {
        vec![Bytes::from(self.0.error_body(error).to_string())]
    }

    fn status(&self) -> StatusCode {
        self.0.status
    }
}
