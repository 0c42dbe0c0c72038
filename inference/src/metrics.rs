//! Per-request metrics: logged per client, totalled for `GET /metrics`
//! (Prometheus text), and broadcast live ([`Metrics::subscribe`]) for the
//! supervisor to relay to the console.
//!
//! A [`Recorder`] lives as long as one generation. It holds the
//! live-generations gauge up while it exists, so the gauge counts exactly
//! the generations still running (a cancelled one drops its recorder and
//! the gauge goes down), and it records the request once: when it is
//! completed, or as `cancelled` when it is dropped unfinished.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::engine::local::cache::CacheStats;
use crate::engine::{ChatMessage, Role};
use crate::generation::{push_capped, Outcome};

/// Most bytes kept of one tool call's arguments or one tool result.
pub const TOOL_TEXT_BYTES: usize = 2048;

/// The console's records of a tool call (arguments cut at
/// [`TOOL_TEXT_BYTES`]) and of a tool result: the wire types, so the
/// supervisor relays them as they are.
pub use clawpen_api::{ToolCallRecord, ToolResultRecord};

use crate::conversations::Conversations;

fn capped(s: &str) -> String {
    let mut out = String::new();
    push_capped(&mut out, s, TOOL_TEXT_BYTES);
    out
}

/// One finished (or abandoned) request, as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestMetrics {
    /// `resp_...` or `chatcmpl-...`.
    pub request_id: String,
    /// The client name the API key maps to (`anonymous` when auth is off).
    pub client: String,
    pub endpoint: Endpoint,
    pub model: String,
    /// The engine that served it: `local` or the upstream's URL.
    #[serde(default)]
    pub engine: String,
    /// The request's `prompt_cache_key` (OpenClaw sends its session id).
    pub session: Option<String>,
    pub previous_response_id: Option<String>,
    /// The conversation its messages continue (see [`crate::conversations`]).
    #[serde(default)]
    pub conversation: Option<String>,
    pub stream: bool,
    pub status: RequestStatus,
    pub error: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    /// The engine reported no usage; token counts are estimates.
    pub usage_estimated: bool,
    /// Time the request waited in the engine's queue behind other requests
    /// before generating (included in the time to first token); `None`
    /// when the engine does not queue (an upstream).
    #[serde(default)]
    pub queue_wait_ms: Option<f64>,
    pub time_to_first_token_ms: Option<f64>,
    /// Uncached prompt tokens per second of time to first token.
    pub prefill_tokens_per_s: Option<f64>,
    /// Output tokens after the first, per second after the first.
    pub decode_tokens_per_s: Option<f64>,
    pub duration_ms: f64,
    /// Names of the tool calls the model made, in order.
    pub tool_calls: Vec<String>,
    /// How many of them were recovered from text the engine left unparsed.
    pub repaired_tool_calls: usize,
    /// Unix time in milliseconds when the request arrived.
    pub started_at_ms: u64,
    /// The visible output text, cut at 2 KiB.
    #[serde(default)]
    pub output_text: String,
    /// The tool calls the model made, with their arguments.
    #[serde(default)]
    pub calls: Vec<ToolCallRecord>,
    /// The tool results this request brought: the tool messages after the
    /// conversation's last assistant turn.
    #[serde(default)]
    pub tool_results: Vec<ToolResultRecord>,
}

impl RequestMetrics {
    /// A request's record as it starts: counters at zero, status
    /// `Cancelled` until the generation says otherwise.
    pub fn begin(
        request_id: String,
        client: String,
        endpoint: Endpoint,
        model: String,
        session: Option<String>,
        previous_response_id: Option<String>,
        stream: bool,
    ) -> Self {
        Self {
            request_id,
            client,
            endpoint,
            model,
            engine: String::new(),
            session,
            previous_response_id,
            conversation: None,
            stream,
            status: RequestStatus::Cancelled,
            error: None,
            prompt_tokens: 0,
            cached_tokens: 0,
            output_tokens: 0,
            usage_estimated: false,
            queue_wait_ms: None,
            time_to_first_token_ms: None,
            prefill_tokens_per_s: None,
            decode_tokens_per_s: None,
            duration_ms: 0.0,
            tool_calls: Vec::new(),
            repaired_tool_calls: 0,
            started_at_ms: unix_ms(),
            output_text: String::new(),
            calls: Vec::new(),
            tool_results: Vec::new(),
        }
    }

