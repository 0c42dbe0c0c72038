//! One generation, engine-agnostic: the engine's raw events in, clean
//! text / reasoning / whole tool calls out, plus timing and usage.
//!
//! This is where output is repaired. Text goes through the model family's
//! incremental parser, so a tool call the engine left in its text (an
//! upstream that returned `<tool_call>...` inside `content`) becomes a real
//! tool call and `<think>` text becomes reasoning. Tool calls the engine
//! recognised itself are gathered whole. Every call's arguments are checked
//! against the tool's JSON schema and coerced (`"5"` → `5`). Nothing is
//! dropped: what cannot be parsed comes back as text.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::engine::{EngineError, EngineEvent, EngineStream, FinishReason, Usage};
use crate::parse::grammar::{GrammarError, ToolChoice};
use crate::parse::{schema, Family, ParseEvent, ParserOptions, ToolCallParser, ToolSpec, Verbatim};

/// One piece of clean output, or a change of the request's place in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenEvent {
    /// The request waits behind others (before any output).
    Queued,
    /// A request that was `Queued` got its turn.
    Dequeued,
    Text(String),
    Reasoning(String),
    /// The model declined (an upstream's `refusal`).
    Refusal(String),
    ToolCall(ToolCallOut),
}

/// A complete tool call, arguments checked and coerced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallOut {
    /// The call id (`call_...`) the client answers with.
    pub id: String,
    pub name: String,
    /// One JSON object, as text.
    pub arguments: String,
}

/// What [`Generation::next`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Event(GenEvent),
    Done(Outcome),
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub finish: FinishReason,
    pub usage: Usage,
    /// The engine reported no usage; the counts are estimates.
    pub usage_estimated: bool,
    pub timing: Timing,
    /// Names of the tool calls made, in order.
    pub tool_calls: Vec<String>,
    /// Tool calls recovered from the engine's text (not its native calls).
    pub repaired_calls: usize,
    /// The calls themselves, as sent (for the console's session timeline).
    pub calls: Vec<ToolCallOut>,
    /// The visible output text, cut at [`OUTCOME_TEXT_BYTES`].
    pub text: String,
}

/// Most bytes of output text an [`Outcome`] keeps.
pub const OUTCOME_TEXT_BYTES: usize = 2048;

/// Appends `piece` to `out`, never past `max` bytes (cut on a char boundary).
pub fn push_capped(out: &mut String, piece: &str, max: usize) {
    let room = max.saturating_sub(out.len());
    if room == 0 {
        return;
    }
    let mut end = room.min(piece.len());
    while !piece.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&piece[..end]);
}

/// When things happened, relative to the request's start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// Time spent in the engine's queue before generating (part of the
    /// time to first token); `None` when the engine does not tell.
    pub queue_wait: Option<Duration>,
    pub time_to_first_token: Option<Duration>,
    /// From the first output token to the end.
    pub decode: Duration,
    pub total: Duration,
}

/// Settings of one generation's output handling.
#[derive(Debug, Clone)]
pub struct OutputOptions {
    pub family: Family,
    /// Calls in the family's syntax are how the model calls (the engine
    /// streams raw model text), not a repair of an upstream that left them
    /// in its text. Calls found outside the syntax are repairs either way.
    pub family_syntax_is_native: bool,
    /// The request asked for JSON (`response_format`): with no tools, the
    /// output is read verbatim, markup-shaped strings in it included.
    pub json_output: bool,
    /// The request's tools (empty: tool-call markup is left as text).
    pub tools: Vec<ToolSpec>,
    /// Calls to tools outside `tools` are dropped instead of going out with
    /// a warning: the request's `allowed_tools` is a hard constraint (Open
    /// Responses), which an upstream that calls an unlisted tool anyway must
    /// not break.
    pub only_these_tools: bool,
    /// Prefix of generated call ids; random per request so ids never
    /// repeat within a conversation.
    pub id_prefix: String,
    /// A rough prompt size in tokens, used only when the engine reports no usage.
    pub prompt_estimate: u64,
}

