//! Relays the inference service's feed of finished requests onto the
//! supervisor's event stream (`inference` events), so the console can show
//! inference next to the VMs without talking to the inference service.
//! The last [`RECENT_RECORDS`] are kept ([`RecentInference`]) so a page
//! opened later still shows the sessions that came before it
//! (`GET /api/v1/inference/recent`, and the console's server rendering).
//! It also announces the service's models and queue depth
//! (`inference_status` events) whenever they change.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use clawpen_api::{Event, InferenceRecord, InferenceStatus};
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

/// Relays finished requests (until the inference service is dropped) and
/// status changes (for the life of the process).
pub fn spawn(
    inference: &Inference,
    events: EventBus,
    recent: RecentInference,
) -> tokio::task::JoinHandle<()> {
    spawn_status(inference.clone(), events.clone());
    let mut feed = inference.subscribe();
    tokio::spawn(async move {
        loop {
            match feed.recv().await {
                Ok(metrics) => {
                    let record = record(&metrics);
                    recent.push(record.clone());
                    events.publish(Event::Inference(Box::new(record)));
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "inference relay fell behind");
                }
                Err(RecvError::Closed) => break,
            }
        }
    })
}

/// Publishes an `inference_status` when the queue depth changes, and when
/// the served models differ from the last announced (read once loading has
/// ended, and again after each finished request: an upstream's list can
/// change).
fn spawn_status(inference: Inference, events: EventBus) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut queued = inference.watch_queued();
        let mut finished = inference.subscribe();
        let mut last: Option<(Vec<String>, u64)> = None;
        loop {
            let models = inference.served_models().await;
            let depth = *queued.borrow_and_update() as u64;
            let now = (models, depth);
            if last.as_ref() != Some(&now) {
                events.publish(Event::InferenceStatus(InferenceStatus {
                    models: now.0.clone(),
                    queued: now.1,
                    time_unix_ms: unix_ms(),
                }));
                last = Some(now);
            }
            tokio::select! {
                changed = queued.changed() => if changed.is_err() { break },
                done = finished.recv() => if let Err(RecvError::Closed) = done { break },
            }
        }
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn record(m: &RequestMetrics) -> InferenceRecord {
    InferenceRecord {
        request_id: m.request_id.clone(),
        client: m.client.clone(),
        endpoint: m.endpoint.as_str().to_string(),
        model: m.model.clone(),
        engine: m.engine.clone(),
        session: m.session.clone(),
        previous_response_id: m.previous_response_id.clone(),
        conversation: m.conversation.clone(),
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
        queue_wait_ms: m.queue_wait_ms,
        repaired_tool_calls: u32::try_from(m.repaired_tool_calls).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The next `inference_status` on `rx`, within a few seconds.
    async fn next_status(rx: &mut tokio::sync::broadcast::Receiver<Event>) -> InferenceStatus {
        loop {
            let event = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("a status within 5 s")
                .unwrap();
            if let Event::InferenceStatus(status) = event {
                return status;
            }
        }
    }

    #[tokio::test]
    async fn queue_depth_changes_are_announced_once_each() {
        use clawpen_inference::engine::local::Observer;
        let inference = Inference::new(clawpen_inference::InferenceConfig {
            locations: clawpen_inference::ModelLocations::none(),
            model: Some("m".into()),
            upstreams: vec!["http://127.0.0.1:9/v1".into()],
            ..Default::default()
        })
        .unwrap();
        let events = EventBus::default();
        let mut rx = events.subscribe();
        spawn(&inference, events.clone(), RecentInference::default());
        let first = next_status(&mut rx).await;
        // the upstream is down: its configured model is what it serves
        assert_eq!(
            (first.models.clone(), first.queued),
            (vec!["m".to_string()], 0)
        );
        let metrics = inference.metrics();
        metrics.queue_depth("m", "demo", 2);
        assert_eq!(next_status(&mut rx).await.queued, 2);
        metrics.queue_depth("m", "demo", 0);
        assert_eq!(next_status(&mut rx).await.queued, 0);
        // a late subscriber starts from the latest
        let (latest, _) = events.subscribe_with_status();
        assert!(matches!(latest, Some(Event::InferenceStatus(s)) if s.queued == 0));
    }

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
