//! The egress log writer: one task for all gateways that writes decisions to
//! the store in batches (one transaction each, so a busy guest costs one
//! fsync per batch, not per connection) and announces each entry on the
//! event bus after it is stored.
//!
//! Gateways never wait for it: entries go into a bounded queue, and when the
//! store cannot keep up, entries are counted as dropped and reported, instead
//! of memory growing without bound under a flood. Each VM logs through a
//! [`VmLog`] with a rate limit of its own, so one VM's flood of refused SYNs
//! or DNS questions cannot crowd the others' lines out of the shared queue;
//! what it suppresses is told in one "N more suppressed" line. Name mappings
//! (which later restarts need) have a queue of their own and no limit.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawpen_api::{EgressAction, EgressLogEntry, EgressLogProto, Event, VmName};
use tokio::sync::mpsc;

use crate::events::EventBus;
use crate::store::Store;

/// Entries queued before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// Name mappings queued (one per name a VM resolves; the synthetic address
/// pool bounds them per VM).
const NAME_QUEUE: usize = 16 * 1024;
/// Log lines one VM may write per second, on average...
const LINES_PER_SECOND: f64 = 200.0;
/// ...and at once, after a quiet while.
const LINES_BURST: f64 = 1000.0;
/// A VM's "N more suppressed" line comes at most this often: under a
/// steady flood, one line a second sums it up, not one per refilled token.
const SUMMARY_EVERY: Duration = Duration::from_secs(1);
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

/// The writer's queues (see [`LogSender::for_vm`] for a VM's sender).
#[derive(Clone)]
pub struct LogSender {
    tx: mpsc::Sender<LogOp>,
    names: mpsc::Sender<LogOp>,
    dropped: Arc<AtomicU64>,
}

impl LogSender {
    fn send(&self, op: LogOp) {
        let queue = match op {
            LogOp::Entry(_) => &self.tx,
            LogOp::Name { .. } => &self.names,
        };
        if queue.try_send(op).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A sender for one VM's lines, rate-limited on its own; `ids` gives
    /// the id of a "suppressed" line.
    pub fn for_vm(&self, vm: VmName, ids: Arc<AtomicU64>) -> VmLog {
        VmLog {
            sender: self.clone(),
            vm,
            ids,
            limit: Mutex::new(RateLimit {
                tokens: LINES_BURST,
                refilled: Instant::now(),
                suppressed: 0,
                told: None,
            }),
        }
    }
}

/// One VM's log lines: at most [`LINES_PER_SECOND`] on average (bursts of
/// [`LINES_BURST`]); the rest are counted and told in one line when the
/// VM is under its limit again, at most once per [`SUMMARY_EVERY`]. Name
/// mappings are never limited.
pub struct VmLog {
    sender: LogSender,
    vm: VmName,
    ids: Arc<AtomicU64>,
    limit: Mutex<RateLimit>,
}

struct RateLimit {
    tokens: f64,
    refilled: Instant,
    suppressed: u64,
    /// When the last "suppressed" line was written.
    told: Option<Instant>,
}

impl VmLog {
    pub fn send(&self, op: LogOp) {
        let LogOp::Entry(entry) = op else {
            return self.sender.send(op);
        };
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        limit.refill();
        if limit.tokens < 1.0 {
            limit.suppressed += 1;
            return;
        }
        limit.tokens -= 1.0;
        self.tell_suppressed(&mut limit, entry.time_unix_ms);
        self.sender.send(LogOp::Entry(entry));
    }

    /// Tells what was suppressed, if anything was and the limit allows a
    /// line now (the gateway calls this on each turn of its loop, so the
    /// line comes even if the VM then logs nothing more).
    pub fn flush(&self, now_unix_ms: u64) {
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        if !limit.summary_due() {
            return;
        }
        limit.refill();
        if limit.tokens >= 1.0 {
            limit.tokens -= 1.0;
            self.tell_suppressed(&mut limit, now_unix_ms);
        }
    }

    fn tell_suppressed(&self, limit: &mut RateLimit, time_unix_ms: u64) {
        if !limit.summary_due() {
            return;
        }
        let line = EgressLogEntry {
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            vm: self.vm.clone(),
            time_unix_ms,
            proto: EgressLogProto::Suppressed,
            name: None,
            addr: None,
            port: None,
            decision: EgressAction::Deny,
            rule: None,
            reason: format!(
                "{} more log lines suppressed (over {LINES_PER_SECOND} a second)",
                limit.suppressed
            ),
            bytes_up: None,
            bytes_down: None,
            ended_unix_ms: None,
        };
        limit.suppressed = 0;
        limit.told = Some(Instant::now());
        self.sender.send(LogOp::Entry(line));
    }
}

impl RateLimit {
    /// Something was suppressed, and the last line telling so is old enough.
    fn summary_due(&self) -> bool {
        self.suppressed > 0 && self.told.is_none_or(|t| t.elapsed() >= SUMMARY_EVERY)
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let seconds = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + seconds * LINES_PER_SECOND).min(LINES_BURST);
        self.refilled = now;
    }
}

