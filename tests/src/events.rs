//! The supervisor's `/api/v1/events` SSE stream, read as typed events.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clawpen_api::Event;

use crate::Up;

/// An open events stream and what has arrived of it but not been parsed.
pub struct EventStream {
    response: reqwest::Response,
    pending: String,
}

impl EventStream {
    /// Subscribes; events published from now on will be seen.
    pub async fn open(up: &Up) -> Result<Self> {
        let response = up
            .request(reqwest::Method::GET, "/events")
            .send()
            .await?
            .error_for_status()?;
        Ok(Self {
            response,
            pending: String::new(),
        })
    }

    /// The first event from now on for which `pred` holds, within `limit`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event> {
        let deadline = Instant::now() + limit;
        let mut skipped = 0usize;
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let frame: String = self.pending.drain(..end + 2).collect();
                let data: String = frame
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                if let Ok(event) = serde_json::from_str::<Event>(&data) {
                    if pred(&event) {
                        return Ok(event);
                    }
                    skipped += 1;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no event for {what} within {limit:?} ({skipped} others seen)");
            }
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self
                    .pending
                    .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
                Ok(Ok(None)) => bail!("the events stream ended while waiting for {what}"),
                Ok(Err(e)) => bail!("events stream: {e}"),
                Err(_) => {}
            }
        }
    }
}
