//! Responses input items → Chat Completions messages.
//!
//! Agents replay the whole conversation as items: messages, the model's
//! `function_call`s, the tools' `function_call_output`s and the model's
//! `reasoning`. Consecutive reasoning / assistant text / function calls of
//! one model turn become one assistant message (reasoning in
//! `reasoning_content`, calls in `tool_calls`), each output a `tool`
//! message, so chat templates see the conversation as the model wrote it.
//! A `compaction` item (what `POST /v1/responses/compact` made) becomes a
//! user message holding the summary it carries.
//!
//! Images and files go on as Chat Completions parts to a model that reads
//! them (an upstream decides for itself); for one that reads text only they
//! are refused here, by their path in the request, rather than dropped by a
//! chat template so that the model answers as if it had seen them.

use serde_json::{json, Map, Value};

use super::compaction::{self, SUMMARY_PREFIX};
use crate::engine::{ChatMessage, Content, FunctionCall, Reads, Role, ToolCall};
use crate::server::ApiError;

/// The served model and what it reads besides text: what content parts
/// are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub model: &'a str,
    pub reads: Reads,
}

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
    /// The summary a compaction item carries.
    Compaction {
        summary: String,
    },
}

/// The id an `item_reference` names: `{"type": "item_reference", "id"}`,
/// or (the spec's `type` is optional) an object with an `id` and neither
/// `type` nor `role`. `None` for any other item.
pub fn reference(item: &Value) -> Option<&str> {
    let obj = item.as_object()?;
    let untyped = matches!(obj.get("type"), None | Some(Value::Null)) && !obj.contains_key("role");
    if obj.get("type").and_then(Value::as_str) == Some("item_reference") || untyped {
        return obj.get("id").and_then(Value::as_str);
    }
    None
}

/// Checks one item; `at` names it in errors (`input[3]`).
pub fn parse_item(item: &Value, at: &str, reader: Reader) -> Result<Item, ApiError> {
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
            let content = content(obj.get("content"), &field("content"), reader)?;
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
            output: content(obj.get("output"), &field("output"), reader)?,
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
        "compaction" => {
            let sealed = str_field("encrypted_content")?;
            let summary = compaction::open(&sealed).map_err(|e| {
                ApiError::invalid_param(
                    field("encrypted_content"),
                    format!("This compaction item cannot be read: {e}."),
                )
                .with_code("invalid_encrypted_content")
            })?;
            Ok(Item::Compaction { summary })
        }
        // A reference with an id was resolved before items are checked.
        "item_reference" => Err(ApiError::invalid_param(
            field("id"),
            "An item_reference needs the 'id' (a string) of a stored item.",
        )),
        other => Err(ApiError::invalid_param(
            field("type"),
            format!("Unsupported input item type '{other}'."),
        )),
    }
}

