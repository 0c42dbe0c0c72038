//! The in-process event bus behind `GET /api/v1/events`.

use std::sync::{Arc, Mutex};

use clawpen_api::Event;
use tokio::sync::broadcast;

/// Fan-out of [`Event`]s to every SSE subscriber. Sending never blocks; a
/// subscriber that falls more than [`CAPACITY`] events behind skips ahead.
///
/// The latest `inference_status` is also kept: it describes how things are
/// rather than what happened, so a new subscriber needs it at once (see
/// [`EventBus::subscribe_with_status`]).
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    status: Arc<Mutex<Option<Event>>>,
}

const CAPACITY: usize = 1024;

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
            status: Arc::default(),
        }
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        if let Event::InferenceStatus(_) = &event {
            *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Some(event.clone());
        }
        // No subscribers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// A subscription and the latest inference status to send before its
    /// events. Subscribed first, so a status published meanwhile is not
    /// lost (at worst it comes twice, which changes nothing).
    pub fn subscribe_with_status(&self) -> (Option<Event>, broadcast::Receiver<Event>) {
        let rx = self.tx.subscribe();
        let status = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (status, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawpen_api::InferenceStatus;

    fn status(queued: u64) -> Event {
        Event::InferenceStatus(InferenceStatus {
            models: vec!["m".into()],
            queued,
            time_unix_ms: 0,
        })
    }

    #[test]
    fn a_late_subscriber_gets_the_latest_status_first() {
        let bus = EventBus::default();
        assert!(bus.subscribe_with_status().0.is_none());
        bus.publish(status(2));
        bus.publish(status(1));
        bus.publish(Event::VmDeleted {
            name: clawpen_api::VmName::parse("demo").unwrap(),
        });
        let (first, mut rx) = bus.subscribe_with_status();
        assert_eq!(first, Some(status(1)));
        bus.publish(status(0));
        assert_eq!(rx.try_recv().unwrap(), status(0));
    }
}