    /// Names the engine that serves the request.
    pub fn served_by(mut self, engine: &str) -> Self {
        engine.clone_into(&mut self.engine);
        self
    }

    /// Notes the tool results among `messages` (the whole prompt): those
    /// after the last assistant message, i.e. new with this request.
    pub fn with_tool_results(mut self, messages: &[ChatMessage]) -> Self {
        let start = messages
            .iter()
            .rposition(|m| m.role == Role::Assistant)
            .map_or(0, |i| i + 1);
        self.tool_results = messages[start..]
            .iter()
            .filter(|m| m.role == Role::Tool)
            .map(|m| {
                let output = m.content.as_ref().map(|c| c.text()).unwrap_or_default();
                ToolResultRecord {
                    call_id: m.tool_call_id.clone().unwrap_or_default(),
                    output: capped(&output),
                    bytes: output.len() as u64,
                }
            })
            .collect();
        self
    }

    /// Notes the conversation `messages` continue, remembered in `metrics`.
    pub fn in_conversation(mut self, metrics: &Metrics, messages: &[ChatMessage]) -> Self {
        let mut conversations = metrics
            .conversations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.conversation = Some(conversations.join(&self.client, messages, &self.request_id));
        self
    }
}

/// Which API a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Responses,
    ChatCompletions,
    /// `POST /v1/responses/compact`: a summarizing pass, counted apart
    /// from the turns it compacts.
    ResponsesCompact,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Responses => "responses",
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::ResponsesCompact => "responses_compact",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Completed,
    /// Stopped by `max_output_tokens` / `max_tokens`.
    Incomplete,
    Failed,
    /// The client went away first.
    Cancelled,
    /// Refused before generating (bad input, unknown model, auth).
    Rejected,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Completed => "completed",
            RequestStatus::Incomplete => "incomplete",
            RequestStatus::Failed => "failed",
            RequestStatus::Cancelled => "cancelled",
            RequestStatus::Rejected => "rejected",
        }
    }
}

/// Totals of one client.
#[derive(Debug, Default, Clone)]
struct ClientTotals {
    requests: BTreeMap<(Endpoint, RequestStatus), u64>,
    prompt_tokens: u64,
    cached_tokens: u64,
    output_tokens: u64,
    tool_calls: u64,
    repaired_tool_calls: u64,
    ttft_seconds: f64,
    ttft_count: u64,
    queue_wait_seconds: f64,
    queue_wait_count: u64,
    /// Requests that reused at least one cached prompt token.
    cache_hits: u64,
}

