//! Relays the inference service's feed of finished requests onto the
//! supervisor's event stream (`inference` events), so the console can show
//! inference next to the VMs without talking to the inference service.

use clawpen_api::{Event, InferenceRecord};
use clawpen_inference::{Inference, RequestMetrics};
use tokio::sync::broadcast::error::RecvError;

use crate::events::EventBus;

/// Runs until the inference service is dropped.
pub fn spawn(inference: &Inference, events: EventBus) -> tokio::task::JoinHandle<()> {
    let mut feed = inference.subscribe();
    tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(metrics) => events.publish(Event::Inference(record(&metrics))),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "inference relay fell behind");
                }
                Err(RecvError::Closed) => break,
            }
        }
    })
}

fn record(m: &RequestMetrics) -> InferenceRecord {
    InferenceRecord {
        request_id: m.request_id.clone(),
        client: m.client.clone(),
        endpoint: m.endpoint.as_str().to_string(),
        model: m.model.clone(),
        session: m.session.clone(),
        previous_response_id: m.previous_response_id.clone(),
        status: m.status.as_str().to_string(),
        error: m.error.clone(),
        prompt_tokens: m.prompt_tokens,
        cached_tokens: m.cached_tokens,
        output_tokens: m.output_tokens,
        time_to_first_token_ms: m.time_to_first_token_ms,
        prefill_tokens_per_s: m.prefill_tokens_per_s,
        decode_tokens_per_s: m.decode_tokens_per_s,
        duration_ms: m.duration_ms,
        tool_calls: m.tool_calls.clone(),
        started_at_ms: m.started_at_ms,
    }
}
