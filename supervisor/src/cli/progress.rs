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

/// A progress bar for a local image build: one line, the step, and a bar
/// when the step knows its total (stderr; drawn only on a terminal, where
/// it is not a terminal each new step is printed as one line instead).
pub struct BuildProgress {
    bar: ProgressBar,
    step: std::sync::Mutex<String>,
    tty: bool,
}

impl BuildProgress {
    pub fn new(name: &str) -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix}: {msg} {wide_bar} [{elapsed}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(name.to_owned());
        bar.enable_steady_tick(Duration::from_millis(100));
        Self {
            bar,
            step: std::sync::Mutex::new(String::new()),
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    pub fn report(&self, p: &clawpen_vmimage::Progress) {
        if let Ok(mut step) = self.step.lock() {
            if *step != p.step {
                if !self.tty {
                    eprintln!("{}: {}", self.bar.prefix(), p.step);
                }
                step.clone_from(&p.step);
                self.bar.set_message(p.step.clone());
            }
        }
        match p.total {
            Some(total) => {
                self.bar.set_length(total);
                self.bar.set_position(p.done.min(total));
            }
            None => self.bar.set_length(0),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