/// The service's metrics. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Metrics {
    feed: broadcast::Sender<RequestMetrics>,
    live: AtomicI64,
    totals: Mutex<BTreeMap<String, ClientTotals>>,
    /// Requests waiting in an engine's queue, by (model, client).
    queued: Mutex<BTreeMap<(String, String), usize>>,
    /// Their sum, for watchers of the queue (the supervisor's console
    /// events); set on every change.
    queued_total: watch::Sender<usize>,
    /// Each local model's prefix cache: counters and bytes held.
    prefix_caches: Mutex<BTreeMap<String, (CacheStats, u64)>>,
    /// Which conversation each request continues.
    conversations: Mutex<Conversations>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            feed: broadcast::channel(1024).0,
            live: AtomicI64::new(0),
            totals: Mutex::new(BTreeMap::new()),
            queued: Mutex::new(BTreeMap::new()),
            queued_total: watch::channel(0).0,
            prefix_caches: Mutex::new(BTreeMap::new()),
            conversations: Mutex::new(Conversations::default()),
        }
    }

    /// The live feed: every request, as it ends. A slow receiver loses the
    /// oldest entries (`RecvError::Lagged`), never blocks the service.
    pub fn subscribe(&self) -> broadcast::Receiver<RequestMetrics> {
        self.feed.subscribe()
    }

    /// Generations running now.
    pub fn live_generations(&self) -> i64 {
        self.live.load(Ordering::SeqCst)
    }

    /// Requests waiting in an engine's queue now, all models and clients.
    pub fn queued_requests(&self) -> usize {
        self.queued.lock().map_or(0, |q| q.values().sum())
    }

    /// Follows [`Metrics::queued_requests`]: the receiver sees each new
    /// total (changes that land together may be seen as one).
    pub fn watch_queued(&self) -> watch::Receiver<usize> {
        self.queued_total.subscribe()
    }

    /// Starts recording one generation.
    pub fn recorder(self: &Arc<Self>, base: RequestMetrics) -> Recorder {
        self.live.fetch_add(1, Ordering::SeqCst);
        Recorder {
            metrics: Arc::clone(self),
            base: Some(base),
        }
    }

    /// Counts a request refused before it reached an engine.
    pub fn rejected(&self, client: &str, endpoint: Endpoint) {
        if let Ok(mut totals) = self.totals.lock() {
            *totals
                .entry(client.to_owned())
                .or_default()
                .requests
                .entry((endpoint, RequestStatus::Rejected))
                .or_default() += 1;
        }
    }

    fn record(&self, m: RequestMetrics) {
        tracing::info!(
            client = %m.client,
            endpoint = m.endpoint.as_str(),
            request = %m.request_id,
            model = %m.model,
            session = m.session.as_deref().unwrap_or(""),
            continues = m.previous_response_id.as_deref().unwrap_or(""),
            status = m.status.as_str(),
            prompt_tokens = m.prompt_tokens,
            cached_tokens = m.cached_tokens,
            output_tokens = m.output_tokens,
            queue_wait_ms = m.queue_wait_ms.unwrap_or(-1.0),
            ttft_ms = m.time_to_first_token_ms.unwrap_or(-1.0),
            prefill_tps = m.prefill_tokens_per_s.unwrap_or(-1.0),
            decode_tps = m.decode_tokens_per_s.unwrap_or(-1.0),
            tool_calls = ?m.tool_calls,
            error = m.error.as_deref().unwrap_or(""),
            "inference request"
        );
        if let Ok(mut totals) = self.totals.lock() {
            let t = totals.entry(m.client.clone()).or_default();
            *t.requests.entry((m.endpoint, m.status)).or_default() += 1;
            t.prompt_tokens += m.prompt_tokens;
            t.cached_tokens += m.cached_tokens;
            if m.cached_tokens > 0 {
                t.cache_hits += 1;
            }
            t.output_tokens += m.output_tokens;
            t.tool_calls += m.tool_calls.len() as u64;
            t.repaired_tool_calls += m.repaired_tool_calls as u64;
            if let Some(ms) = m.time_to_first_token_ms {
                t.ttft_seconds += ms / 1000.0;
                t.ttft_count += 1;
            }
            if let Some(ms) = m.queue_wait_ms {
                t.queue_wait_seconds += ms / 1000.0;
                t.queue_wait_count += 1;
            }
        }
        // No receiver is fine: nobody is watching.
        let _ = self.feed.send(m);
    }

    /// The Prometheus text exposition of every total.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP clawpen_inference_live_generations Generations running now.\n\
             # TYPE clawpen_inference_live_generations gauge\n\
             clawpen_inference_live_generations {}",
            self.live_generations()
        );
        if let Ok(queued) = self.queued.lock() {
            let _ = writeln!(
                out,
                "# HELP clawpen_inference_queued_requests Requests waiting for their turn on a model, by client.\n\
                 # TYPE clawpen_inference_queued_requests gauge"
            );
            for ((model, client), n) in queued.iter() {
                let _ = writeln!(
                    out,
                    "clawpen_inference_queued_requests{{model=\"{}\",client=\"{}\"}} {n}",
                    escape(model),
                    escape(client)
                );
            }
        }
        if let Ok(caches) = self.prefix_caches.lock() {
            let series: [PrefixSeries; 11] = [
                (
                    "tokens",
                    "gauge",
                    "Tokens held in the model's KV prefix cache.",
                    |s, _| s.tokens,
                ),
                (
                    "bytes",
                    "gauge",
                    "Memory the held tokens' keys and values take.",
                    |_, b| b,
                ),
                (
                    "max_tokens",
                    "gauge",
                    "The bound on held tokens.",
                    |s, _| s.max_tokens,
                ),
                ("entries", "gauge", "Token sequences held.", |s, _| {
                    s.entries
                }),
                ("lookups_total", "counter", "Prompts looked up.", |s, _| {
                    s.lookups
                }),
                (
                    "hits_total",
                    "counter",
                    "Lookups that reused at least one token (hit rate: hits / lookups).",
                    |s, _| s.hits,
                ),
                (
                    "reused_tokens_total",
                    "counter",
                    "Prompt tokens not recomputed.",
                    |s, _| s.reused_tokens,
                ),
                (
                    "evictions_total",
                    "counter",
                    "Sequences dropped to stay under the bound.",
                    |s, _| s.evictions,
                ),
                (
                    "disk_hits_total",
                    "counter",
                    "Lookups whose prefix was read back from disk.",
                    |s, _| s.disk.hits,
                ),
                (
                    "disk_loaded_tokens_total",
                    "counter",
                    "Prompt tokens read back from disk instead of computed.",
                    |s, _| s.disk.loaded_tokens,
                ),
                (
                    "disk_bytes",
                    "gauge",
                    "Bytes of KV blocks the disk tier holds.",
                    |s, _| s.disk.bytes,
                ),
            ];
            for (name, kind, help, value) in series {
                let _ = writeln!(
                    out,
                    "# HELP clawpen_inference_prefix_cache_{name} {help}\n\
                     # TYPE clawpen_inference_prefix_cache_{name} {kind}"
                );
                for (model, (stats, bytes)) in caches.iter() {
                    let _ = writeln!(
                        out,
                        "clawpen_inference_prefix_cache_{name}{{model=\"{}\"}} {}",
                        escape(model),
                        value(stats, *bytes)
                    );
                }
            }
        }
        let Ok(totals) = self.totals.lock() else {
            return out;
        };
        let _ = writeln!(
            out,
            "# HELP clawpen_inference_requests_total Requests by client, endpoint and outcome.\n\
             # TYPE clawpen_inference_requests_total counter"
        );
        for (client, t) in totals.iter() {
            for ((endpoint, status), n) in &t.requests {
                let _ = writeln!(
                    out,
                    "clawpen_inference_requests_total{{client=\"{}\",endpoint=\"{}\",status=\"{}\"}} {n}",
                    escape(client),
                    endpoint.as_str(),
                    status.as_str()
                );
            }
        }
        let counters: [Counter; 10] = [
            ("prompt_tokens_total", "Prompt tokens.", |t| {
                t.prompt_tokens.to_string()
            }),
            (
                "cached_tokens_total",
                "Prompt tokens served from a prefix cache.",
                |t| t.cached_tokens.to_string(),
            ),
            (
                "cache_hit_requests_total",
                "Requests that reused prompt tokens from a prefix cache.",
                |t| t.cache_hits.to_string(),
            ),
            ("output_tokens_total", "Generated tokens.", |t| {
                t.output_tokens.to_string()
            }),
            ("tool_calls_total", "Tool calls the model made.", |t| {
                t.tool_calls.to_string()
            }),
            (
                "repaired_tool_calls_total",
                "Tool calls recovered from text the engine left unparsed.",
                |t| t.repaired_tool_calls.to_string(),
            ),
            (
                "time_to_first_token_seconds_sum",
                "Sum of times to first token.",
                |t| t.ttft_seconds.to_string(),
            ),
            (
                "time_to_first_token_seconds_count",
                "Requests with a first token.",
                |t| t.ttft_count.to_string(),
            ),
            (
                "queue_wait_seconds_sum",
                "Sum of times requests waited in an engine's queue.",
                |t| t.queue_wait_seconds.to_string(),
            ),
            (
                "queue_wait_seconds_count",
                "Requests that went through an engine's queue.",
                |t| t.queue_wait_count.to_string(),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP clawpen_inference_{name} {help}\n# TYPE clawpen_inference_{name} counter"
            );
            for (client, t) in totals.iter() {
                let _ = writeln!(
                    out,
                    "clawpen_inference_{name}{{client=\"{}\"}} {}",
                    escape(client),
                    value(t)
                );
            }
        }
        out
    }
}

