//! `POST /v1/responses/compact` (Open Responses `compactResponse`): a
//! conversation in, a `response.compaction` object out, whose `output` is
//! every user message as sent followed by one `compaction` item, the base
//! `input` of the client's next request.
//!
//! clawpen always compacts itself, whatever engine serves the model: the
//! engine is asked for a summary of the conversation (one pass without
//! tools, accounted as any request), and the summary is sealed into the
//! item's `encrypted_content` ([`super::compaction`]). An upstream's own
//! compaction would hand back content only that upstream can read, while
//! clawpen talks Chat Completions to it, so the next request could not
//! use it.

use std::time::Instant;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::builder::usage;
use super::compaction;
use super::items::Item;
use super::request::Input;
use super::{prompt_chars, Conversation};
use crate::engine::{ChatMessage, Content, GenerateRequest, Role};
use crate::generation::{GenEvent, Outcome, OutputOptions};
use crate::ids::{new_id, unix_secs};
use crate::metrics::{Endpoint, RequestMetrics};
use crate::server::auth::Client;
use crate::server::body::parse_json;
use crate::server::stream::{json_response, Driver, Gather, WholeJson};
use crate::server::{ApiError, AppState};

/// What the model is asked after the conversation: a summary that lets a
/// later turn go on without the items it replaces. A user message, last,
/// because every chat template renders one there.
const COMPACTION_PROMPT: &str = "Compact the conversation above into a summary for whoever \
continues it. Keep what is needed to go on: the user's goals and constraints, decisions \
made, tool calls and what they returned, what is done and what remains. Write only the \
summary.";

/// The body (`CompactResponseMethodPublicBody`). Unknown fields are
/// ignored, as on `/v1/responses`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CompactRequest {
    /// Required by the spec (no default model here, unlike
    /// `/v1/responses`).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Input>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub instructions: Option<Input>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
}

/// A checked compaction, ready to run.
struct Prepared {
    engine: std::sync::Arc<dyn crate::engine::Engine>,
    /// The engine's name (`local`, an upstream's URL), for the record.
    engine_name: String,
    generate: GenerateRequest,
    /// The user messages, as the output lists them.
    kept: Vec<Value>,
    previous_response_id: Option<String>,
}

/// `POST /v1/responses/compact`.
pub async fn create(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    match prepare(&state, &client, body).await {
        Ok(p) => run(state, client, p, started).await,
        Err(e) => {
            tracing::info!(client = %client.0, "compaction refused: {e}");
            state
                .metrics
                .rejected(&client.0, Endpoint::ResponsesCompact);
            e.into_response()
        }
    }
}

async fn prepare(
    state: &AppState,
    client: &Client,
    body: Result<Bytes, BytesRejection>,
) -> Result<Prepared, ApiError> {
    let r: CompactRequest = parse_json(body, state.config.max_body_bytes)?;
    let requested = r
        .model
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid_param("model", "'model' is required."))?;
    let crate::engine::front_door::Routed {
        engine,
        model,
        engine_name,
    } = state.resolve_model(Some(requested)).await?;
    let conversation = Conversation::gather(
        state,
        client,
        (engine.as_ref(), &model),
        r.input.as_ref(),
        r.instructions.as_ref(),
        r.previous_response_id.as_deref(),
        None,
    )
    .await?;
    let kept = conversation
        .raw
        .iter()
        .zip(&conversation.items)
        .filter(|(_, item)| {
            matches!(
                item,
                Item::Message {
                    role: Role::User,
                    ..
                }
            )
        })
        .map(|(raw, _)| kept_message(raw))
        .collect();
    let mut messages = conversation.messages();
    messages.push(ChatMessage {
        role: Role::User,
        content: Some(Content::Text(COMPACTION_PROMPT.into())),
        ..ChatMessage::default()
    });
    let generate = GenerateRequest {
        model,
        messages,
        prompt_cache_key: r.prompt_cache_key,
        client: Some(client.0.clone()),
        ..GenerateRequest::default()
    };
    Ok(Prepared {
        engine,
        engine_name,
        generate,
        kept,
        previous_response_id: r.previous_response_id,
    })
}

/// A user message as the compacted output lists it: an output `Message`
/// (id, status, content parts; an image's `detail` filled in), which is
/// also a valid input item.
fn kept_message(raw: &Value) -> Value {
    let id = raw
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| new_id("msg_"), str::to_owned);
    let content: Vec<Value> = match raw.get("content") {
        Some(Value::String(text)) => vec![json!({"type": "input_text", "text": text})],
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| {
                let mut part = part.clone();
                if part["type"] == "input_image" && part.get("detail").is_none_or(Value::is_null) {
                    part["detail"] = json!("auto");
                }
                part
            })
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "id": id,
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": content,
    })
}

async fn run(state: AppState, client: Client, p: Prepared, started: Instant) -> Response {
    let id = new_id("resp_");
    let model = p.generate.model.clone();
    let recorder = state.metrics.recorder(
        RequestMetrics::begin(
            id.clone(),
            client.0.clone(),
            Endpoint::ResponsesCompact,
            model.clone(),
            p.generate.prompt_cache_key.clone(),
            p.previous_response_id,
            false,
        )
        .served_by(&p.engine_name)
        .in_conversation(&state.metrics, &p.generate.messages),
    );
    let output = OutputOptions::for_request(
        p.engine.as_ref(),
        &p.generate,
        Vec::new(),
        prompt_chars(&p.generate.messages),
    );
    let engine = p.engine;
    let generate = p.generate;
    let start = async move { engine.generate(generate).await }.boxed();
    let protocol = WholeJson::new(Compacted {
        id,
        created_at: unix_secs(),
        kept: p.kept,
        summary: String::new(),
    });
    let mut driver = Driver::new(
        start,
        output,
        protocol,
        recorder,
        state.config.keepalive_interval,
        started,
    );
    if let Err(e) = driver.accept(state.accept_grace()).await {
        return ApiError::from_engine(&e).into_response();
    }
    json_response(driver).await
}

/// The `response.compaction` object, built as the summary is written.
struct Compacted {
    id: String,
    created_at: u64,
    kept: Vec<Value>,
    summary: String,
}

#[async_trait]
impl Gather for Compacted {
    /// Only text is the summary: reasoning is the model's working, and no
    /// tools were offered.
    fn event(&mut self, event: GenEvent) {
        if let GenEvent::Text(text) = event {
            self.summary.push_str(&text);
        }
    }

    async fn done(&mut self, outcome: &Outcome) -> Value {
        let mut output = std::mem::take(&mut self.kept);
        output.push(json!({
            "id": new_id("cmp_"),
            "type": "compaction",
            "encrypted_content": compaction::seal(self.summary.trim()),
        }));
        json!({
            "id": self.id,
            "object": "response.compaction",
            "created_at": self.created_at,
            "output": output,
            "usage": usage(&outcome.usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_messages_are_output_messages() {
        let m = kept_message(&json!({"role": "user", "content": "hi"}));
        assert_eq!(m["type"], "message");
        assert_eq!(m["status"], "completed");
        assert!(m["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(m["content"], json!([{"type": "input_text", "text": "hi"}]));

        let m = kept_message(
            &json!({"id": "msg_7", "type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://example.com/a.png"}
            ]}),
        );
        assert_eq!(m["id"], "msg_7");
        assert_eq!(m["content"][1]["detail"], "auto");
        assert_eq!(m["content"][0]["text"], "look");
    }
}
