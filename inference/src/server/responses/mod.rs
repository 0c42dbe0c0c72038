//! `POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`: the Responses
//! API on top of any engine's Chat Completions-shaped generation;
//! `POST /v1/responses/compact` in [`compact`]; the WebSocket mode
//! (`GET /v1/responses`, upgraded) in [`websocket`].
//!
//! A request is checked and translated ([`request`], [`items`]) into a
//! [`GenerateRequest`]: instructions, the stored conversation a
//! `previous_response_id` continues, then the new input items. The output
//! is built by [`builder::ResponseBuilder`], streamed or whole, and stored
//! (unless `store: false`) before the final event announces it. Both
//! transports run the same [`Turn`]: SSE frames and WebSocket messages are
//! the same [`Events`], encoded apart.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

use super::auth::Client;
use super::body::parse_json;
use super::stream::{json_response, sse_response, Driver, Gather, Protocol, WholeJson, DONE};
use super::{ApiError, AppState};
use crate::engine::{Engine, EngineError, EngineStream, GenerateRequest, Role};
use crate::generation::{GenEvent, Outcome, OutputOptions};
use crate::ids::{new_id, unix_secs};
use crate::metrics::{Endpoint, Recorder, RequestMetrics};
use crate::parse::ToolSpec;
use crate::store::{ResponseStore, StoredResponse};

pub mod builder;
pub mod compact;
pub mod compaction;
pub mod items;
pub mod request;
pub mod websocket;

use builder::{Echo, ResponseBuilder};
use items::{parse_item, to_messages, Item, Reader};
use request::{Input, ResponsesRequest, Truncation};
use websocket::Recent;

/// A checked request, ready to run.
struct Prepared {
    engine: Arc<dyn Engine>,
    /// The engine's name (`local`, an upstream's URL), for the record.
    engine_name: String,
    generate: GenerateRequest,
    tools: Vec<ToolSpec>,
    /// `tool_choice` was `allowed_tools`: calls to other tools are dropped.
    only_these_tools: bool,
    echo: Echo,
    stream: bool,
    /// This request's own input items, as stored.
    input: Vec<Value>,
    /// The continued chain's items, then `input`: what a WebSocket keeps
    /// of its last response (with the output) for the next turn.
    context: Vec<Value>,
    prompt_chars: usize,
}

/// `POST /v1/responses`.
pub async fn create(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let prepared = match parse_json(body, state.config.max_body_bytes) {
        Ok(r) => prepare(&state, &client, r, None).await,
        Err(e) => Err(e),
    };
    match prepared {
        Ok(p) => run(state, client, p, started).await,
        Err(e) => {
            tracing::info!(client = %client.0, "responses request refused: {e}");
            state.metrics.rejected(&client.0, Endpoint::Responses);
            e.into_response()
        }
    }
}

