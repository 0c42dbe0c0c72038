//! Incremental tool-call and reasoning parsers, one per model family.
//!
//! A model writes tool calls and reasoning into its text output in its own
//! syntax. A [`ToolCallParser`] is fed that output chunk by chunk (token by
//! token) and answers [`ParseEvent`]s: visible text, reasoning, and tool
//! calls with JSON arguments. [`Family`] picks the parser from a family
//! name, a model name or the chat template.
//!
//! Rules every parser keeps:
//! - Chunk boundaries never matter: a marker split across chunks is still
//!   recognised, and any chunking of the same output gives the same events
//!   once merged ([`merge_events`]).
//! - Only bytes that could still begin a marker are held back; text and
//!   reasoning stream out as they come.
//! - A tool call is emitted whole (start, arguments, end) once its end is
//!   seen. A call that cannot be parsed, or is cut off, comes back as text,
//!   markers included. Nothing panics and no text is lost; only whitespace
//!   that pads a marker is dropped.
//! - Arguments are the model's own JSON text (key order kept); when the
//!   tool's JSON schema is known ([`ParserOptions::tools`]), values of the
//!   wrong type are coerced ([`schema::coerce_arguments`]).
//!
//! The engine must decode with special tokens kept (`<|channel|>`,
//! `[TOOL_CALLS]`, ...): they are the markers.

use serde_json::Value;

pub mod deepseek;
pub mod glm;
pub mod grammar;
pub mod harmony;
pub mod hermes;
mod json_call;
pub mod kimi;
pub mod llama;
pub mod mistral;
pub mod qwen3_coder;
pub mod repair;
pub mod scan;
pub mod schema;
mod tagged;

/// One piece of parsed model output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseEvent {
    /// Visible answer text.
    Text(String),
    /// Reasoning ("thinking") text.
    Reasoning(String),
    /// A tool call begins. `index` counts calls of one output from 0; `id`
    /// is the model's own call id where its format has one, otherwise
    /// [`ParserOptions::id_prefix`] followed by the index.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A piece of the call's arguments (JSON text); the pieces of one call
    /// concatenate to one JSON object.
    ToolCallArgs { index: usize, delta: String },
    /// The call's arguments are complete. `repaired`: the call was not in
    /// the family's syntax but found by [`repair::Repairing`] in what would
    /// have been text (a fenced or bare JSON object), so the console can
    /// tell a model that needed help from one that did not.
    ToolCallEnd { index: usize, repaired: bool },
}

/// An incremental parser for one model output. Feed every chunk, then call
/// `finish` once.
pub trait ToolCallParser: Send {
    /// Parses the next chunk of output.
    fn feed(&mut self, chunk: &str) -> Vec<ParseEvent>;
    /// End of output: flushes everything held back (an unfinished call
    /// comes back as text).
    fn finish(&mut self) -> Vec<ParseEvent>;
}

/// A tool the request offered: its name and JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    /// The `parameters` JSON schema (`Value::Null` when none was given).
    pub parameters: Value,
}

/// Output that is data, not markup (JSON under a `response_format`):
/// every byte is visible text.
pub struct Verbatim;

impl ToolCallParser for Verbatim {
    fn feed(&mut self, chunk: &str) -> Vec<ParseEvent> {
        if chunk.is_empty() {
            Vec::new()
        } else {
            vec![ParseEvent::Text(chunk.to_owned())]
        }
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        Vec::new()
    }
}

/// Per-request settings of a parser.
#[derive(Debug, Clone)]
pub struct ParserOptions {
    /// The request's tools; used to type XML-style parameters and to coerce
    /// argument values to their schema.
    pub tools: Vec<ToolSpec>,
    /// The rendered prompt already opened a reasoning block (e.g. it ends in
    /// `<think>\n`): output starts as reasoning until the closing tag. See
    /// [`Family::prompt_opens_reasoning`].
    pub starts_in_reasoning: bool,
    /// Prefix of generated call ids (`call_` gives `call_0`, `call_1`, ...).
    /// Use a per-request random prefix so ids are unique in a conversation.
    pub id_prefix: String,
    /// Coerce argument values to the tool's schema (`"5"` → `5`).
    pub coerce_arguments: bool,
}

