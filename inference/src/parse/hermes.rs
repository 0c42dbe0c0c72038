//! Hermes / Qwen2.5 / Qwen3 / QwQ:
//!
//! ```text
//! <think>
//! reasoning
//! </think>
//!
//! text<tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! The JSON object may say `parameters` instead of `arguments`, and
//! `arguments` may be a JSON string holding the object. A body in the
//! Qwen3-Coder XML form is accepted too (Qwen models mix them).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::tagged::TagSyntax;
use super::{json_object, qwen3_coder, valid_name, ParsedCall};

pub(crate) fn syntax() -> TagSyntax {
    TagSyntax {
        think: Some(("<think>", "</think>")),
        section_begin: &[],
        section_end: &[],
        call_begin: &["<tool_call>"],
        call_end: &["</tool_call>"],
        body: |body, options| {
            parse_json_call(body).or_else(|| qwen3_coder::parse_function(body, options))
        },
    }
}

#[derive(Deserialize)]
struct JsonCall {
    name: String,
    #[serde(default)]
    arguments: Option<Box<RawValue>>,
    #[serde(default)]
    parameters: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct Wrapped {
    function: JsonCall,
    #[serde(default)]
    id: Option<String>,
}

/// `{"name": .., "arguments"|"parameters": {..}, "id"?: ..}`, or the
/// OpenAI shape `{"type": "function", "function": {..}}`.
pub(crate) fn parse_json_call(text: &str) -> Option<ParsedCall> {
    let text = text.trim();
    if !text.starts_with('{') {
        return None;
    }
    let call = match serde_json::from_str::<Wrapped>(text) {
        Ok(w) => JsonCall {
            id: w.id.or(w.function.id),
            ..w.function
        },
        Err(_) => serde_json::from_str::<JsonCall>(text).ok()?,
    };
    if !valid_name(call.name.trim()) {
        return None;
    }
    let arguments = arguments_text(call.arguments.or(call.parameters).as_deref())?;
    Some(ParsedCall {
        id: call.id.filter(|id| !id.is_empty()),
        name: call.name.trim().to_owned(),
        arguments,
    })
}

/// A call's arguments as one JSON object: absent or `null` → `{}`; an
/// object → its text; a string holding an object → that object.
pub(crate) fn arguments_text(raw: Option<&RawValue>) -> Option<String> {
    let Some(raw) = raw else {
        return Some("{}".into());
    };
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'{') => Some(text.to_owned()),
        Some(b'"') => {
            let inner: String = serde_json::from_str(text).ok()?;
            if inner.trim().is_empty() {
                Some("{}".into())
            } else {
                json_object(&inner)
            }
        }
        _ if text == "null" => Some("{}".into()),
        _ => None,
    }
}

/// `<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>`, one per
/// line; also the bare and fenced JSON Qwen models write (read by
/// [`super::repair`]).
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{json_call_rule, json_line_triggers, FamilyGrammar};
    let mut triggers = vec![("<tool_call>".to_owned(), false, "calls".to_owned())];
    triggers.extend(json_line_triggers());
    FamilyGrammar {
        rules: format!(
            "call: \"<tool_call>\" \"\\n\"? json_call \"\\n\"? \"</tool_call>\"\n\
             calls: call (\"\\n\" call)*\n\
             json_call: {}\n",
            json_call_rule(tools, "arguments")
        ),
        triggers,
    }
}
