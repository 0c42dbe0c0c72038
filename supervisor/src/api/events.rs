//! `GET /api/v1/events`: server-sent events of everything that changes.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::events::EventBus;

pub async fn stream(
    State(events): State<EventBus>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // the current inference status first: it only comes again when it changes
    let (status, rx) = events.subscribe_with_status();
    let first = tokio_stream::iter(status.map(Ok));
    let stream = first.chain(BroadcastStream::new(rx)).map(|item| {
        Ok(match item {
            Ok(event) => SseEvent::default()
                .event(event.kind())
                .json_data(&event)
                .unwrap_or_else(|_| SseEvent::default().comment("unserialisable event")),
            // A slow subscriber missed events: tell it to re-read the VM list.
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                SseEvent::default().event("lagged").data(n.to_string())
            }
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