/// Checks and translates a request; `recent`: a WebSocket's last
/// response, which a `previous_response_id` may name instead of a stored
/// one.
async fn prepare(
    state: &AppState,
    client: &Client,
    r: ResponsesRequest,
    recent: Option<&Recent>,
) -> Result<Prepared, ApiError> {
    if r.background == Some(true) {
        return Err(ApiError::invalid_param(
            "background",
            "Background responses are not supported.",
        ));
    }
    let penalties = r.checked_extras()?;
    let crate::engine::front_door::Routed {
        engine,
        model,
        engine_name,
    } = state.resolve_model(r.model.as_deref()).await?;
    let mut tools = request::tools(r.tools.as_deref().unwrap_or_default())?;
    let (tool_choice, allowed) = match r.tool_choice.as_ref().map(request::tool_choice) {
        None => (None, None),
        Some(choice) => {
            let choice = choice?;
            (Some(choice.chat), choice.allowed)
        }
    };
    if let Some(allowed) = &allowed {
        if let Some((i, name)) = allowed
            .iter()
            .enumerate()
            .find(|(_, name)| !tools.chat.iter().any(|t| &t.function.name == *name))
        {
            return Err(ApiError::invalid_param(
                format!("tool_choice.tools[{i}]"),
                format!("tool_choice allows the function '{name}', which is not among the request's tools."),
            ));
        }
        // Only the allowed tools are offered (the echo keeps them all).
        tools.chat.retain(|t| allowed.contains(&t.function.name));
    }
    let text_format = r.text.as_ref().and_then(|t| t.format.clone());
    let response_format = text_format
        .as_ref()
        .map(request::response_format)
        .transpose()?
        .flatten();

    let conversation = Conversation::gather(
        state,
        client,
        (engine.as_ref(), &model),
        r.input.as_ref(),
        r.instructions.as_ref(),
        r.previous_response_id.as_deref(),
        recent,
    )
    .await?;
    let messages = conversation.messages();
    let prompt_chars = prompt_chars(&messages);

    let echo = Echo {
        instructions: match &r.instructions {
            None => Value::Null,
            Some(Input::Text(s)) => json!(s),
            Some(Input::Items(items)) => json!(items),
        },
        tools: tools.echo.clone(),
        tool_choice: r.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        parallel_tool_calls: r.parallel_tool_calls.unwrap_or(true),
        max_output_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        reasoning_effort: r.reasoning.as_ref().and_then(|x| x.effort.clone()),
        reasoning_summary: r.reasoning.as_ref().and_then(|x| x.summary.clone()),
        text_format: text_format.unwrap_or_else(|| json!({"type": "text"})),
        store: r.store.unwrap_or(true),
        previous_response_id: r.previous_response_id.clone(),
        prompt_cache_key: r.prompt_cache_key.clone(),
        metadata: r.metadata.clone().unwrap_or_default(),
        user: r.user.clone(),
        presence_penalty: penalties.presence,
        frequency_penalty: penalties.frequency,
        max_tool_calls: r.max_tool_calls.map(|n| n as u64),
        safety_identifier: r.safety_identifier.clone(),
        truncation: r.truncation.unwrap_or_default(),
    };
    // Penalties go to the engine as Chat Completions fields (the local
    // engine reads them; an upstream gets them as sent).
    let mut extra = serde_json::Map::new();
    if let Some(p) = r.presence_penalty {
        extra.insert("presence_penalty".into(), json!(p));
    }
    if let Some(p) = r.frequency_penalty {
        extra.insert("frequency_penalty".into(), json!(p));
    }
    let specs = tools
        .chat
        .iter()
        .map(|t| ToolSpec {
            name: t.function.name.clone(),
            parameters: t.function.parameters.clone().unwrap_or(Value::Null),
        })
        .collect();
    let callable = crate::generation::callable_tools(specs, tool_choice.as_ref())
        .map_err(|e| ApiError::invalid_param("tool_choice", e.to_string()))?;
    let generate = GenerateRequest {
        model,
        messages,
        tools: tools.chat,
        tool_choice,
        // One call allowed: the engine is asked for one, not left to make
        // more that would be dropped.
        parallel_tool_calls: if r.max_tool_calls == Some(1) {
            Some(false)
        } else {
            r.parallel_tool_calls
        },
        max_tokens: r.max_output_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        response_format,
        reasoning_effort: echo.reasoning_effort.clone(),
        prompt_cache_key: r.prompt_cache_key.clone(),
        stop: None,
        truncate: echo.truncation == Truncation::Auto,
        client: Some(client.0.clone()),
        extra,
    };
    Ok(Prepared {
        engine,
        engine_name,
        generate,
        tools: callable,
        only_these_tools: allowed.is_some(),
        echo,
        stream: r.stream.unwrap_or(false),
        input: conversation.input,
        context: conversation.raw,
        prompt_chars,
    })
}