/// Starts the writer task.
pub fn spawn_writer(store: Arc<Store>, events: EventBus) -> LogSender {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (names, names_rx) = mpsc::channel(NAME_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    tokio::spawn(write_loop(rx, names_rx, store, events, dropped.clone()));
    LogSender { tx, names, dropped }
}

async fn write_loop(
    mut rx: mpsc::Receiver<LogOp>,
    mut names: mpsc::Receiver<LogOp>,
    store: Arc<Store>,
    events: EventBus,
    dropped: Arc<AtomicU64>,
) {
    let mut batches = 0u64;
    loop {
        let first = tokio::select! {
            biased;
            Some(op) = names.recv() => op,
            Some(op) = rx.recv() => op,
            else => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match names.try_recv().or_else(|_| rx.try_recv()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clawpen_api::VmSpec;

    fn line(id: u64, vm: &VmName) -> LogOp {
        LogOp::Entry(EgressLogEntry {
            id,
            vm: vm.clone(),
            time_unix_ms: 1000 + id,
            proto: clawpen_api::EgressLogProto::Tcp,
            name: Some("flood.test".into()),
            addr: Some("198.18.0.9".into()),
            port: Some(443),
            decision: EgressAction::Deny,
            rule: None,
            reason: "default deny".into(),
            bytes_up: None,
            bytes_down: None,
            ended_unix_ms: None,
        })
    }

    /// One VM's flood of log lines is limited and summed up in one line;
    /// another VM's lines and name mappings are all kept.
    #[tokio::test(flavor = "multi_thread")]
    async fn one_vm_flooding_its_log_costs_another_vm_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
        let [a, b] = ["a", "b"].map(|n| VmName::parse(n).unwrap());
        for vm in [&a, &b] {
            store
                .insert_vm(&VmSpec {
                    name: vm.clone(),
                    image: "test-guest".into(),
                    cpus: 1,
                    memory_mib: 256,
                    disk_gib: None,
                })
                .unwrap();
        }
        let ids = Arc::new(AtomicU64::new(1));
        let writer = spawn_writer(store.clone(), EventBus::default());
        let (flooding, quiet) = (
            writer.for_vm(a.clone(), ids.clone()),
            writer.for_vm(b.clone(), ids.clone()),
        );
        const FLOOD: u64 = 40_000;
        let started = Instant::now();
        for _ in 0..FLOOD {
            flooding.send(line(ids.fetch_add(1, Ordering::Relaxed), &a));
        }
        let refilled = (started.elapsed().as_secs_f64() + 0.1) * LINES_PER_SECOND;
        for _ in 0..10 {
            quiet.send(line(ids.fetch_add(1, Ordering::Relaxed), &b));
        }
        quiet.send(LogOp::Name {
            vm: b.clone(),
            addr: Ipv4Addr::new(198, 18, 0, 7),
            name: "kept.test".into(),
        });
        // The flood's own lines told some of it; the rest is told once the
        // summary is due again.
        tokio::time::sleep(SUMMARY_EVERY + Duration::from_millis(50)).await;
        flooding.flush(99);
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        let (kept_a, kept_b) = loop {
            let kept_a = store.egress_log(&a, None, 100_000).unwrap();
            let kept_b = store.egress_log(&b, None, 100).unwrap();
            // the line `flush` wrote (its time) is the last to come
            let told = kept_a.iter().any(|e| {
                e.proto == clawpen_api::EgressLogProto::Suppressed && e.time_unix_ms == 99
            });
            if kept_b.len() == 10 && told {
                break (kept_a, kept_b);
            }
            assert!(
                Instant::now() < deadline,
                "{} / {} lines",
                kept_a.len(),
                kept_b.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(kept_b.len(), 10);
        assert_eq!(
            store.egress_names(&b).unwrap(),
            vec![(Ipv4Addr::new(198, 18, 0, 7), "kept.test".to_string())]
        );
        // Every line of the flood is kept or counted in a "suppressed" line.
        let (told, plain): (Vec<_>, Vec<_>) = kept_a
            .iter()
            .partition(|e| e.proto == clawpen_api::EgressLogProto::Suppressed);
        let suppressed: u64 = told
            .iter()
            .map(|e| e.reason.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        let plain = plain.len() as u64;
        assert!(
            plain as f64 <= LINES_BURST + refilled,
            "{plain} lines of the flood kept"
        );
        assert_eq!(plain + suppressed, FLOOD, "{told:?}");
        let seconds = started.elapsed().as_secs() + 1;
        assert!(
            told.len() as u64 <= seconds,
            "{} suppressed lines in {seconds} s",
            told.len()
        );
    }
}