impl OutputOptions {
    /// How `engine`'s output for `request` (its model, its
    /// `response_format`) is read, with the request's callable `tools` and
    /// a prompt of `prompt_chars` characters; one place for the three APIs.
    pub fn for_request(
        engine: &dyn crate::engine::Engine,
        request: &crate::engine::GenerateRequest,
        tools: Vec<ToolSpec>,
        prompt_chars: usize,
    ) -> Self {
        Self {
            family: engine.family(&request.model),
            family_syntax_is_native: engine.streams_raw_text(),
            json_output: crate::parse::grammar::asks_for_json(request.response_format.as_ref()),
            tools,
            only_these_tools: false,
            id_prefix: crate::ids::new_id("call_"),
            prompt_estimate: (prompt_chars / 4) as u64,
        }
    }
}

/// The tools the model may call: none under `tool_choice: "none"` (a call
/// written anyway stays visible text, as the client asked for no calls).
/// A `tool_choice` that is no choice, or names a function the request did
/// not offer, is an error (the request is refused before it starts).
pub fn callable_tools(
    tools: Vec<ToolSpec>,
    tool_choice: Option<&serde_json::Value>,
) -> Result<Vec<ToolSpec>, GrammarError> {
    match ToolChoice::from_wire(tool_choice)? {
        ToolChoice::None => Ok(Vec::new()),
        ToolChoice::Function(name) if !tools.iter().any(|t| t.name == name) => {
            Err(GrammarError::UnknownFunction(name))
        }
        _ => Ok(tools),
    }
}

/// See the module documentation.
pub struct Generation {
    stream: EngineStream,
    parser: Box<dyn ToolCallParser>,
    tools: Vec<ToolSpec>,
    /// See [`OutputOptions::only_these_tools`].
    only_these_tools: bool,
    id_prefix: String,
    /// Native calls being gathered, by the engine's index.
    native: BTreeMap<usize, PartialCall>,
    /// A parsed call between its start and end events.
    parsed: Option<PartialCall>,
    queue: VecDeque<Step>,
    started: Instant,
    first_token: Option<Instant>,
    queue_wait: Option<Duration>,
    /// A `Queued` was passed on and its `Dequeued` is still to come.
    queued: bool,
    output_pieces: u64,
    calls_made: usize,
    tool_names: Vec<String>,
    calls: Vec<ToolCallOut>,
    text: String,
    repaired: usize,
    family_syntax_is_native: bool,
    prompt_estimate: u64,
    done: bool,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

impl Generation {
    /// Wraps an engine stream; `started` is when the request arrived.
    pub fn new(stream: EngineStream, options: OutputOptions, started: Instant) -> Self {
        // Without tools there is nothing to call: only reasoning is split,
        // and tool-call markup stays visible text.
        let family = if options.tools.is_empty() {
            Family::Plain
        } else {
            options.family
        };
        let parser: Box<dyn ToolCallParser> = if options.json_output && options.tools.is_empty() {
            Box::new(Verbatim)
        } else {
            family.parser(ParserOptions {
                tools: options.tools.clone(),
                starts_in_reasoning: false,
                id_prefix: options.id_prefix.clone(),
                coerce_arguments: true,
            })
        };
        Self {
            stream,
            parser,
            tools: options.tools,
            only_these_tools: options.only_these_tools,
            id_prefix: options.id_prefix,
            native: BTreeMap::new(),
            parsed: None,
            queue: VecDeque::new(),
            started,
            first_token: None,
            queue_wait: None,
            queued: false,
            output_pieces: 0,
            calls_made: 0,
            tool_names: Vec::new(),
            calls: Vec::new(),
            text: String::new(),
            repaired: 0,
            family_syntax_is_native: options.family_syntax_is_native,
            prompt_estimate: options.prompt_estimate,
            done: false,
        }
    }

    /// When the first output token arrived.
    pub fn first_token(&self) -> Option<Instant> {
        self.first_token
    }

    /// The next piece of output, or the outcome (once). Cancel-safe: state
    /// changes only after the engine's `next` resolved.
    pub async fn next(&mut self) -> Result<Step, EngineError> {
        loop {
            if let Some(step) = self.queue.pop_front() {
                return Ok(step);
            }
            if self.done {
                return Err(EngineError::Failed("generation already finished".into()));
            }
            match self.stream.next().await {
                Some(Ok(event)) => self.engine_event(event),
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.finish(FinishReason::Stop, None),
            }
        }
    }

