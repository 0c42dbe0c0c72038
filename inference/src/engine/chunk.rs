//! Chat Completions chunks (and whole completions) from an upstream,
//! turned into [`EngineEvent`]s.
//!
//! Upstreams differ in small ways, all accepted: reasoning arrives as
//! `reasoning_content` (llama.cpp, vLLM, DeepSeek) or `reasoning` (Ollama,
//! newer vLLM); cached prompt tokens as `usage.prompt_tokens_details.
//! cached_tokens` (OpenAI, vLLM) or `timings.cache_n` (llama.cpp); usage in
//! a final chunk with empty `choices`, or not at all.

use serde_json::Value;

use super::{EngineError, EngineEvent, FinishReason, Usage};

/// Folds one upstream response, chunk by chunk, into events. The
/// [`EngineEvent::Finished`] comes from [`ChunkMapper::finish`], because
/// usage may follow the chunk carrying `finish_reason`.
#[derive(Debug, Default)]
pub struct ChunkMapper {
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    cache_n: Option<u64>,
}

impl ChunkMapper {
    /// The events of one `chat.completion.chunk` (its JSON text).
    pub fn chunk(&mut self, data: &str) -> Result<Vec<EngineEvent>, EngineError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| EngineError::Protocol(format!("chunk is not JSON ({e}): {data:.200}")))?;
        if let Some(err) = v.get("error") {
            return Err(EngineError::Failed(error_message(err)));
        }
        let mut out = Vec::new();
        if let Some(choice) = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        {
            if let Some(delta) = choice.get("delta") {
                message_events(delta, &mut out);
            }
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(FinishReason::from_wire(reason));
            }
        }
        self.read_usage(&v);
        Ok(out)
    }

    /// The events of a whole (non-streamed) `chat.completion`, for an
    /// upstream that answered JSON although asked to stream.
    pub fn completion(&mut self, body: &[u8]) -> Result<Vec<EngineEvent>, EngineError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| EngineError::Protocol(format!("completion is not JSON: {e}")))?;
        if let Some(err) = v.get("error") {
            return Err(EngineError::Failed(error_message(err)));
        }
        let choice = v
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .ok_or_else(|| EngineError::Protocol("completion has no choices".into()))?;
        let mut out = Vec::new();
        if let Some(message) = choice.get("message") {
            message_events(message, &mut out);
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(FinishReason::from_wire(reason));
        }
        self.read_usage(&v);
        out.push(self.finish());
        Ok(out)
    }

    /// Whether a chunk carried a `finish_reason`.
    pub fn saw_finish(&self) -> bool {
        self.finish.is_some()
    }

    /// The closing event.
    pub fn finish(&mut self) -> EngineEvent {
        let mut usage = self.usage;
        if let (Some(u), Some(n)) = (usage.as_mut(), self.cache_n) {
            if u.cached_tokens == 0 {
                u.cached_tokens = n.min(u.prompt_tokens);
            }
        }
        EngineEvent::Finished {
            reason: self.finish.unwrap_or(FinishReason::Stop),
            usage,
        }
    }

    fn read_usage(&mut self, v: &Value) {
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            let n = |path: &[&str]| {
                path.iter()
                    .try_fold(u, |v, k| v.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            self.usage = Some(Usage {
                prompt_tokens: n(&["prompt_tokens"]),
                cached_tokens: n(&["prompt_tokens_details", "cached_tokens"]),
                completion_tokens: n(&["completion_tokens"]),
                reasoning_tokens: n(&["completion_tokens_details", "reasoning_tokens"]),
            });
        }
        if let Some(t) = v.get("timings") {
            if let Some(c) = t.get("cache_n").and_then(Value::as_u64) {
                self.cache_n = Some(c);
            }
            // llama.cpp reports token counts in `timings` even without usage.
            if self.usage.is_none() {
                if let (Some(p), Some(g)) = (
                    t.get("prompt_n").and_then(Value::as_u64),
                    t.get("predicted_n").and_then(Value::as_u64),
                ) {
                    let cached = self.cache_n.unwrap_or(0);
                    self.usage = Some(Usage {
                        prompt_tokens: p + cached,
                        cached_tokens: 0,
                        completion_tokens: g,
                        reasoning_tokens: 0,
                    });
                }
            }
        }
    }
}

