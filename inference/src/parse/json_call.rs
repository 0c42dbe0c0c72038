//! A tool call written as one JSON object, the body most families share:
//! Hermes and Qwen's `<tool_call>` (the Qwen3-Coder and GLM forms fall
//! back to it), Llama's and Mistral's lists, and the bare or fenced JSON
//! [`super::repair`] reads. It lives apart from every family so that none
//! of them depends on another for it.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{json_object, valid_name, ParsedCall};

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
fn arguments_text(raw: Option<&RawValue>) -> Option<String> {
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