/// Message content: a string, or parts. Text-only parts become one string
/// (what every chat template renders); images and files stay parts.
fn content(v: Option<&Value>, at: &str, reader: Reader) -> Result<Content, ApiError> {
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
        let here = format!("{at}[{i}]");
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
                text_only = false;
                out.push(image(p, &here, reader)?);
            }
            ("input_file", _) => {
                text_only = false;
                out.push(file(p, &here, reader)?);
            }
            _ => {
                return Err(ApiError::invalid_param(
                    format!("{here}.type"),
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

/// The 400 for a part the model cannot read, naming the part.
fn unreadable(at: &str, kind: &str, reader: Reader, advice: &str) -> ApiError {
    ApiError::invalid_param(
        at,
        format!(
            "'{at}' is an {kind} part, and model '{}' reads text only: {advice}",
            reader.model
        ),
    )
    .with_code("unsupported_content")
}

/// `input_image` → a Chat Completions `image_url` part (`detail` kept).
fn image(part: &Value, at: &str, reader: Reader) -> Result<Value, ApiError> {
    if !reader.reads.images {
        return Err(unreadable(
            at,
            "input_image",
            reader,
            "send a description of the image as input_text, or ask a model that reads images.",
        ));
    }
    let url = part
        .get("image_url")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ApiError::invalid_param(
                format!("{at}.image_url"),
                "Only images given by 'image_url' (a URL or data URL) are supported.",
            )
        })?;
    let mut image_url = json!({"url": url});
    if let Some(detail) = part.get("detail").filter(|d| !d.is_null()) {
        image_url["detail"] = detail.clone();
    }
    Ok(json!({"type": "image_url", "image_url": image_url}))
}

/// `input_file` → a Chat Completions `file` part holding the fields the
/// client sent (`file_data`, `file_url`, `filename`, `file_id`) as sent:
/// the engine behind decides what it can open.
fn file(part: &Value, at: &str, reader: Reader) -> Result<Value, ApiError> {
    if !reader.reads.files {
        return Err(unreadable(
            at,
            "input_file",
            reader,
            "send the file's text as input_text.",
        ));
    }
    let fields: Map<String, Value> = part
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| k.as_str() != "type" && !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if fields.is_empty() {
        return Err(ApiError::invalid_param(
            at,
            "An input_file part needs 'file_data', 'file_url' or 'file_id'.",
        ));
    }
    Ok(json!({"type": "file", "file": fields}))
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
            Item::Compaction { summary } => {
                flush(&mut turn, &mut out);
                out.push(ChatMessage {
                    role: Role::User,
                    content: Some(Content::Text(format!("{SUMMARY_PREFIX}{summary}"))),
                    ..ChatMessage::default()
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

    const TEXT: Reader = Reader {
        model: "tiny",
        reads: Reads::TEXT_ONLY,
    };
    const ANY: Reader = Reader {
        model: "big",
        reads: Reads::ANYTHING,
    };

    fn items(v: Value) -> Vec<Item> {
        v.as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, it)| parse_item(it, &format!("input[{i}]"), TEXT).unwrap())
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
            TEXT,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[2].call_id"));
        let e =
            parse_item(&json!({"role": "robot", "content": "x"}), "input[0]", TEXT).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].role"));
        let e = parse_item(&json!({"type": "web_search_call"}), "input[1]", TEXT).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[1].type"));
        let e = parse_item(&json!({"role": "user", "content": 5}), "input[0]", TEXT).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content"));
        assert!(parse_item(&json!(7), "input[0]", TEXT).is_err());
    }

    #[test]
    fn images_and_files_pass_to_a_reader_of_them_and_are_refused_by_path_otherwise() {
        let message = json!({"role": "user", "content": [
            {"type": "input_text", "text": "What is in these?"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
            {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}
        ]});
        let Item::Message { content, .. } = parse_item(&message, "input[2]", ANY).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(
            serde_json::to_value(content).unwrap(),
            json!([
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}}
            ])
        );

        let e = parse_item(&message, "input[2]", TEXT).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[2].content[1]"));
        assert_eq!(e.code.as_deref(), Some("unsupported_content"));
        assert!(
            e.message.contains("input_image") && e.message.contains("'tiny'"),
            "{e}"
        );
        let only_file = json!({"type": "function_call_output", "call_id": "c", "output": [
            {"type": "input_file", "file_url": "https://example.com/a.pdf"}
        ]});
        let e = parse_item(&only_file, "input[4]", TEXT).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[4].output[0]"));
        assert!(e.message.contains("input_file"), "{e}");
        let empty = json!({"role": "user", "content": [{"type": "input_file"}]});
        let e = parse_item(&empty, "input[0]", ANY).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[0].content[0]"));
    }

    #[test]
    fn a_compaction_item_becomes_a_user_message_with_its_summary() {
        let conv = items(json!([
            {"role": "user", "content": "Plan the trip."},
            {"type": "compaction", "id": "cmp_1", "encrypted_content": compaction::seal("Oslo, two days.")},
            {"role": "user", "content": "And the weather?"}
        ]));
        let m = to_messages(&[], &conv);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].role, Role::User);
        assert_eq!(
            m[1].content.as_ref().unwrap().text(),
            format!("{SUMMARY_PREFIX}Oslo, two days.")
        );

        let e = parse_item(
            &json!({"type": "compaction", "encrypted_content": "gAAAAABpM0Yj-...="}),
            "input[1]",
            TEXT,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[1].encrypted_content"));
        assert_eq!(e.code.as_deref(), Some("invalid_encrypted_content"));
        let e = parse_item(&json!({"type": "compaction"}), "input[1]", TEXT).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input[1].encrypted_content"));
    }
}
