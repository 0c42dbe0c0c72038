//! Responses input items → Chat Completions messages.
//!
//! Agents replay the whole conversation as items: messages, the model's
//! `function_call`s, the tools' `function_call_output`s and the model's
//! `reasoning`. Consecutive reasoning / assistant text / function calls of
//! one model turn become one assistant message (reasoning in
//! `reasoning_content`, calls in `tool_calls`), each output a `tool`
//! message, so chat templates see the conversation as the model wrote it.

use serde_json::{json, Value};

use crate::engine::{ChatMessage, Content, FunctionCall, Role, ToolCall};
use crate::server::ApiError;

/// One input item, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Message {
        role: Role,
        content: Content,
    },
    FunctionCall {
        call_id: String,
        name: String,
        arguments: String,
    },
    FunctionCallOutput {
        call_id: String,
        output: Content,
    },
    Reasoning {
        text: String,
    },
}

/// Checks one item; `at` names it in errors (`input[3]`).
pub fn parse_item(item: &Value, at: &str) -> Result<Item, ApiError> {
    let field = |f: &str| format!("{at}.{f}");
    let obj = item
        .as_object()
        .ok_or_else(|| ApiError::invalid_param(at, "An input item must be an object."))?;
    let str_field = |f: &str| -> Result<String, ApiError> {
        match obj.get(f) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ApiError::invalid_param(
                field(f),
                format!("'{f}' must be a string."),
            )),
        }
    };
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) if obj.contains_key("role") => "message",
        _ => {
            return Err(ApiError::invalid_param(
                field("type"),
                "'type' must be a string.",
            ))
        }
    };
    match kind {
        "message" => {
            let role = match obj.get("role").and_then(Value::as_str) {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                Some("developer") => Role::Developer,
                _ => {
                    return Err(ApiError::invalid_param(
                        field("role"),
                        "'role' must be one of 'user', 'assistant', 'system', 'developer'.",
                    ))
                }
            };
            let content = content(obj.get("content"), &field("content"))?;
            Ok(Item::Message { role, content })
        }
        "function_call" => {
            let arguments = match obj.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(v @ Value::Object(_)) => v.to_string(),
                _ => {
                    return Err(ApiError::invalid_param(
                        field("arguments"),
                        "'arguments' must be a string of JSON.",
                    ))
                }
            };
            Ok(Item::FunctionCall {
                call_id: str_field("call_id")?,
                name: str_field("name")?,
                arguments,
            })
        }
        "function_call_output" => Ok(Item::FunctionCallOutput {
            call_id: str_field("call_id")?,
            output: content(obj.get("output"), &field("output"))?,
        }),
        "reasoning" => {
            let mut texts = Vec::new();
            for key in ["summary", "content"] {
                if let Some(parts) = obj.get(key).and_then(Value::as_array) {
                    texts.extend(
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .map(str::to_owned),
                    );
                }
            }
            Ok(Item::Reasoning {
                text: texts.join("\n\n"),
            })
        }
        other => Err(ApiError::invalid_param(
            field("type"),
            format!("Unsupported input item type '{other}'."),
        )),
    }
}

/// Message content: a string, or parts. Text-only parts become one string
/// (what every chat template renders); images stay parts.
fn content(v: Option<&Value>, at: &str) -> Result<Content, ApiError> {
    let parts = match v {
        Some(Value::String(s)) => return Ok(Content::Text(s.clone())),
        Some(Value::Array(parts)) => parts,
        None | Some(Value::Null) => return Ok(Content::Text(String::new())),
        Some(_) => {
            return Err(ApiError::invalid_param(
                at,
                "Content must be a string or an array of content parts.",
            ))
        }
    };
    let mut out = Vec::new();
    let mut text_only = true;
    for (i, p) in parts.iter().enumerate() {
        let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
        let text = p.get("text").and_then(Value::as_str);
        match (kind, text) {
            (
                "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text",
                Some(t),
            ) => out.push(json!({"type": "text", "text": t})),
            ("refusal", _) => out.push(json!({
                "type": "text",
                "text": p.get("refusal").and_then(Value::as_str).unwrap_or(""),
            })),
            ("input_image", _) => {
                let url = p.get("image_url").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid_param(
                        format!("{at}[{i}].image_url"),
                        "Only images given by 'image_url' (a URL or data URL) are supported.",
                    )
                })?;
                text_only = false;
                out.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            _ => {
                return Err(ApiError::invalid_param(
                    format!("{at}[{i}].type"),
                    format!("Unsupported content part type '{kind}'."),
                ))
            }
        }
    }
    if text_only {
        let texts: Vec<&str> = out
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        Ok(Content::Text(texts.join("\n")))
    } else {
        Ok(Content::Parts(out))
    }
}

