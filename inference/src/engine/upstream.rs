//! The upstream engine: any OpenAI-compatible Chat Completions server
//! (llama.cpp's server, Ollama, LM Studio, vLLM, mlx-lm) behind clawpen.
//!
//! Every request is sent upstream streamed (`stream: true`, usage
//! requested), whatever the client asked: one code path, time to first
//! token is measured, and dropping the [`EngineStream`] drops the HTTP
//! request, which is how an upstream learns that the client went away.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{json, Map, Value};

use super::chunk::{error_message, ChunkMapper};
use super::sse::{SseDecoder, SseEvent};
use super::{Engine, EngineError, EngineEvent, EngineStream, GenerateRequest, Reads};
use crate::parse::Family;

/// How to reach and use an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Base URL including the API prefix, e.g. `http://127.0.0.1:8080/v1`.
    pub url: String,
    /// The model used when a request names none.
    pub model: Option<String>,
    /// Forces the output syntax used for repairs (otherwise from the model name).
    pub tool_format: Option<Family>,
    /// Sent as `Authorization: Bearer` to the upstream.
    pub api_key: Option<String>,
    /// Name the requesting client (the VM) in [`crate::keys::ON_BEHALF_OF`]:
    /// for an upstream that is another clawpen (`clawpen up
    /// --inference-url`), so it queues and caches per VM. Off for foreign
    /// servers, which have no use for VM names.
    pub forward_client: bool,
}

/// An upstream that cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream URL `{url}` is not an http:// or https:// URL")]
    BadUrl { url: String },
    #[error("cannot build the upstream HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot reach the inference service at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the inference service at {url} answered {status} to GET /models: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the inference service at {url} sent a model list that is not OpenAI-shaped")]
    BadModelList { url: String },
}

/// How long a `GET /models` answer (or its failure) is reused.
const MODELS_TTL: Duration = Duration::from_secs(30);
/// Longest error body read from an upstream that refused a request.
const ERROR_BODY_LIMIT: usize = 64 << 10;

/// See the module documentation.
#[derive(Debug)]
pub struct UpstreamEngine {
    base: String,
    settings: UpstreamSettings,
    client: reqwest::Client,
    models: tokio::sync::Mutex<Option<(Instant, Option<Vec<String>>)>>,
}

impl UpstreamEngine {
    pub fn new(settings: UpstreamSettings) -> Result<Self, UpstreamError> {
        let base = settings.url.trim().trim_end_matches('/').to_owned();
        let ok = reqwest::Url::parse(&base)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !ok {
            return Err(UpstreamError::BadUrl {
                url: settings.url.clone(),
            });
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            base,
            settings,
            client,
            models: tokio::sync::Mutex::new(None),
        })
    }

    /// The base URL requests go to.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let rb = self.client.post(format!("{}{path}", self.base));
        match &self.settings.api_key {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    async fn fetch_models(&self) -> Option<Vec<String>> {
        self.list_models(Duration::from_secs(5)).await.ok()
    }

    /// The upstream's `GET /models` ids, with the reason when there are
    /// none: `clawpen up --inference-url` checks its remote this way at
    /// start (reachable, key accepted) rather than at the first guest's
    /// request.
    pub async fn list_models(&self, timeout: Duration) -> Result<Vec<String>, UpstreamError> {
        let mut rb = self
            .client
            .get(format!("{}/models", self.base))
            .timeout(timeout);
        if let Some(k) = &self.settings.api_key {
            rb = rb.bearer_auth(k);
        }
        let resp = rb.send().await.map_err(|e| UpstreamError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(UpstreamError::Refused {
                url: self.base.clone(),
                status: status.as_u16(),
                message: read_error(resp).await,
            });
        }
        let bad = || UpstreamError::BadModelList {
            url: self.base.clone(),
        };
        let body: Value = resp.json().await.map_err(|_| bad())?;
        let ids = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(bad)?
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        Ok(ids)
    }
}