    fn engine_event(&mut self, event: EngineEvent) {
        match event {
            EngineEvent::Text(s) => {
                self.token();
                let events = self.parser.feed(&s);
                self.parse_events(events);
            }
            EngineEvent::Reasoning(s) => {
                self.token();
                self.queue.push_back(Step::Event(GenEvent::Reasoning(s)));
            }
            EngineEvent::Refusal(s) => {
                self.token();
                self.queue.push_back(Step::Event(GenEvent::Refusal(s)));
            }
            EngineEvent::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                self.token();
                // A new index means the earlier calls are complete.
                let earlier: Vec<usize> = self.native.range(..index).map(|(i, _)| *i).collect();
                for i in earlier {
                    if let Some(call) = self.native.remove(&i) {
                        self.emit_call(call, false);
                    }
                }
                let call = self.native.entry(index).or_default();
                if id.is_some() && call.id.is_none() {
                    call.id = id;
                }
                // Fragments of a name add up; llama-cpp-python repeats the
                // whole name in every chunk of the call instead.
                if let Some(n) = name.filter(|n| *n != call.name) {
                    call.name.push_str(&n);
                }
                call.arguments.push_str(&arguments);
            }
            EngineEvent::Finished { reason, usage } => self.finish(reason, usage),
            EngineEvent::Queued => {
                self.queued = true;
                self.queue.push_back(Step::Event(GenEvent::Queued));
            }
            EngineEvent::Admitted { queue_wait } => {
                self.queue_wait = Some(queue_wait);
                if std::mem::take(&mut self.queued) {
                    self.queue.push_back(Step::Event(GenEvent::Dequeued));
                }
            }
        }
    }

    fn token(&mut self) {
        self.output_pieces += 1;
        if self.first_token.is_none() {
            self.first_token = Some(Instant::now());
        }
    }

    fn parse_events(&mut self, events: Vec<ParseEvent>) {
        for e in events {
            match e {
                ParseEvent::Text(s) if !s.is_empty() => {
                    push_capped(&mut self.text, &s, OUTCOME_TEXT_BYTES);
                    self.queue.push_back(Step::Event(GenEvent::Text(s)))
                }
                ParseEvent::Reasoning(s) if !s.is_empty() => {
                    self.queue.push_back(Step::Event(GenEvent::Reasoning(s)))
                }
                ParseEvent::Text(_) | ParseEvent::Reasoning(_) => {}
                ParseEvent::ToolCallStart { id, name, .. } => {
                    self.parsed = Some(PartialCall {
                        id: Some(id),
                        name,
                        arguments: String::new(),
                    });
                }
                ParseEvent::ToolCallArgs { delta, .. } => {
                    if let Some(call) = self.parsed.as_mut() {
                        call.arguments.push_str(&delta);
                    }
                }
                ParseEvent::ToolCallEnd { repaired, .. } => {
                    if let Some(call) = self.parsed.take() {
                        self.emit_call(call, repaired || !self.family_syntax_is_native);
                    }
                }
            }
        }
    }

    fn emit_call(&mut self, call: PartialCall, repaired: bool) {
        if self.only_these_tools && !self.tools.iter().any(|t| t.name == call.name) {
            tracing::warn!(
                tool = call.name,
                "model called a tool outside the request's allowed_tools; the call is dropped"
            );
            return;
        }
        let arguments = self.check_arguments(&call.name, call.arguments);
        let id = call
            .id
            .unwrap_or_else(|| format!("{}n{}", self.id_prefix, self.calls_made));
        self.calls_made += 1;
        if repaired {
            self.repaired += 1;
        }
        self.tool_names.push(call.name.clone());
        let out = ToolCallOut {
            id,
            name: call.name,
            arguments,
        };
        self.calls.push(out.clone());
        self.queue.push_back(Step::Event(GenEvent::ToolCall(out)));
    }

    /// Coerces `arguments` to the tool's schema; problems are logged, the
    /// call still goes out (the agent's tool answers the error, which lets
    /// the model correct itself).
    fn check_arguments(&self, name: &str, arguments: String) -> String {
        let arguments = if arguments.trim().is_empty() {
            "{}".to_owned()
        } else {
            arguments
        };
        let Some(tool) = self.tools.iter().find(|t| t.name == name) else {
            tracing::warn!(tool = name, "model called a tool the request did not offer");
            return arguments;
        };
        match schema::check_arguments(&arguments, &tool.parameters) {
            Ok(checked) => checked,
            Err(issues) => {
                let issues: Vec<String> = issues.iter().map(ToString::to_string).collect();
                tracing::warn!(tool = name, ?issues, "tool call arguments break the schema");
                schema::coerce_arguments(&arguments, &tool.parameters).unwrap_or(arguments)
            }
        }
    }

