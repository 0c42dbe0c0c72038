//! What the supervisor relays from the inference service: one record per
//! finished generation, for the console's inference and session views.

use serde::{Deserialize, Serialize};

/// A finished (or failed, or cancelled) generation. `Default` (empty
/// strings, zeros) is for fixtures that set only what they check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceRecord {
    pub request_id: String,
    /// The client the request's API key maps to (one per VM; `anonymous`
    /// when keys are off).
    pub client: String,
    /// `responses`, `chat_completions` or `responses_compact`.
    pub endpoint: String,
    pub model: String,
    /// The engine that served it: `local`, or the upstream's URL when
    /// clawpen fronts several servers.
    #[serde(default)]
    pub engine: String,
    /// `prompt_cache_key` (OpenClaw's session id), if sent.
    pub session: Option<String>,
    pub previous_response_id: Option<String>,
    /// The conversation the request continues, found from its messages
    /// (the first request's id): what groups a client that sends neither
    /// of the fields above.
    #[serde(default)]
    pub conversation: Option<String>,
    /// `completed`, `incomplete`, `failed`, `cancelled`.
    pub status: String,
    pub error: Option<String>,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub output_tokens: u64,
    pub time_to_first_token_ms: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub duration_ms: f64,
    /// Names of the tools the model called, in order.
    pub tool_calls: Vec<String>,
    pub started_at_ms: u64,
    /// The model's visible output text, cut at 2 KiB.
    #[serde(default)]
    pub output_text: String,
    /// The tool calls the model made, arguments cut at 2 KiB.
    #[serde(default)]
    pub calls: Vec<ToolCallRecord>,
    /// The tool results this request brought (new since the last assistant
    /// turn), each cut at 2 KiB.
    #[serde(default)]
    pub tool_results: Vec<ToolResultRecord>,
    /// How long the request waited for its turn on the model (local
    /// engine; `None` when it did not queue or the engine has no queue).
    #[serde(default)]
    pub queue_wait_ms: Option<f64>,
    /// How many of `calls` clawpen repaired: the model wrote them as text
    /// (a JSON object or fence, or a call tag outside its place), and the
    /// parser turned them into calls. Shown beside them in the console.
    #[serde(default)]
    pub repaired_tool_calls: u32,
}

/// The inference service between requests: what it serves and how many
/// requests wait (`inference_status` events). Sent when either changes,
/// and first on every event stream, so a page opened late still has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceStatus {
    /// The models that loaded (local engine) or that the upstream offers.
    pub models: Vec<String>,
    /// Requests waiting for a turn now, all models and clients together.
    pub queued: u64,
    /// When this was observed, ms since the epoch.
    pub time_unix_ms: u64,
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRecord {
    pub id: String,
    pub name: String,
    /// JSON arguments, as text.
    pub arguments: String,
}

/// A tool's answer sent back to the model, with the call it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResultRecord {
    pub call_id: String,
    /// The output, cut at 2 KiB.
    pub output: String,
    /// The whole output's size in bytes (what the model had to read).
    #[serde(default)]
    pub bytes: u64,
}

/// How a VM's guest reaches the inference service
/// (`GET /api/v1/vms/{name}/inference`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceAccess {
    pub vm: String,
    /// The fixed address guests use, e.g. `http://10.200.0.1/v1`.
    pub base_url: String,
    /// This VM's own key: requests with it are attributed to the VM.
    pub api_key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_the_session_fields_still_parses() {
        let old = r#"{"request_id":"resp_1","client":"demo","endpoint":"responses","model":"m",
            "session":null,"previous_response_id":null,"status":"completed","error":null,
            "prompt_tokens":1,"cached_tokens":0,"output_tokens":2,"time_to_first_token_ms":null,
            "prefill_tokens_per_s":null,"decode_tokens_per_s":null,"duration_ms":3.0,
            "tool_calls":[],"started_at_ms":4}"#;
        let r: InferenceRecord = serde_json::from_str(old).unwrap();
        assert!(r.output_text.is_empty() && r.calls.is_empty() && r.tool_results.is_empty());
        assert_eq!(r.queue_wait_ms, None);
    }
}
