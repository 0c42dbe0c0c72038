//! Live progress for CLI verbs: while a command runs, the supervisor's event
//! stream is followed and the VM's state changes and progress steps are shown
//! on a spinner line (stderr; drawn only on a terminal).

use std::future::Future;
use std::time::Duration;

use clawpen_api::{Event, VmName};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::client::Client;

/// Runs `work`, showing `name`'s events meanwhile.
pub async fn with_progress<T>(client: &Client, name: &VmName, work: impl Future<Output = T>) -> T {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message(format!("{name}: waiting for the supervisor"));
    let follow = follow_events(client, name, &bar);
    let result = tokio::select! {
        result = work => result,
        // The event stream ends only if the supervisor goes away; the work
        // future then fails on its own.
        () = follow => std::future::pending().await,
    };
    bar.finish_and_clear();
    result
}

async fn follow_events(client: &Client, name: &VmName, bar: &ProgressBar) {
    let Ok(response) = client.events().await else {
        return std::future::pending().await;
    };
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let Some(data) = message.lines().find_map(|line| line.strip_prefix("data:")) else {
                continue;
            };
            match serde_json::from_str::<Event>(data.trim()) {
                Ok(Event::VmState { name: n, state }) if &n == name => {
                    bar.set_message(format!("{name}: {state}"));
                }
                Ok(Event::Progress { task, step, .. }) if task.starts_with(name.as_str()) => {
                    bar.set_message(format!("{task}: {step}"));
                }
                _ => {}
            }
        }
    }
}