/// A request's conversation, checked: its instructions (the system
/// message), the stored chain its `previous_response_id` continues, then
/// its new input items. `/v1/responses` and `/v1/responses/compact` read
/// their bodies' shared fields through this one path.
struct Conversation {
    instructions: Vec<Item>,
    /// The chain's items and the new input, as sent.
    raw: Vec<Value>,
    /// `raw`, checked (one item each).
    items: Vec<Item>,
    /// This request's own input items, as stored.
    input: Vec<Value>,
}

impl Conversation {
    /// Reads the conversation for `served` (the engine and the model the
    /// request resolved to, which decide what content parts are read).
    /// `previous_response_id` is looked up in `recent` (a WebSocket's last
    /// response, stored or not), then in the store.
    async fn gather(
        state: &AppState,
        client: &Client,
        served: (&dyn Engine, &str),
        input: Option<&Input>,
        instructions: Option<&Input>,
        previous_response_id: Option<&str>,
        recent: Option<&Recent>,
    ) -> Result<Self, ApiError> {
        let input: Vec<Value> = match input {
            None => Vec::new(),
            Some(Input::Text(s)) => {
                vec![json!({"type": "message", "role": "user", "content": s})]
            }
            Some(Input::Items(items)) => items.clone(),
        };
        if input.is_empty() && previous_response_id.is_none() {
            return Err(ApiError::invalid_param("input", "'input' is required."));
        }
        let (engine, model) = served;
        let reader = Reader {
            model,
            reads: engine.reads(model),
        };
        let mut raw = match previous_response_id {
            None => Vec::new(),
            Some(id) => match recent.filter(|r| r.id == id) {
                Some(r) => r.items.clone(),
                None => state
                    .store
                    .conversation(&client.0, id)
                    .await
                    .map_err(|e| ApiError::internal(e.to_string()))?
                    .ok_or_else(|| ApiError::previous_response_not_found(id))?,
            },
        };
        let input = resolve_references(state, client, input, &raw).await?;
        let new_items = parse_all(&input, "input", reader)?;
        let instructions = match instructions {
            None => Vec::new(),
            Some(Input::Text(s)) => vec![Item::Message {
                role: Role::System,
                content: crate::engine::Content::Text(s.clone()),
            }],
            Some(Input::Items(items)) => parse_all(items, "instructions", reader)?,
        };
        let mut items = parse_all(&raw, "previous_response_id", reader)?;
        items.extend(new_items);
        raw.extend(input.iter().cloned());
        Ok(Self {
            instructions,
            raw,
            items,
            input,
        })
    }

    /// The chat messages the engine is given.
    fn messages(&self) -> Vec<crate::engine::ChatMessage> {
        to_messages(&self.instructions, &self.items)
    }
}

/// `input` with each `item_reference` replaced by the item it names: one
/// of the conversation being continued (`chain`), else one of the
/// client's stored responses' items. Stored so, the conversation replays
/// even after the response that held the item is deleted.
async fn resolve_references(
    state: &AppState,
    client: &Client,
    input: Vec<Value>,
    chain: &[Value],
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(input.len());
    for (i, item) in input.into_iter().enumerate() {
        let Some(id) = items::reference(&item) else {
            out.push(item);
            continue;
        };
        let found = match chain.iter().rev().find(|c| c["id"] == id) {
            Some(c) => Some(c.clone()),
            None => state
                .store
                .item(&client.0, id)
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?,
        };
        match found {
            // A stored item is never itself a reference (they are resolved
            // before storing), so this does not recurse.
            Some(found) if items::reference(&found).is_none() => out.push(found),
            _ => {
                return Err(ApiError::invalid_param(
                    format!("input[{i}].id"),
                    format!("Item with id '{id}' not found."),
                )
                .with_code("item_not_found"))
            }
        }
    }
    Ok(out)
}

fn parse_all(items: &[Value], at: &str, reader: Reader) -> Result<Vec<Item>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| parse_item(v, &format!("{at}[{i}]"), reader))
        .collect()
}