/// The chat messages of a conversation: `instructions` first (as the
/// system message), then the items.
pub fn to_messages(instructions: &[Item], items: &[Item]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::new();
    let mut turn: Option<ChatMessage> = None;
    let flush = |turn: &mut Option<ChatMessage>, out: &mut Vec<ChatMessage>| {
        if let Some(m) = turn.take() {
            out.push(m);
        }
    };
    for item in instructions.iter().chain(items) {
        match item {
            Item::Message { role, content } if *role == Role::Assistant => {
                let text = content.text();
                let t = turn.get_or_insert_with(assistant);
                if !t.tool_calls.is_empty() {
                    flush(&mut turn, &mut out);
                    turn = Some(assistant());
                }
                if let Some(t) = turn.as_mut() {
                    append(&mut t.content, &text);
                }
            }
            Item::Message { role, content } => {
                flush(&mut turn, &mut out);
                let role = if *role == Role::Developer {
                    Role::System
                } else {
                    *role
                };
                // Templates want one system message, first: leading ones merge.
                if role == Role::System && out.iter().all(|m| m.role == Role::System) {
                    if let Some(first) = out.first_mut() {
                        append(&mut first.content, &format!("\n\n{}", content.text()));
                        continue;
                    }
                }
                out.push(ChatMessage {
                    role,
                    content: Some(content.clone()),
                    ..ChatMessage::default()
                });
            }
            Item::Reasoning { text } => {
                let starts_new = turn
                    .as_ref()
                    .is_some_and(|t| t.content.is_some() || !t.tool_calls.is_empty());
                if starts_new {
                    flush(&mut turn, &mut out);
                }
                let t = turn.get_or_insert_with(assistant);
                match &mut t.reasoning_content {
                    Some(r) => {
                        r.push_str("\n\n");
                        r.push_str(text);
                    }
                    None => t.reasoning_content = Some(text.clone()),
                }
            }
            Item::FunctionCall {
                call_id,
                name,
                arguments,
            } => {
                let t = turn.get_or_insert_with(assistant);
                t.tool_calls.push(ToolCall {
                    id: call_id.clone(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.clone(),
                        arguments: arguments.clone(),
                    },
                });
            }
            Item::FunctionCallOutput { call_id, output } => {
                flush(&mut turn, &mut out);
                out.push(ChatMessage {
                    role: Role::Tool,
                    content: Some(output.clone()),
                    tool_call_id: Some(call_id.clone()),
                    ..ChatMessage::default()
                });
            }
        }
    }
    flush(&mut turn, &mut out);
    out
}

fn assistant() -> ChatMessage {
    ChatMessage {
        role: Role::Assistant,
        ..ChatMessage::default()
    }
}

fn append(content: &mut Option<Content>, text: &str) {
    match content {
        Some(Content::Text(s)) => s.push_str(text),
        _ => *content = Some(Content::Text(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(v: Value) -> Vec<Item> {
        v.as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, it)| parse_item(it, &format!("input[{i}]")).unwrap())
            .collect()
    }

    #[test]
    fn a_tool_loop_becomes_assistant_tool_calls_and_tool_messages() {
        let instructions = items(json!([{"role": "system", "content": "Be brief."}]));
        let conv = items(json!([
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "need tool"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny."}]},
            {"role": "user", "content": "Thanks"}
        ]));
        let m = to_messages(&instructions, &conv);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            v,
            json!([
                {"role": "system", "content": "Be brief.\n\nUse tools."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "reasoning_content": "need tool", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Oslo\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ]},
                {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
                {"role": "tool", "content": "rain", "tool_call_id": "c2"},
                {"role": "assistant", "content": "Sunny."},
                {"role": "user", "content": "Thanks"}
            ])
        );
    }

    #[test]
    fn bad_items_name_the_field() {
        let e = parse_item(
            &json!({"type": "function_call", "name": "f", "arguments": "{}"}),
            "input[2]",
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[2].call_id"));
        let e = parse_item(&json!({"role": "robot", "content": "x"}), "input[0]").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].role"));
        let e = parse_item(&json!({"type": "web_search_call"}), "input[1]").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[1].type"));
        let e = parse_item(&json!({"role": "user", "content": 5}), "input[0]").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content"));
        assert!(parse_item(&json!(7), "input[0]").is_err());
    }
}