impl Default for ParserOptions {
    fn default() -> Self {
        Self {
            tools: Vec::new(),
            starts_in_reasoning: false,
            id_prefix: "call_".into(),
            coerce_arguments: true,
        }
    }
}

impl ParserOptions {
    /// The JSON schema of `tool`'s parameter `param`, when known.
    pub fn param_schema(&self, tool: &str, param: &str) -> Option<&Value> {
        self.tools
            .iter()
            .find(|t| t.name == tool)?
            .parameters
            .get("properties")?
            .get(param)
    }
}

/// A model family's output syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Hermes, Qwen2.5, Qwen3, QwQ: `<tool_call>{"name":..,"arguments":..}</tool_call>`, `<think>`.
    Hermes,
    /// Qwen3-Coder (and Qwen3.5): `<tool_call><function=NAME><parameter=P>V</parameter></function></tool_call>`.
    Qwen3Coder,
    /// GLM-4.5/4.6/4.7: `<tool_call>NAME<arg_key>K</arg_key><arg_value>V</arg_value></tool_call>`, `<think>`.
    Glm45,
    /// gpt-oss harmony channels.
    Harmony,
    /// Kimi-K2: `<|tool_calls_section_begin|>...`, `<think>`.
    KimiK2,
    /// Mistral `[TOOL_CALLS]` (array or `NAME[ARGS]{..}` form), `[THINK]`.
    Mistral,
    /// Llama 3.x JSON calls `{"name":..,"parameters":..}`, optionally after `<|python_tag|>`.
    Llama3Json,
    /// DeepSeek V3/V3.1/R1: `<｜tool▁calls▁begin｜>...`, `<think>`.
    DeepSeek,
    /// No tool-call syntax; `<think>` reasoning only.
    Plain,
}

impl Family {
    pub const ALL: [Family; 9] = [
        Family::Hermes,
        Family::Qwen3Coder,
        Family::Glm45,
        Family::Harmony,
        Family::KimiK2,
        Family::Mistral,
        Family::Llama3Json,
        Family::DeepSeek,
        Family::Plain,
    ];