impl crate::engine::local::Observer for Metrics {
    fn prefix_cache(&self, model: &str, stats: CacheStats, bytes: u64) {
        if let Ok(mut p) = self.prefix_caches.lock() {
            p.insert(model.to_owned(), (stats, bytes));
        }
    }

    fn queue_depth(&self, model: &str, client: &str, waiting: usize) {
        if let Ok(mut q) = self.queued.lock() {
            let key = (model.to_owned(), client.to_owned());
            if waiting == 0 {
                // A client that waits for nothing leaves the gauge (the
                // label set would otherwise grow with every client seen).
                q.remove(&key);
            } else {
                q.insert(key, waiting);
            }
            let total = q.values().sum();
            self.queued_total
                .send_if_modified(|t| std::mem::replace(t, total) != total);
        }
    }
}

/// A per-model prefix cache series: name, type, help text, value.
type PrefixSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CacheStats, u64) -> u64,
);

/// A per-client counter: name, help text, value.
type Counter = (&'static str, &'static str, fn(&ClientTotals) -> String);

/// Prometheus label value escaping.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Unix time in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Records one generation; see the module documentation.
#[derive(Debug)]
pub struct Recorder {
    metrics: Arc<Metrics>,
    base: Option<RequestMetrics>,
}

impl Recorder {
    /// The generation ended with `outcome`.
    pub fn complete(mut self, outcome: &Outcome, status: RequestStatus) {
        if let Some(mut m) = self.base.take() {
            fill(&mut m, outcome);
            m.status = status;
            self.metrics.record(m);
        }
    }

