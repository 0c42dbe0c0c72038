//! Relays the inference service's feed of finished requests onto the
//! supervisor's event stream (`inference` events), so the console can show
//! inference next to the VMs without talking to the inference service.
//! The last [`RECENT_RECORDS`] are kept ([`RecentInference`]) so a page
//! opened later still shows the sessions that came before it
//! (`GET /api/v1/inference/recent`, and the console's server rendering).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use clawpen_api::{Event, InferenceRecord};
use clawpen_inference::{Inference, RequestMetrics};
use tokio::sync::broadcast::error::RecvError;

use crate::events::EventBus;

/// How many finished requests the supervisor remembers.
pub const RECENT_RECORDS: usize = 500;

/// The newest relayed records, oldest first, at most [`RECENT_RECORDS`].
#[derive(Debug, Clone, Default)]
pub struct RecentInference(Arc<Mutex<VecDeque<InferenceRecord>>>);

impl RecentInference {
    pub fn push(&self, record: InferenceRecord) {
        let mut ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == RECENT_RECORDS {
            ring.pop_front();
        }
        ring.push_back(record);
    }

    /// Every record kept, oldest first.
    pub fn list(&self) -> Vec<InferenceRecord> {
        let ring = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter().cloned().collect()
    }
}

/// Runs until the inference service is dropped.
pub fn spawn(
    inference: &Inference,
    events: EventBus,
    recent: RecentInference,
) -> tokio::task::JoinHandle<()> {
    let mut feed = inference.subscribe();
    tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(metrics) => {
                    let record = record(&metrics);
                    recent.push(record.clone());
                    events.publish(Event::Inference(record));
                }
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
        output_text: m.output_text.clone(),
        calls: m.calls.clone(),
        tool_results: m.tool_results.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_records_in_order() {
        let recent = RecentInference::default();
        let base = record(&RequestMetrics::begin(
            String::new(),
            "demo".into(),
            clawpen_inference::metrics::Endpoint::Responses,
            "m".into(),
            None,
            None,
            false,
        ));
        for i in 0..RECENT_RECORDS + 3 {
            recent.push(InferenceRecord {
                request_id: format!("resp_{i}"),
                ..base.clone()
            });
        }
        let list = recent.list();
        assert_eq!(list.len(), RECENT_RECORDS);
        assert_eq!(list[0].request_id, "resp_3");
        assert_eq!(
            list.last().unwrap().request_id,
            format!("resp_{}", RECENT_RECORDS + 2)
        );
    }
}