/// The characters of a prompt's text, for the token estimate of an engine
/// that reports no usage.
fn prompt_chars(messages: &[crate::engine::ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| m.content.as_ref().map_or(0, |c| c.text().len()))
        .sum()
}

/// One response under way, transport aside: the engine's start, the
/// output options, the record, the builder and the saver.
struct Turn {
    start: BoxFuture<'static, Result<EngineStream, EngineError>>,
    output: OutputOptions,
    recorder: Recorder,
    builder: ResponseBuilder,
    saver: Saver,
}

impl Turn {
    /// `remember`: keep the response's whole context for the next turn
    /// (a WebSocket's connection-local state), see [`Saver::recent`].
    fn begin(state: &AppState, client: Client, p: Prepared, remember: bool) -> Self {
        let id = new_id("resp_");
        let model = p.generate.model.clone();
        let recorder = state.metrics.recorder(
            RequestMetrics::begin(
                id.clone(),
                client.0.clone(),
                Endpoint::Responses,
                model.clone(),
                p.echo.prompt_cache_key.clone(),
                p.echo.previous_response_id.clone(),
                p.stream || remember,
            )
            .served_by(&p.engine_name)
            .with_tool_results(&p.generate.messages)
            .in_conversation(&state.metrics, &p.generate.messages),
        );
        let output = OutputOptions {
            only_these_tools: p.only_these_tools,
            ..OutputOptions::for_request(p.engine.as_ref(), &p.generate, p.tools, p.prompt_chars)
        };
        let engine = Arc::clone(&p.engine);
        let generate = p.generate;
        let start = async move { engine.generate(generate).await }.boxed();
        let saver = Saver {
            store: state.store.clone(),
            enabled: p.echo.store,
            client: client.0,
            previous: p.echo.previous_response_id.clone(),
            input: p.input,
            context: if remember { Some(p.context) } else { None },
            recent: None,
        };
        let builder = ResponseBuilder::new(id, unix_secs(), model, p.echo);
        Self {
            start,
            output,
            recorder,
            builder,
            saver,
        }
    }

    /// The driver of this turn, rendered by `protocol`.
    fn drive<P: Protocol>(
        self,
        state: &AppState,
        protocol: impl FnOnce(ResponseBuilder, Saver) -> P,
        started: Instant,
    ) -> Driver<P> {
        Driver::new(
            self.start,
            self.output,
            protocol(self.builder, self.saver),
            self.recorder,
            state.config.keepalive_interval,
            started,
        )
    }
}

async fn run(state: AppState, client: Client, p: Prepared, started: Instant) -> Response {
    let stream = p.stream;
    let turn = Turn::begin(&state, client, p, false);
    let grace = state.accept_grace();
    if stream {
        let mut driver = turn.drive(&state, Events::sse, started);
        if let Err(e) = driver.accept(grace).await {
            return ApiError::from_engine(&e).into_response();
        }
        sse_response(driver)
    } else {
        let whole = |builder, saver| WholeJson::new(Whole { builder, saver });
        let mut driver = turn.drive(&state, whole, started);
        if let Err(e) = driver.accept(grace).await {
            return ApiError::from_engine(&e).into_response();
        }
        json_response(driver).await
    }
}

/// Stores a finished response (before it is announced).
struct Saver {
    store: ResponseStore,
    enabled: bool,
    client: String,
    previous: Option<String>,
    input: Vec<Value>,
    /// Kept only on a WebSocket: the chain and input this response
    /// continued, which [`Saver::recent`] completes with its output.
    context: Option<Vec<Value>>,
    /// The finished response as the next turn on the same WebSocket may
    /// continue it (`store: false` included).
    recent: Option<Recent>,
}

