//! The `POST /v1/responses` body and its translation to Chat Completions
//! settings (tools, `tool_choice`, `text.format`, `reasoning`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::engine::{ChatTool, FunctionDef};
use crate::server::ApiError;

/// The request body. Unknown fields are ignored (agents send many).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input: Option<Input>,
    /// A string (newer clients may send input items; both accepted).
    #[serde(default)]
    pub instructions: Option<Input>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub reasoning: Option<ReasoningParam>,
    #[serde(default)]
    pub text: Option<TextParam>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub background: Option<bool>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    /// Log probabilities are not returned: only 0 (or none) is accepted.
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// At most this many function calls are kept in the output.
    #[serde(default)]
    pub max_tool_calls: Option<i64>,
    /// Echoed; at most 64 characters.
    #[serde(default)]
    pub safety_identifier: Option<String>,
    /// What happens to a conversation longer than the model's context.
    #[serde(default)]
    pub truncation: Option<Truncation>,
}

/// Open Responses' `truncation`: `disabled` (the default) refuses a
/// conversation longer than the model's context with a 400; `auto` lets
/// the service drop its oldest turns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    Auto,
    #[default]
    Disabled,
}

/// What the request sets beyond the engine's usual settings, checked
/// against the Open Responses ranges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    pub presence: f64,
    pub frequency: f64,
}

impl ResponsesRequest {
    /// The presence and frequency penalties (0 when unset), each from -2
    /// to 2; `top_logprobs`, `max_tool_calls` and `safety_identifier`
    /// checked too.
    pub fn checked_extras(&self) -> Result<Penalties, ApiError> {
        let penalty = |name: &str, v: Option<f64>| match v {
            None => Ok(0.0),
            Some(p) if crate::engine::PENALTY_RANGE.contains(&p) => Ok(p),
            Some(p) => Err(ApiError::invalid_param(
                name,
                format!("'{name}' must be a number from -2 to 2, got {p}."),
            )),
        };
        let penalties = Penalties {
            presence: penalty("presence_penalty", self.presence_penalty)?,
            frequency: penalty("frequency_penalty", self.frequency_penalty)?,
        };
        match self.top_logprobs {
            None | Some(0) => {}
            Some(n) if (1..=20).contains(&n) => return Err(ApiError::invalid_param(
                "top_logprobs",
                "clawpen does not return log probabilities: send 0 or leave 'top_logprobs' out.",
            )),
            Some(n) => {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("'top_logprobs' must be an integer from 0 to 20, got {n}."),
                ))
            }
        }
        if let Some(n) = self.max_tool_calls.filter(|n| *n < 1) {
            return Err(ApiError::invalid_param(
                "max_tool_calls",
                format!("'max_tool_calls' must be at least 1, got {n}."),
            ));
        }
        if let Some(id) = self
            .safety_identifier
            .as_ref()
            .filter(|s| s.chars().count() > 64)
        {
            return Err(ApiError::invalid_param(
                "safety_identifier",
                format!(
                    "'safety_identifier' may have at most 64 characters, got {}.",
                    id.chars().count()
                ),
            ));
        }
        Ok(penalties)
    }
}

/// `input` (and `instructions`): text, or a list of items.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ReasoningParam {
    #[serde(default)]
    pub effort: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TextParam {
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub verbosity: Option<String>,
}

/// The request's tools: for the engine, and as the response echoes them.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub chat: Vec<ChatTool>,
    pub echo: Vec<Value>,
}

/// Checks `tools` and converts them. Only `function` tools exist here; a
/// schema that is not an object is refused (a model cannot be prompted with
/// it and no arguments could be checked against it).
pub fn tools(tools: &[Value]) -> Result<Tools, ApiError> {
    let mut out = Tools::default();
    for (i, t) in tools.iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        let Some(obj) = t.as_object() else {
            return Err(ApiError::invalid_param(
                format!("tools[{i}]"),
                "A tool must be an object.",
            ));
        };
        let kind = obj.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" {
            return Err(ApiError::invalid_param(
                at("type"),
                format!("Unsupported tool type '{kind}': only 'function' tools are served here."),
            ));
        }
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid_param(at("name"), "A function tool needs a non-empty 'name'.")
            })?;
        let parameters = match obj.get("parameters") {
            None | Some(Value::Null) => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    at("parameters"),
                    "Invalid schema for function: 'parameters' must be a JSON schema object.",
                )
                .with_code("invalid_function_parameters"))
            }
        };
        let description = match obj.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(ApiError::invalid_param(
                    at("description"),
                    "'description' must be a string.",
                ))
            }
        };
        let strict = obj.get("strict").and_then(Value::as_bool);
        out.echo.push(json!({
            "type": "function",
            "name": name,
            "description": description,
            "parameters": parameters,
            "strict": strict,
        }));
        out.chat.push(ChatTool {
            kind: "function".into(),
            function: FunctionDef {
                name: name.to_owned(),
                description,
                parameters,
                strict,
            },
        });
    }
    Ok(out)
}

