//! The in-process event bus behind `GET /api/v1/events`.

use clawpen_api::Event;
use tokio::sync::broadcast;

/// Fan-out of [`Event`]s to every SSE subscriber. Sending never blocks; a
/// subscriber that falls more than [`CAPACITY`] events behind skips ahead.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

const CAPACITY: usize = 1024;

impl Default for EventBus {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl EventBus {
    pub fn publish(&self, event: Event) {
        // No subscribers is fine: nobody is watching.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
