//! Chat templates: the Jinja template a GGUF carries in
//! `tokenizer.chat_template`, rendered with minijinja.
//!
//! Templates are written for Hugging Face's Python renderer, so they call
//! Python string methods (`.strip()`, `.startswith()`), `raise_exception`,
//! and expect tool-call arguments as a mapping (they `| tojson` them). The
//! OpenAI wire sends arguments as JSON text, so they are parsed back into
//! an object here when they are valid JSON.

use minijinja::{Environment, ErrorKind, Value};
use serde_json::{json, Value as Json};

use crate::engine::{ChatMessage, ChatTool, Content, Role};

const NAME: &str = "chat_template";

/// Why a template could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template does not parse.
    #[error("the GGUF's chat template does not compile: {0}")]
    Compile(String),
    /// The template refused the conversation (`raise_exception`) or failed.
    #[error("the chat template could not render this conversation: {0}")]
    Render(String),
}

/// A compiled chat template plus the special tokens it may reference.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts of the
    /// model's BOS/EOS tokens (templates write `{{ bos_token }}`).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // Jinja in transformers trims blocks and keeps trailing newlines.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(true);
        env.add_function("raise_exception", |msg: String| -> Result<Value, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The template's text (model families are recognised from it).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation as the model's prompt text.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[ChatTool],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_effort(messages, tools, add_generation_prompt, None)
    }

    /// [`Self::render`] with the request's reasoning effort, which
    /// templates that read it (gpt-oss's: `Reasoning: high` in its system
    /// message) see as `reasoning_effort`; unset, they use their default.
    pub fn render_with_effort(
        &self,
        messages: &[ChatMessage],
        tools: &[ChatTool],
        add_generation_prompt: bool,
        reasoning_effort: Option<&str>,
    ) -> Result<String, TemplateError> {
        let messages: Vec<Json> = messages.iter().map(message_value).collect();
        let tools: Option<Vec<Json>> = if tools.is_empty() {
            None
        } else {
            Some(tools.iter().map(|t| json!(t)).collect())
        };
        let ctx = json!({
            "messages": messages,
            "tools": tools,
            "add_generation_prompt": add_generation_prompt,
            "reasoning_effort": reasoning_effort,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        });
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError::Compile(e.to_string()))?;
        template
            .render(Value::from_serialize(&ctx))
            .map_err(|e| TemplateError::Render(render_error(&e)))
    }
}

/// The error and its cause chain on one line.
fn render_error(e: &minijinja::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One message as templates expect it: `developer` reads as `system`,
/// content as plain text, tool-call arguments as an object.
fn message_value(m: &ChatMessage) -> Json {
    let role = match m.role {
        Role::System | Role::Developer => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    };
    let mut v = json!({
        "role": role,
        "content": m.content.as_ref().map(Content::text),
    });
    if !m.tool_calls.is_empty() {
        let calls: Vec<Json> = m
            .tool_calls
            .iter()
            .map(|c| {
                let arguments = serde_json::from_str::<Json>(&c.function.arguments)
                    .ok()
                    .filter(Json::is_object)
                    .unwrap_or_else(|| Json::String(c.function.arguments.clone()));
                json!({
                    "id": c.id,
                    "type": c.kind,
                    "function": {"name": c.function.name, "arguments": arguments},
                })
            })
            .collect();
        v["tool_calls"] = Json::Array(calls);
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(name) = &m.name {
        v["name"] = json!(name);
    }
    if let Some(r) = &m.reasoning_content {
        v["reasoning_content"] = json!(r);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FunctionCall, ToolCall};

    const CHATML: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn user(text: &str) -> ChatMessage {
        ChatMessage {
            role: Role::User,
            content: Some(Content::Text(text.into())),
            ..Default::default()
        }
    }

    #[test]
    fn renders_chatml() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let out = t.render(&[user("hi")], &[], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let src = "{% if messages[0].content.startswith('x') %}{{ raise_exception('no x please') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(t.render(&[user("  a  ")], &[], false).unwrap(), "a");
        let err = t.render(&[user("xy")], &[], false).unwrap_err();
        assert!(err.to_string().contains("no x please"), "{err}");
    }

    #[test]
    fn tool_call_arguments_are_objects() {
        let src = "{% for m in messages %}{% for c in m.tool_calls %}{{ c.function.arguments.city }}{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let m = ChatMessage {
            role: Role::Assistant,
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                },
            }],
            ..Default::default()
        };
        assert_eq!(t.render(&[m], &[], false).unwrap(), "Paris");
    }

    #[test]
    fn a_broken_template_is_a_clear_error() {
        let err = ChatTemplate::new("{% for %}", "", "").unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
    }

    #[test]
    fn gemmas_turn_format_folds_system_text_and_renders_calls_and_results() {
        let t = ChatTemplate::new(crate::engine::local::gguf::GEMMA_TEMPLATE, "<bos>", "<eos>")
            .unwrap();
        let system = ChatMessage {
            role: Role::System,
            content: Some(Content::Text("Be brief.".into())),
            ..Default::default()
        };
        let call = ChatMessage {
            role: Role::Assistant,
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "weather".into(),
                    arguments: r#"{"city":"Paris"}"#.into(),
                },
            }],
            ..Default::default()
        };
        let result = ChatMessage {
            role: Role::Tool,
            content: Some(Content::Text("sunny".into())),
            tool_call_id: Some("call_1".into()),
            ..Default::default()
        };
        let out = t
            .render(&[system, user(" weather? "), call, result], &[], true)
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nweather?<end_of_turn>\n\
             <start_of_turn>model\n{\"name\":\"weather\",\"arguments\":{\"city\":\"Paris\"}}<end_of_turn>\n\
             <start_of_turn>user\nsunny<end_of_turn>\n<start_of_turn>model\n"
        );
    }
}