    fn finish(&mut self, reason: FinishReason, usage: Option<Usage>) {
        let events = self.parser.finish();
        self.parse_events(events);
        if let Some(call) = self.parsed.take() {
            // A started call never ended: not reachable with the shipped
            // parsers (they emit calls whole), kept so nothing is lost.
            push_capped(&mut self.text, &call.arguments, OUTCOME_TEXT_BYTES);
            self.queue
                .push_back(Step::Event(GenEvent::Text(call.arguments)));
        }
        for (_, call) in std::mem::take(&mut self.native) {
            self.emit_call(call, false);
        }
        let finish = match reason {
            FinishReason::Stop if self.calls_made > 0 => FinishReason::ToolCalls,
            FinishReason::ToolCalls if self.calls_made == 0 => FinishReason::Stop,
            r => r,
        };
        let reported = usage.filter(|u| u.prompt_tokens > 0 || u.completion_tokens > 0);
        let usage_estimated = reported.is_none();
        let usage = reported.unwrap_or(Usage {
            prompt_tokens: self.prompt_estimate,
            cached_tokens: 0,
            completion_tokens: self.output_pieces,
            reasoning_tokens: 0,
        });
        let now = Instant::now();
        let timing = Timing {
            queue_wait: self.queue_wait,
            time_to_first_token: self.first_token.map(|t| t - self.started),
            decode: self.first_token.map_or(Duration::ZERO, |t| now - t),
            total: now - self.started,
        };
        self.queue.push_back(Step::Done(Outcome {
            finish,
            usage,
            usage_estimated,
            timing,
            tool_calls: std::mem::take(&mut self.tool_names),
            repaired_calls: self.repaired,
            calls: std::mem::take(&mut self.calls),
            text: std::mem::take(&mut self.text),
        }));
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use serde_json::json;

    fn gen(events: Vec<EngineEvent>, tools: Vec<ToolSpec>) -> Generation {
        gen_from(events, tools, false)
    }

    /// `raw`: as from the local engine, which streams the model's text.
    fn gen_from(events: Vec<EngineEvent>, tools: Vec<ToolSpec>, raw: bool) -> Generation {
        let s: EngineStream = Box::pin(stream::iter(events.into_iter().map(Ok)));
        Generation::new(
            s,
            OutputOptions {
                family: Family::Hermes,
                family_syntax_is_native: raw,
                json_output: false,
                tools,
                only_these_tools: false,
                id_prefix: "call_t".into(),
                prompt_estimate: 9,
            },
            Instant::now(),
        )
    }

    async fn run(mut g: Generation) -> (Vec<GenEvent>, Outcome) {
        let mut out = Vec::new();
        loop {
            match g.next().await.unwrap() {
                Step::Event(e) => out.push(e),
                Step::Done(o) => return (out, o),
            }
        }
    }

    fn weather() -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: "get_weather".into(),
            parameters: json!({"type":"object","properties":{"days":{"type":"integer"}}}),
        }]
    }

    #[tokio::test]
    async fn tool_call_in_content_is_repaired_and_coerced() {
        let text = "<think>plan</think>Sure.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"days\": \"3\"}}\n</tool_call>";
        let events: Vec<EngineEvent> = text
            .as_bytes()
            .chunks(5)
            .map(|c| EngineEvent::Text(String::from_utf8_lossy(c).into_owned()))
            .chain([EngineEvent::Finished {
                reason: FinishReason::Stop,
                usage: None,
            }])
            .collect();
        let (out, o) = run(gen(events, weather())).await;
        let reasoning: String = out
            .iter()
            .filter_map(|e| match e {
                GenEvent::Reasoning(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(reasoning, "plan");
        let calls: Vec<&ToolCallOut> = out
            .iter()
            .filter_map(|e| match e {
                GenEvent::ToolCall(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, r#"{"days": 3}"#);
        assert!(calls[0].id.starts_with("call_t"));
        assert_eq!(o.finish, FinishReason::ToolCalls);
        assert_eq!(o.repaired_calls, 1);
        assert!(o.usage_estimated);
        assert_eq!(o.usage.prompt_tokens, 9);
    }

    /// JSON asked for by `response_format` is data: a `<think>` or
    /// `<tool_call>` inside one of its strings reaches the client byte for
    /// byte (without the format, the same text is read as markup).
    #[tokio::test]
    async fn json_output_is_read_verbatim() {
        let text = r#"{"note": "<think>kept</think> <tool_call>literal</tool_call>"}"#;
        for json_output in [true, false] {
            let events: Vec<EngineEvent> = text
                .as_bytes()
                .chunks(7)
                .map(|c| EngineEvent::Text(String::from_utf8_lossy(c).into_owned()))
                .chain([EngineEvent::Finished {
                    reason: FinishReason::Stop,
                    usage: None,
                }])
                .collect();
            let s: EngineStream = Box::pin(stream::iter(events.into_iter().map(Ok)));
            let g = Generation::new(
                s,
                OutputOptions {
                    family: Family::Hermes,
                    family_syntax_is_native: true,
                    json_output,
                    tools: Vec::new(),
                    only_these_tools: false,
                    id_prefix: "call_t".into(),
                    prompt_estimate: 1,
                },
                Instant::now(),
            );
            let (out, _) = run(g).await;
            let visible: String = out
                .iter()
                .filter_map(|e| match e {
                    GenEvent::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(visible == text, json_output, "{visible}");
        }
    }

    /// The local engine's model writes calls in its family's syntax: that
    /// is how it calls, not a repair. A fenced JSON call is one either way.
    #[tokio::test]
    async fn only_calls_outside_the_syntax_count_as_repaired_on_raw_text() {
        let hermes = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
        let fenced = "```json\n{\"name\": \"get_weather\", \"arguments\": {}}\n```";
        for (text, raw, repaired) in [
            (hermes, true, 0),
            (fenced, true, 1),
            (hermes, false, 1),
            (fenced, false, 1),
        ] {
            let events = vec![
                EngineEvent::Text(text.into()),
                EngineEvent::Finished {
                    reason: FinishReason::Stop,
                    usage: None,
                },
            ];
            let (_, o) = run(gen_from(events, weather(), raw)).await;
            assert_eq!(o.tool_calls, ["get_weather"], "{text}");
            assert_eq!(o.repaired_calls, repaired, "{text} raw={raw}");
        }
    }

    #[tokio::test]
    async fn native_calls_are_gathered_whole_in_order() {
        let d = |index, id: Option<&str>, name: Option<&str>, a: &str| EngineEvent::ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: a.into(),
        };
        let events = vec![
            d(0, Some("a"), Some("get_weather"), "{\"days\":"),
            // llama-cpp-python sends the whole name again with each piece.
            d(0, None, Some("get_weather"), "\"2\"}"),
            d(1, Some("b"), Some("other"), ""),
            EngineEvent::Finished {
                reason: FinishReason::ToolCalls,
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 4,
                    ..Usage::default()
                }),
            },
        ];
        let (out, o) = run(gen(events, weather())).await;
        assert_eq!(
            out,
            vec![
                GenEvent::ToolCall(ToolCallOut {
                    id: "a".into(),
                    name: "get_weather".into(),
                    arguments: "{\"days\": 2}".into()
                }),
                GenEvent::ToolCall(ToolCallOut {
                    id: "b".into(),
                    name: "other".into(),
                    arguments: "{}".into()
                }),
            ]
        );
        assert_eq!(o.tool_calls, ["get_weather", "other"]);
        assert_eq!(o.repaired_calls, 0);
        assert!(!o.usage_estimated);
    }

    #[tokio::test]
    async fn broken_call_comes_back_as_text_and_without_tools_markup_stays() {
        let text = "a<tool_call>{\"name\": oops";
        let (out, o) = run(gen(
            vec![
                EngineEvent::Text(text.into()),
                EngineEvent::Finished {
                    reason: FinishReason::Stop,
                    usage: None,
                },
            ],
            weather(),
        ))
        .await;
        let all: String = out
            .iter()
            .map(|e| match e {
                GenEvent::Text(s) => s.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(all, text);
        assert_eq!(o.finish, FinishReason::Stop);

        let text = "<tool_call>{\"name\":\"x\",\"arguments\":{}}</tool_call>";
        let (out, _) = run(gen(vec![EngineEvent::Text(text.into())], vec![])).await;
        assert_eq!(out, vec![GenEvent::Text(text.into())]);
    }
}