/// Content, reasoning and tool calls of a `delta` or `message` object.
fn message_events(m: &Value, out: &mut Vec<EngineEvent>) {
    let reasoning = m
        .get("reasoning_content")
        .or_else(|| m.get("reasoning"))
        .and_then(Value::as_str);
    if let Some(r) = reasoning.filter(|r| !r.is_empty()) {
        out.push(EngineEvent::Reasoning(r.to_owned()));
    }
    if let Some(c) = m.get("content").and_then(Value::as_str) {
        if !c.is_empty() {
            out.push(EngineEvent::Text(c.to_owned()));
        }
    }
    if let Some(r) = m.get("refusal").and_then(Value::as_str) {
        if !r.is_empty() {
            out.push(EngineEvent::Refusal(r.to_owned()));
        }
    }
    let Some(calls) = m.get("tool_calls").and_then(Value::as_array) else {
        return;
    };
    for (pos, call) in calls.iter().enumerate() {
        let index = call
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(pos);
        let function = call.get("function");
        let field = |k: &str| {
            function
                .and_then(|f| f.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let arguments = match function.and_then(|f| f.get("arguments")) {
            Some(Value::String(s)) => s.clone(),
            // Some servers send the arguments object itself.
            Some(v @ Value::Object(_)) => v.to_string(),
            _ => String::new(),
        };
        out.push(EngineEvent::ToolCallDelta {
            index,
            id: call
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            name: field("name").filter(|s| !s.is_empty()),
            arguments,
        });
    }
}

/// The message of an OpenAI-shaped error object (or the value itself).
pub fn error_message(err: &Value) -> String {
    err.get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| err.as_str().map(str::to_owned))
        .unwrap_or_else(|| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_map_to_events_and_usage_follows_finish() {
        let mut m = ChunkMapper::default();
        let e = m
            .chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"hm","content":"Hi"}}]}"#)
            .unwrap();
        assert_eq!(
            e,
            vec![
                EngineEvent::Reasoning("hm".into()),
                EngineEvent::Text("Hi".into())
            ]
        );
        // A refusal (OpenAI's field; `null` when there is none).
        let e = m
            .chunk(r#"{"choices":[{"index":0,"delta":{"content":null,"refusal":"No."}}]}"#)
            .unwrap();
        assert_eq!(e, vec![EngineEvent::Refusal("No.".into())]);
        let e = m
            .chunk(r#"{"choices":[{"index":0,"delta":{"content":"","refusal":null}}]}"#)
            .unwrap();
        assert!(e.is_empty(), "{e:?}");
        let e = m
            .chunk(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\""}}]},"finish_reason":null}]}"#)
            .unwrap();
        assert_eq!(
            e,
            vec![EngineEvent::ToolCallDelta {
                index: 0,
                id: Some("c1".into()),
                name: Some("f".into()),
                arguments: "{\"a\"".into()
            }]
        );
        m.chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)
            .unwrap();
        m.chunk(r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":4}}}"#)
            .unwrap();
        assert_eq!(
            m.finish(),
            EngineEvent::Finished {
                reason: FinishReason::ToolCalls,
                usage: Some(Usage {
                    prompt_tokens: 10,
                    cached_tokens: 4,
                    completion_tokens: 3,
                    reasoning_tokens: 0
                })
            }
        );
    }

    #[test]
    fn llama_cpp_timings_give_cached_tokens() {
        let mut m = ChunkMapper::default();
        m.chunk(r#"{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":5},"timings":{"cache_n":12,"prompt_n":8,"predicted_n":5}}"#)
            .unwrap();
        let EngineEvent::Finished { usage, .. } = m.finish() else {
            panic!()
        };
        assert_eq!(usage.unwrap().cached_tokens, 12);
    }

    #[test]
    fn error_chunks_and_garbage_are_errors() {
        let mut m = ChunkMapper::default();
        assert!(matches!(
            m.chunk(r#"{"error":{"message":"boom"}}"#),
            Err(EngineError::Failed(s)) if s == "boom"
        ));
        assert!(matches!(m.chunk("{nope"), Err(EngineError::Protocol(_))));
    }
}