    /// The family's configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Hermes => "hermes",
            Family::Qwen3Coder => "qwen3_coder",
            Family::Glm45 => "glm45",
            Family::Harmony => "harmony",
            Family::KimiK2 => "kimi_k2",
            Family::Mistral => "mistral",
            Family::Llama3Json => "llama3_json",
            Family::DeepSeek => "deepseek",
            Family::Plain => "plain",
        }
    }

    /// A family by configuration name (also accepts a few common aliases,
    /// any case, `-` or `_`).
    pub fn from_name(name: &str) -> Option<Family> {
        let n = name.trim().to_ascii_lowercase().replace('-', "_");
        Some(match n.as_str() {
            "hermes" | "qwen" | "qwen2_5" | "qwen3" => Family::Hermes,
            "qwen3_coder" | "qwen3_xml" => Family::Qwen3Coder,
            "glm45" | "glm4_5" | "glm4_moe" | "glm" => Family::Glm45,
            "harmony" | "gpt_oss" | "openai" => Family::Harmony,
            "kimi_k2" | "kimi" => Family::KimiK2,
            "mistral" => Family::Mistral,
            "llama3_json" | "llama3" | "llama" => Family::Llama3Json,
            "deepseek" | "deepseek_v3" | "deepseek_r1" | "deepseek_v31" => Family::DeepSeek,
            "plain" | "none" => Family::Plain,
            _ => return None,
        })
    }

    /// The family whose markers a chat template uses, most specific first.
    pub fn from_chat_template(template: &str) -> Option<Family> {
        let has = |s: &str| template.contains(s);
        Some(if has("<|channel|>") && has("<|message|>") {
            Family::Harmony
        } else if has("<|tool_calls_section_begin|>") || has("<|tool_call_begin|>") {
            Family::KimiK2
        } else if has("tool▁calls▁begin") || has("tool▁call▁begin") {
            Family::DeepSeek
        } else if has("<arg_key>") {
            Family::Glm45
        } else if has("<function=") && has("<parameter=") {
            Family::Qwen3Coder
        } else if has("<tool_call>") {
            Family::Hermes
        } else if has("[TOOL_CALLS]") {
            Family::Mistral
        } else if has("<|python_tag|>") || (has("<|start_header_id|>") && has("parameters")) {
            Family::Llama3Json
        } else {
            return None;
        })
    }

    /// The family a model name suggests (an Ollama, LM Studio or Hugging
    /// Face id; any case).
    pub fn from_model_name(model: &str) -> Option<Family> {
        let m = model.to_ascii_lowercase();
        let has = |s: &str| m.contains(s);
        Some(if has("gpt-oss") || has("gpt_oss") || has("gptoss") {
            Family::Harmony
        } else if has("kimi") {
            Family::KimiK2
        } else if has("deepseek") {
            Family::DeepSeek
        } else if has("glm-4") || has("glm4") {
            Family::Glm45
        } else if has("qwen3-coder") || has("qwen3_coder") || has("qwen3coder") || has("qwen3.5") {
            Family::Qwen3Coder
        } else if has("qwen") || has("qwq") || has("hermes") {
            Family::Hermes
        } else if [
            "mistral",
            "mixtral",
            "magistral",
            "devstral",
            "ministral",
            "codestral",
        ]
        .iter()
        .any(|s| has(s))
        {
            Family::Mistral
        } else if has("llama-3") || has("llama3") || has("llama_3") {
            Family::Llama3Json
        } else {
            return None;
        })
    }

    /// The chat template decides when present; otherwise the model name;
    /// otherwise [`Family::Plain`].
    pub fn detect(model: &str, chat_template: Option<&str>) -> Family {
        chat_template
            .and_then(Family::from_chat_template)
            .or_else(|| Family::from_model_name(model))
            .unwrap_or(Family::Plain)
    }

    /// The family's reasoning tags (harmony uses channels instead; Llama none).
    pub fn reasoning_tags(self) -> Option<(&'static str, &'static str)> {
        match self {
            Family::Mistral => Some(("[THINK]", "[/THINK]")),
            Family::Harmony | Family::Llama3Json => None,
            _ => Some(("<think>", "</think>")),
        }
    }

    /// Whether a rendered prompt leaves a reasoning block open for the
    /// model (it ends with the opening tag, as Qwen3-Thinking, DeepSeek-R1
    /// and GLM templates do), so output starts as reasoning.
    pub fn prompt_opens_reasoning(self, rendered_prompt: &str) -> bool {
        self.reasoning_tags()
            .is_some_and(|(open, _)| rendered_prompt.trim_end().ends_with(open))
    }

    /// The family's call syntax as grammar rules (see [`grammar`]).
    pub(crate) fn grammar(self, tools: &[ToolSpec]) -> grammar::FamilyGrammar {
        match self {
            Family::Hermes => hermes::grammar(tools),
            Family::Qwen3Coder => qwen3_coder::grammar(tools),
            Family::Glm45 => glm::grammar(tools),
            Family::KimiK2 => kimi::grammar(tools),
            Family::DeepSeek => deepseek::grammar(tools),
            Family::Harmony => harmony::grammar(tools),
            Family::Mistral => mistral::grammar(tools),
            Family::Llama3Json => llama::grammar(tools),
            Family::Plain => grammar::json_lines_grammar(tools),
        }
    }

    /// A new parser for one output. With tools declared, calls written as
    /// bare or fenced JSON are read too ([`repair::Repairing`]).
    pub fn parser(self, options: ParserOptions) -> Box<dyn ToolCallParser> {
        let inner = self.syntax_parser(options.clone());
        if options.tools.is_empty() {
            inner
        } else {
            Box::new(repair::Repairing::new(inner, options))
        }
    }

    /// The parser of the family's own syntax alone.
    fn syntax_parser(self, options: ParserOptions) -> Box<dyn ToolCallParser> {
        match self {
            Family::Hermes => Box::new(tagged::TaggedParser::new(hermes::syntax(), options)),
            Family::Qwen3Coder => {
                Box::new(tagged::TaggedParser::new(qwen3_coder::syntax(), options))
            }
            Family::Glm45 => Box::new(tagged::TaggedParser::new(glm::syntax(), options)),
            Family::KimiK2 => Box::new(tagged::TaggedParser::new(kimi::syntax(), options)),
            Family::DeepSeek => Box::new(tagged::TaggedParser::new(deepseek::syntax(), options)),
            Family::Plain => Box::new(tagged::TaggedParser::new(tagged::plain_syntax(), options)),
            Family::Harmony => Box::new(harmony::HarmonyParser::new(options)),
            Family::Mistral => Box::new(mistral::MistralParser::new(options)),
            Family::Llama3Json => Box::new(llama::LlamaParser::new(options)),
        }
    }
}