impl Saver {
    async fn save(&mut self, builder: &ResponseBuilder, response: &Value) {
        if let Some(mut items) = self.context.take() {
            items.extend(builder.output().iter().cloned());
            self.recent = Some(Recent {
                id: builder.id.clone(),
                items,
            });
        }
        if !self.enabled {
            return;
        }
        let row = StoredResponse {
            id: builder.id.clone(),
            client: self.client.clone(),
            previous_response_id: self.previous.clone(),
            created_at: unix_secs(),
            input: std::mem::take(&mut self.input),
            output: builder.output().to_vec(),
            response: response.clone(),
        };
        if let Err(e) = self.store.put(row).await {
            tracing::error!(response = %builder.id, "cannot store response: {e}");
        }
    }
}

fn sse(event: &Value) -> Bytes {
    let kind = event["type"].as_str().unwrap_or("message");
    Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
}

/// Streamed Responses: the builder's events, each encoded for its
/// transport (an SSE frame, a WebSocket text message): the Open Responses
/// spec has both carry the same event objects.
struct Events {
    builder: ResponseBuilder,
    saver: Saver,
    encode: fn(&Value) -> Bytes,
    content_type: &'static str,
    /// What ends the stream after its last event: SSE's `data: [DONE]`
    /// (Open Responses' terminal event); nothing on a WebSocket, whose
    /// messages go on with the next response.
    end: Option<&'static [u8]>,
}

impl Events {
    fn sse(builder: ResponseBuilder, saver: Saver) -> Self {
        Self {
            builder,
            saver,
            encode: sse,
            content_type: "text/event-stream",
            end: Some(DONE),
        }
    }

    /// Each event one WebSocket text message: its JSON alone.
    fn websocket(builder: ResponseBuilder, saver: Saver) -> Self {
        Self {
            builder,
            saver,
            encode: |event| Bytes::from(event.to_string()),
            content_type: "application/json",
            end: None,
        }
    }

    fn encode(&self, events: &[Value]) -> Vec<Bytes> {
        events.iter().map(self.encode).collect()
    }

    /// The last events of the stream, and its end.
    fn encode_last(&self, events: &[Value]) -> Vec<Bytes> {
        let mut out = self.encode(events);
        out.extend(self.end.map(Bytes::from_static));
        out
    }
}

#[async_trait]
impl Protocol for Events {
    fn content_type(&self) -> &'static str {
        self.content_type
    }

    fn start(&mut self, queued: bool) -> Vec<Bytes> {
        let events = self.builder.start(queued);
        self.encode(&events)
    }

    fn event(&mut self, event: GenEvent) -> Vec<Bytes> {
        let events = self.builder.push(event);
        self.encode(&events)
    }

    fn keepalive(&mut self) -> Bytes {
        (self.encode)(&self.builder.keepalive())
    }

    async fn done(&mut self, outcome: &Outcome) -> Vec<Bytes> {
        let (mut events, response) = self.builder.finish(outcome);
        self.saver.save(&self.builder, &response).await;
        events.push(self.builder.terminal(response));
        self.encode_last(&events)
    }

    fn failed(&mut self, error: &EngineError) -> Vec<Bytes> {
        let events = self.builder.failed(error.error_type(), &error.to_string());
        self.encode_last(&events)
    }

    fn status(&self) -> StatusCode {
        StatusCode::OK
    }
}

/// Whole Responses: one JSON object.
struct Whole {
    builder: ResponseBuilder,
    saver: Saver,
}

#[async_trait]
impl Gather for Whole {
    fn event(&mut self, event: GenEvent) {
        self.builder.push(event);
    }

    async fn done(&mut self, outcome: &Outcome) -> Value {
        let (_, response) = self.builder.finish(outcome);
        self.saver.save(&self.builder, &response).await;
        response
    }
}

/// `GET /v1/responses/{id}`.
pub async fn get(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.get(&client.0, &id).await {
        Ok(Some(r)) => Ok(Json(r.response)),
        Ok(None) => Err(ApiError::response_not_found(&id)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match state.store.delete(&client.0, &id).await {
        Ok(true) => Ok(Json(
            json!({"id": id, "object": "response.deleted", "deleted": true}),
        )),
        Ok(false) => Err(ApiError::response_not_found(&id)),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}