#[async_trait]
impl Engine for UpstreamEngine {
    fn kind(&self) -> &'static str {
        "upstream"
    }

    fn default_model(&self) -> Option<String> {
        self.settings.model.clone()
    }

    async fn models(&self) -> Option<Vec<String>> {
        {
            let cache = self.models.lock().await;
            if let Some((at, models)) = cache.as_ref() {
                if at.elapsed() < MODELS_TTL {
                    return models.clone();
                }
            }
        }
        self.models_now().await
    }

    async fn models_now(&self) -> Option<Vec<String>> {
        let mut cache = self.models.lock().await;
        let mut models = self.fetch_models().await;
        if let (Some(list), Some(own)) = (models.as_mut(), &self.settings.model) {
            if !list.contains(own) {
                list.insert(0, own.clone());
            }
        }
        *cache = Some((Instant::now(), models.clone()));
        models
    }

    /// `--tool-format` when given; otherwise what the model name suggests;
    /// otherwise Hermes, whose `<tool_call>` is what upstreams most often
    /// leave unparsed in `content` (and which splits `<think>` too).
    fn family(&self, model: &str) -> Family {
        self.settings
            .tool_format
            .or_else(|| Family::from_model_name(model))
            .unwrap_or(Family::Hermes)
    }

    /// Anything: images and files go to the upstream as sent, and it
    /// decides (its answer to a model that cannot read them is relayed).
    fn reads(&self, _model: &str) -> Reads {
        Reads::ANYTHING
    }

    async fn generate(&self, request: GenerateRequest) -> Result<EngineStream, EngineError> {
        let mut body = request_body(&request);
        let mut fallback = request.response_format.as_ref().and_then(json_object_form);
        let resp = loop {
            let mut post = self.post("/chat/completions");
            if let (true, Some(client)) = (self.settings.forward_client, &request.client) {
                post = post.header(crate::keys::ON_BEHALF_OF, client);
            }
            let resp = post
                .json(&body)
                .send()
                .await
                .map_err(|e| EngineError::Unreachable {
                    url: self.base.clone(),
                    reason: e.to_string(),
                })?;
            let status = resp.status();
            if status.is_success() {
                break resp;
            }
            let message = read_error(resp).await;
            // A server that does not know `json_schema` (llama-cpp-python)
            // is asked once more in its own form.
            match fallback.take() {
                Some(format) if message.contains("response_format") => {
                    tracing::debug!(%message, "upstream refused json_schema; sending json_object + schema");
                    body["response_format"] = format;
                }
                _ => {
                    return Err(EngineError::Refused {
                        status: status.as_u16(),
                        message,
                    })
                }
            }
        };
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        if !is_sse {
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| EngineError::Failed(format!("upstream body: {e}")))?;
            let events = ChunkMapper::default().completion(&bytes)?;
            return Ok(Box::pin(stream::iter(events.into_iter().map(Ok))));
        }
        let reader = SseReader {
            body: resp.bytes_stream().boxed(),
            decoder: SseDecoder::default(),
            mapper: ChunkMapper::default(),
            queue: VecDeque::new(),
            done: false,
            finished: false,
        };
        Ok(Box::pin(stream::unfold(reader, |mut r| async move {
            r.next().await.map(|item| (item, r))
        })))
    }
}

/// The upstream request: the conversation plus every sampling field set.
/// Fields the client sent that clawpen does not know go first, so known
/// fields always win.
pub fn request_body(r: &GenerateRequest) -> Value {
    let mut body: Map<String, Value> = r.extra.clone();
    body.insert("model".into(), json!(r.model));
    body.insert("messages".into(), json!(r.messages));
    body.insert("stream".into(), json!(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if !r.tools.is_empty() {
        body.insert("tools".into(), json!(r.tools));
        if let Some(tc) = &r.tool_choice {
            body.insert("tool_choice".into(), tc.clone());
        }
        if let Some(p) = r.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), json!(p));
        }
    }
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    set("max_tokens", r.max_tokens.map(|v| json!(v)));
    set("temperature", r.temperature.map(|v| json!(v)));
    set("top_p", r.top_p.map(|v| json!(v)));
    set("response_format", r.response_format.clone());
    set(
        "reasoning_effort",
        r.reasoning_effort.clone().map(Value::String),
    );
    set("stop", r.stop.clone());
    Value::Object(body)
}

/// `response_format` `json_schema` in the form llama-cpp-python (and older
/// llama.cpp servers) take: `{"type": "json_object", "schema": ...}`.
fn json_object_form(format: &Value) -> Option<Value> {
    if format.get("type")?.as_str()? != "json_schema" {
        return None;
    }
    let schema = format.get("json_schema")?.get("schema")?.clone();
    Some(json!({"type": "json_object", "schema": schema}))
}