    /// The generation failed.
    pub fn fail(mut self, error: &str) {
        if let Some(mut m) = self.base.take() {
            m.status = RequestStatus::Failed;
            m.error = Some(error.to_owned());
            m.duration_ms = elapsed_ms(m.started_at_ms);
            self.metrics.record(m);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(mut m) = self.base.take() {
            m.status = RequestStatus::Cancelled;
            m.duration_ms = elapsed_ms(m.started_at_ms);
            self.metrics.record(m);
        }
        self.metrics.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn elapsed_ms(started_at_ms: u64) -> f64 {
    unix_ms().saturating_sub(started_at_ms) as f64
}

fn fill(m: &mut RequestMetrics, o: &Outcome) {
    let u = &o.usage;
    m.prompt_tokens = u.prompt_tokens;
    m.cached_tokens = u.cached_tokens;
    m.output_tokens = u.completion_tokens;
    m.usage_estimated = o.usage_estimated;
    m.tool_calls = o.tool_calls.clone();
    m.repaired_tool_calls = o.repaired_calls;
    m.output_text = o.text.clone();
    m.calls = o
        .calls
        .iter()
        .map(|c| ToolCallRecord {
            id: c.id.clone(),
            name: c.name.clone(),
            arguments: capped(&c.arguments),
        })
        .collect();
    m.duration_ms = o.timing.total.as_secs_f64() * 1000.0;
    m.queue_wait_ms = o.timing.queue_wait.map(|w| w.as_secs_f64() * 1000.0);
    if let Some(ttft) = o.timing.time_to_first_token {
        m.time_to_first_token_ms = Some(ttft.as_secs_f64() * 1000.0);
        // Prefill speed is the engine's, not the queue's: time in line
        // does not count.
        let secs = ttft
            .saturating_sub(o.timing.queue_wait.unwrap_or_default())
            .as_secs_f64();
        let uncached = u.prompt_tokens.saturating_sub(u.cached_tokens);
        if secs > 0.0 && uncached > 0 {
            m.prefill_tokens_per_s = Some(uncached as f64 / secs);
        }
        let decode = o.timing.decode.as_secs_f64();
        if decode > 0.0 && u.completion_tokens > 1 {
            m.decode_tokens_per_s = Some((u.completion_tokens - 1) as f64 / decode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FinishReason, Usage};
    use crate::generation::Timing;
    use std::time::Duration;

    fn base(client: &str) -> RequestMetrics {
        let mut m = RequestMetrics::begin(
            "resp_1".into(),
            client.into(),
            Endpoint::Responses,
            "m".into(),
            None,
            None,
            true,
        );
        m.status = RequestStatus::Completed;
        m
    }

    #[test]
    fn tool_results_are_those_after_the_last_assistant_turn() {
        use crate::engine::Content;
        let msg = |role, text: &str, call: Option<&str>| ChatMessage {
            role,
            content: Some(Content::Text(text.into())),
            tool_call_id: call.map(str::to_string),
            ..Default::default()
        };
        let messages = vec![
            msg(Role::User, "weather?", None),
            msg(Role::Assistant, "", None),
            msg(Role::Tool, "old", Some("call_0")),
            msg(Role::Assistant, "", None),
            msg(Role::Tool, "sunny", Some("call_1")),
            msg(Role::Tool, &"x".repeat(5000), Some("call_2")),
        ];
        let m = base("a").with_tool_results(&messages);
        assert_eq!(m.tool_results.len(), 2);
        assert_eq!(m.tool_results[0].call_id, "call_1");
        assert_eq!(m.tool_results[0].output, "sunny");
        assert_eq!(m.tool_results[1].output.len(), TOOL_TEXT_BYTES);
        assert!(base("a")
            .with_tool_results(&messages[..2])
            .tool_results
            .is_empty());
    }

    #[test]
    fn gauge_follows_recorders_and_feed_sees_everything() {
        let m = Arc::new(Metrics::new());
        let mut rx = m.subscribe();
        let a = m.recorder(base("vm \"a\""));
        let b = m.recorder(base("b"));
        assert_eq!(m.live_generations(), 2);
        drop(a);
        let outcome = Outcome {
            finish: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 100,
                cached_tokens: 60,
                completion_tokens: 11,
                reasoning_tokens: 0,
            },
            usage_estimated: false,
            timing: Timing {
                queue_wait: Some(Duration::from_millis(200)),
                time_to_first_token: Some(Duration::from_millis(600)),
                decode: Duration::from_secs(1),
                total: Duration::from_millis(1400),
            },
            tool_calls: vec!["f".into()],
            repaired_calls: 1,
            calls: vec![crate::generation::ToolCallOut {
                id: "call_1".into(),
                name: "f".into(),
                arguments: format!("{{\"q\":\"{}\"}}", "x".repeat(5000)),
            }],
            text: "hello".into(),
        };
        b.complete(&outcome, RequestStatus::Completed);
        assert_eq!(m.live_generations(), 0);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.status, RequestStatus::Cancelled);
        let second = rx.try_recv().unwrap();
        assert_eq!(
            second.prefill_tokens_per_s,
            Some(100.0),
            "queue wait excluded"
        );
        assert_eq!(second.queue_wait_ms, Some(200.0));
        assert_eq!(second.output_text, "hello");
        assert_eq!(second.calls[0].name, "f");
        assert_eq!(second.calls[0].arguments.len(), TOOL_TEXT_BYTES);
        assert_eq!(second.decode_tokens_per_s, Some(10.0));
        let text = m.prometheus();
        assert!(text.contains("clawpen_inference_live_generations 0"));
        assert!(text.contains(r#"client="vm \"a\"",endpoint="responses",status="cancelled"} 1"#));
        assert!(text.contains(r#"clawpen_inference_cached_tokens_total{client="b"} 60"#));
        assert!(text.contains(r#"clawpen_inference_tool_calls_total{client="b"} 1"#));
        assert!(text.contains(r#"clawpen_inference_queue_wait_seconds_sum{client="b"} 0.2"#));
        use crate::engine::local::Observer;
        let mut watch = m.watch_queued();
        m.queue_depth("m", "b", 3);
        m.queue_depth("m", "a", 1);
        assert_eq!(m.queued_requests(), 4);
        assert!(watch.has_changed().unwrap());
        assert_eq!(*watch.borrow_and_update(), 4);
        assert!(m
            .prometheus()
            .contains(r#"clawpen_inference_queued_requests{model="m",client="b"} 3"#));
        m.queue_depth("m", "b", 0);
        assert_eq!(*watch.borrow_and_update(), 1);
        m.queue_depth("m", "a", 1);
        assert!(!watch.has_changed().unwrap(), "the same total is no change");
        m.prefix_cache(
            "m",
            CacheStats {
                lookups: 4,
                hits: 3,
                ..CacheStats::default()
            },
            1024,
        );
        let text = m.prometheus();
        assert!(text.contains(r#"clawpen_inference_prefix_cache_hits_total{model="m"} 3"#));
        assert!(text.contains(r#"clawpen_inference_prefix_cache_bytes{model="m"} 1024"#));
        assert!(text.contains(r#"clawpen_inference_cache_hit_requests_total{client="b"} 1"#));
        assert!(!m.prometheus().contains(r#"client="b"} 3"#));
    }
}
