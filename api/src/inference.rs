//! What the supervisor relays from the inference service: one record per
//! finished generation, for the console's inference and session views.

use serde::{Deserialize, Serialize};

/// A finished (or failed, or cancelled) generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRecord {
    pub request_id: String,
    /// The client the request's API key maps to (one per VM; `anonymous`
    /// when keys are off).
    pub client: String,
    /// `responses` or `chat_completions`.
    pub endpoint: String,
    pub model: String,
    /// `prompt_cache_key` (OpenClaw's session id), if sent.
    pub session: Option<String>,
    pub previous_response_id: Option<String>,
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