/// Joins adjacent `Text`, adjacent `Reasoning` and adjacent `ToolCallArgs`
/// of one call, and drops empty ones: two chunkings of the same output give
/// equal merged events.
pub fn merge_events(events: impl IntoIterator<Item = ParseEvent>) -> Vec<ParseEvent> {
    let mut out: Vec<ParseEvent> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (_, ParseEvent::Text(s) | ParseEvent::Reasoning(s)) if s.is_empty() => {}
            (Some(ParseEvent::Text(a)), ParseEvent::Text(b)) => a.push_str(&b),
            (Some(ParseEvent::Reasoning(a)), ParseEvent::Reasoning(b)) => a.push_str(&b),
            (
                Some(ParseEvent::ToolCallArgs { index: i, delta: a }),
                ParseEvent::ToolCallArgs { index: j, delta: b },
            ) if *i == j => a.push_str(&b),
            (_, e) => out.push(e),
        }
    }
    out
}

/// Feeds a whole output at once (non-streaming responses, tests).
pub fn parse_complete(parser: &mut dyn ToolCallParser, output: &str) -> Vec<ParseEvent> {
    let mut events = parser.feed(output);
    events.extend(parser.finish());
    merge_events(events)
}

/// A tool call recognised by a family's syntax, before numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedCall {
    pub id: Option<String>,
    pub name: String,
    /// One JSON object, as text.
    pub arguments: String,
}

/// Collects the events of one `feed`/`finish` and numbers tool calls.
#[derive(Debug)]
pub(crate) struct Emitter {
    pub options: ParserOptions,
    next_index: usize,
    events: Vec<ParseEvent>,
    /// Generated ids are nine alphanumerics (Mistral).
    alnum9_ids: bool,
}

impl Emitter {
    pub fn new(options: ParserOptions) -> Self {
        Self {
            options,
            next_index: 0,
            events: Vec::new(),
            alnum9_ids: false,
        }
    }

    /// Numbers the next call `index` (a wrapper numbering calls of
    /// several emitters).
    pub fn skip_to(&mut self, index: usize) {
        self.next_index = index;
    }

    pub fn with_alnum9_ids(mut self) -> Self {
        self.alnum9_ids = true;
        self
    }

    pub fn text(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(ParseEvent::Text(t)) = self.events.last_mut() {
            t.push_str(s);
        } else {
            self.events.push(ParseEvent::Text(s.to_owned()));
        }
    }

    pub fn reasoning(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        if let Some(ParseEvent::Reasoning(t)) = self.events.last_mut() {
            t.push_str(s);
        } else {
            self.events.push(ParseEvent::Reasoning(s.to_owned()));
        }
    }

    pub fn call(&mut self, call: ParsedCall) {
        let index = self.next_index;
        self.next_index += 1;
        let mut arguments = call.arguments;
        if self.options.coerce_arguments {
            if let Some(tool) = self.options.tools.iter().find(|t| t.name == call.name) {
                if let Some(coerced) = schema::coerce_arguments(&arguments, &tool.parameters) {
                    arguments = coerced;
                }
            }
        }
        let id = call.id.unwrap_or_else(|| {
            if self.alnum9_ids {
                mistral::alnum9_id(&self.options.id_prefix, index)
            } else {
                format!("{}{index}", self.options.id_prefix)
            }
        });
        self.events.push(ParseEvent::ToolCallStart {
            index,
            id,
            name: call.name,
        });
        self.events.push(ParseEvent::ToolCallArgs {
            index,
            delta: arguments,
        });
        self.events.push(ParseEvent::ToolCallEnd {
            index,
            repaired: false,
        });
    }

    pub fn drain(&mut self) -> Vec<ParseEvent> {
        std::mem::take(&mut self.events)
    }
}

/// `text` when it is one JSON object (the model's own text, trimmed).
pub(crate) fn json_object(text: &str) -> Option<String> {
    let t = text.trim();
    (t.starts_with('{') && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok())
        .then(|| t.to_owned())
}

/// Tool names: no whitespace or markup, at most 256 bytes.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '/'))
}

#[cfg(test)]
mod tests;
