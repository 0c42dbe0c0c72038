//! The egress log writer: one task for all gateways that writes decisions to
//! the store in batches (one transaction each, so a busy guest costs one
//! fsync per batch, not per connection) and announces each entry on the
//! event bus after it is stored.
//!
//! Gateways never wait for it: entries go into a bounded queue, and when the
//! store cannot keep up, entries are counted as dropped and reported, instead
//! of memory growing without bound under a flood.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clawpen_api::{EgressLogEntry, Event, VmName};
use tokio::sync::mpsc;

use crate::events::EventBus;
use crate::store::Store;

/// Entries queued before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// Entries written per transaction at most.
const BATCH: usize = 512;
/// Log lines kept per VM; older ones are pruned.
pub const KEEP_PER_VM: u64 = 100_000;
/// Batches between prunes.
const PRUNE_EVERY: u64 = 256;

#[derive(Debug)]
pub enum LogOp {
    /// Insert, or update the entry with the same id (a flow's end).
    Entry(EgressLogEntry),
    /// A synthetic address handed to a VM, kept across restarts.
    Name {
        vm: VmName,
        addr: Ipv4Addr,
        name: String,
    },
}

#[derive(Clone)]
pub struct LogSender {
    tx: mpsc::Sender<LogOp>,
    dropped: Arc<AtomicU64>,
}

impl LogSender {
    pub fn send(&self, op: LogOp) {
        if self.tx.try_send(op).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the writer task.
pub fn spawn_writer(store: Arc<Store>, events: EventBus) -> LogSender {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(write_loop(rx, store, events, dropped.clone()));
    LogSender { tx, dropped }
}

async fn write_loop(
    mut rx: mpsc::Receiver<LogOp>,
    store: Arc<Store>,
    events: EventBus,
    dropped: Arc<AtomicU64>,
) {
    let mut batches = 0u64;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        batches += 1;
        let prune = batches.is_multiple_of(PRUNE_EVERY);
        let writer = store.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut entries = Vec::new();
            let mut names = Vec::new();
            for op in batch {
                match op {
                    LogOp::Entry(e) => entries.push(e),
                    LogOp::Name { vm, addr, name } => names.push((vm, addr, name)),
                }
            }
            writer.write_egress(&entries, &names)?;
            if prune {
                writer.prune_egress_log(KEEP_PER_VM)?;
            }
            Ok::<_, crate::store::StoreError>(entries)
        })
        .await;
        match written {
            Ok(Ok(entries)) => {
                for entry in entries {
                    events.publish(Event::Egress { entry });
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write the egress log"),
            Err(e) => tracing::error!(error = %e, "egress log writer panicked"),
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(
                lost,
                "egress log entries dropped: the store could not keep up"
            );
        }
    }
}