/// An error with its causes ("error sending request: ... Connection
/// refused"), since reqwest's own message stops at the outermost.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn read_error(mut resp: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > ERROR_BODY_LIMIT {
            body.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => v
            .get("error")
            .map(error_message)
            .or_else(|| v.get("detail").map(|d| d.to_string()))
            .unwrap_or_else(|| v.to_string()),
        Err(_) => String::from_utf8_lossy(&body).trim().to_owned(),
    }
}

/// Reads an upstream SSE body into engine events.
struct SseReader {
    body: BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    decoder: SseDecoder,
    mapper: ChunkMapper,
    queue: VecDeque<Result<EngineEvent, EngineError>>,
    /// Nothing more will be queued.
    done: bool,
    /// `[DONE]` or a finish reason was seen.
    finished: bool,
}

impl SseReader {
    /// Cancel-safe: state changes only after the body's `next` resolved.
    async fn next(&mut self) -> Option<Result<EngineEvent, EngineError>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => match self.decoder.push(&bytes) {
                    Ok(events) => events.into_iter().for_each(|e| self.event(e)),
                    Err(e) => self.fail(EngineError::Protocol(e.to_string())),
                },
                Some(Err(e)) => self.fail(EngineError::Failed(format!(
                    "the upstream connection broke: {e}"
                ))),
                None => {
                    if let Some(e) = self.decoder.finish() {
                        self.event(e);
                    }
                    if !self.done {
                        if self.finished || self.mapper.saw_finish() {
                            let end = self.mapper.finish();
                            self.queue.push_back(Ok(end));
                            self.done = true;
                        } else {
                            self.fail(EngineError::Failed(
                                "the upstream ended the stream before finishing".into(),
                            ));
                        }
                    }
                }
            }
        }
    }

    fn event(&mut self, e: SseEvent) {
        if self.done {
            return;
        }
        if e.data.trim() == "[DONE]" {
            let end = self.mapper.finish();
            self.queue.push_back(Ok(end));
            self.done = true;
            self.finished = true;
            return;
        }
        match self.mapper.chunk(&e.data) {
            Ok(events) => self.queue.extend(events.into_iter().map(Ok)),
            Err(err) => self.fail(err),
        }
    }

    fn fail(&mut self, e: EngineError) {
        self.queue.push_back(Err(e));
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{ChatMessage, ChatTool, Content, FunctionDef, Role};

    #[test]
    fn bad_urls_are_refused() {
        for url in ["", "localhost:8080", "ftp://x/v1", "http://"] {
            let r = UpstreamEngine::new(UpstreamSettings {
                url: url.into(),
                model: None,
                tool_format: None,
                api_key: None,
                forward_client: false,
            });
            assert!(matches!(r, Err(UpstreamError::BadUrl { .. })), "{url}");
        }
    }

    #[test]
    fn known_fields_win_over_extra_and_tools_only_when_offered() {
        let mut extra = Map::new();
        extra.insert("seed".into(), json!(7));
        extra.insert("stream".into(), json!(false));
        let mut r = GenerateRequest {
            model: "m".into(),
            messages: vec![ChatMessage {
                role: Role::User,
                content: Some(Content::Text("hi".into())),
                ..Default::default()
            }],
            tool_choice: Some(json!("auto")),
            max_tokens: Some(5),
            extra,
            ..Default::default()
        };
        let b = request_body(&r);
        assert_eq!(b["seed"], 7);
        assert_eq!(b["stream"], true);
        assert_eq!(b["max_tokens"], 5);
        assert!(b.get("tool_choice").is_none());
        assert_eq!(b["messages"], json!([{"role": "user", "content": "hi"}]));
        r.tools.push(ChatTool {
            kind: "function".into(),
            function: FunctionDef {
                name: "f".into(),
                description: None,
                parameters: Some(json!({"type": "object"})),
                strict: None,
            },
        });
        let b = request_body(&r);
        assert_eq!(b["tool_choice"], "auto");
        assert_eq!(b["tools"][0]["function"]["name"], "f");
    }

    #[test]
    fn json_schema_has_a_json_object_form_for_older_servers() {
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        assert_eq!(
            json_object_form(&format),
            Some(json!({"type": "json_object", "schema": schema}))
        );
        assert_eq!(json_object_form(&json!({"type": "json_object"})), None);
        assert_eq!(json_object_form(&json!({"type": "json_schema"})), None);
    }
}