/// A request's `tool_choice`, read.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolChoiceParam {
    /// The Chat Completions `tool_choice` the engine is sent.
    pub chat: Value,
    /// `allowed_tools`: the names of the only tools that may be called.
    /// The spec makes this a hard constraint, so the request offers the
    /// engine only these (its prompt, the local engine's grammar and the
    /// parser all see just them) and a call to any other tool is dropped
    /// (see [`crate::generation::OutputOptions::only_these_tools`]).
    pub allowed: Option<Vec<String>>,
}

/// Responses `tool_choice` → Chat Completions `tool_choice`, and the
/// tools `allowed_tools` lets be called.
pub fn tool_choice(choice: &Value) -> Result<ToolChoiceParam, ApiError> {
    let bad = || {
        ApiError::invalid_param(
            "tool_choice",
            "tool_choice must be 'none', 'auto', 'required', {\"type\": \"function\", \"name\": ...} \
             or {\"type\": \"allowed_tools\", \"tools\": [...], \"mode\": ...}.",
        )
    };
    let only = |chat: Value| ToolChoiceParam {
        chat,
        allowed: None,
    };
    match choice {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {
            Ok(only(choice.clone()))
        }
        Value::Object(o) => match o.get("type").and_then(Value::as_str) {
            Some("function") => {
                let name = o.get("name").and_then(Value::as_str).ok_or_else(bad)?;
                Ok(only(
                    json!({"type": "function", "function": {"name": name}}),
                ))
            }
            Some("allowed_tools") => {
                let mode = match o.get("mode") {
                    None | Some(Value::Null) => "auto",
                    Some(Value::String(m))
                        if matches!(m.as_str(), "none" | "auto" | "required") =>
                    {
                        m.as_str()
                    }
                    Some(_) => {
                        return Err(ApiError::invalid_param(
                            "tool_choice.mode",
                            "'mode' must be 'none', 'auto' or 'required'.",
                        ))
                    }
                };
                let listed = o
                    .get("tools")
                    .and_then(Value::as_array)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            "tool_choice.tools",
                            "'tools' must list at least one tool.",
                        )
                    })?;
                let allowed = listed
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        t.get("name")
                            .and_then(Value::as_str)
                            .filter(|_| t.get("type").and_then(Value::as_str) == Some("function"))
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                ApiError::invalid_param(
                                    format!("tool_choice.tools[{i}]"),
                                    "Each allowed tool must be {\"type\": \"function\", \"name\": ...}.",
                                )
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ToolChoiceParam {
                    chat: json!(mode),
                    allowed: Some(allowed),
                })
            }
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// Responses `text.format` → Chat Completions `response_format`.
pub fn response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(json!({"type": "json_object"}))),
        "json_schema" => {
            let schema = format
                .get("schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    ApiError::invalid_param(
                        "text.format.schema",
                        "'schema' must be a JSON schema object.",
                    )
                })?;
            let name = format
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("response");
            let mut js = json!({"name": name, "schema": schema});
            for k in ["strict", "description"] {
                if let Some(v) = format.get(k) {
                    js[k] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": js})))
        }
        _ => Err(ApiError::invalid_param(
            "text.format.type",
            format!(
                "Unsupported text format '{kind}': use 'text', 'json_object' or 'json_schema'."
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_convert_and_bad_schemas_are_named() {
        let t =
            tools(&[json!({"type":"function","name":"f","parameters":{"type":"object"}})]).unwrap();
        assert_eq!(t.chat[0].function.name, "f");
        assert_eq!(t.echo[0]["name"], "f");
        let e = tools(&[
            json!({"type":"function","name":"f"}),
            json!({"type":"function","name":"g","parameters":"nope"}),
        ])
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[1].parameters"));
        let e = tools(&[json!({"type":"web_search"})]).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools[0].type"));
    }

    #[test]
    fn tool_choice_and_format_translate() {
        assert_eq!(
            tool_choice(&json!("required")).unwrap().chat,
            json!("required")
        );
        assert_eq!(
            tool_choice(&json!({"type":"function","name":"f"}))
                .unwrap()
                .chat,
            json!({"type":"function","function":{"name":"f"}})
        );
        assert!(tool_choice(&json!("always")).is_err());
        let allowed = tool_choice(&json!({"type":"allowed_tools","mode":"required",
            "tools":[{"type":"function","name":"f"}]}))
        .unwrap();
        assert_eq!(allowed.chat, json!("required"));
        assert_eq!(allowed.allowed, Some(vec!["f".to_owned()]));
        let e = tool_choice(&json!({"type":"allowed_tools","tools":[{"name":"f"}]})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice.tools[0]"));
        assert!(tool_choice(&json!({"type":"allowed_tools","tools":[]})).is_err());
        let f = response_format(
            &json!({"type":"json_schema","name":"x","schema":{"type":"object"},"strict":true}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(f["json_schema"]["strict"], true);
        assert_eq!(response_format(&json!({"type":"text"})).unwrap(), None);
        assert!(response_format(&json!({"type":"json_schema"})).is_err());
    }
}
