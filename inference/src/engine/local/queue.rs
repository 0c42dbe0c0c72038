//! Fair turns on one model: one generation at a time, and the next turn
//! goes to the waiting client (one per VM, from its API key) that was
//! served least recently.
//!
//! A model runs one generation at a time (its KV cache lives in the
//! weights), so requests wait. First-come-first-served would let one VM
//! that fires many requests at once (an agent fanning out sub-agents, a
//! runaway loop) hold every other VM back for as long as its backlog
//! lasts. Here each client has its own line, and the clients take turns:
//! with `k` clients waiting, each is served at least once every `k`
//! turns, whatever their backlogs. Within a client, requests keep their
//! order.
//!
//! Waiting is async (a [`Waiter`] future): a queued request holds no
//! thread, and a client that goes away while queued (its future dropped)
//! leaves the line at once. A [`Turn`] is the right to generate; dropping
//! it hands the model to the next in line.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Observer;

/// See the module documentation.
pub struct FairQueue {
    model: String,
    state: Mutex<State>,
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for FairQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairQueue")
            .field("model", &self.model)
            .field("waiting", &self.waiting())
            .finish()
    }
}

#[derive(Default)]
struct State {
    /// A turn is out (a generation runs).
    busy: bool,
    /// Counts turns given; a client's `last_served` is the tick of its
    /// latest turn.
    tick: u64,
    /// Orders waiters across clients (ties between never-served clients).
    next_seq: u64,
    clients: HashMap<String, Line>,
}

#[derive(Default)]
struct Line {
    last_served: u64,
    waiting: VecDeque<Waiting>,
}

struct Waiting {
    seq: u64,
    since: Instant,
    tx: oneshot::Sender<Turn>,
}

impl FairQueue {
    pub fn new(model: &str, observer: Option<Arc<dyn Observer>>) -> Arc<Self> {
        Arc::new(Self {
            model: model.to_owned(),
            state: Mutex::default(),
            observer,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent after every statement: a panic elsewhere
        // cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests waiting now (not counting the one generating).
    pub fn waiting(&self) -> usize {
        self.lock().clients.values().map(|l| l.waiting.len()).sum()
    }

    /// Waits for `client`'s turn.
    pub fn acquire(self: &Arc<Self>, client: &str) -> Waiter {
        let since = Instant::now();
        let mut s = self.lock();
        let nobody_waits = s.clients.values().all(|l| l.waiting.is_empty());
        if !s.busy && nobody_waits {
            s.busy = true;
            s.tick += 1;
            let tick = s.tick;
            s.clients.entry(client.to_owned()).or_default().last_served = tick;
            drop(s);
            return Waiter {
                queue: Arc::clone(self),
                client: client.to_owned(),
                seq: 0,
                state: WaiterState::Ready(Some(Turn::new(self, Duration::ZERO))),
            };
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        let line = s.clients.entry(client.to_owned()).or_default();
        line.waiting.push_back(Waiting { seq, since, tx });
        let depth = line.waiting.len();
        drop(s);
        self.observe(client, depth);
        Waiter {
            queue: Arc::clone(self),
            client: client.to_owned(),
            seq,
            state: WaiterState::Queued(rx),
        }
    }

    fn observe(&self, client: &str, depth: usize) {
        if let Some(o) = &self.observer {
            o.queue_depth(&self.model, client, depth);
        }
    }

    /// The turn ended: hand the model to the next in line, or free it.
    fn release(self: &Arc<Self>) {
        loop {
            let mut s = self.lock();
            // The least recently served client with someone waiting; among
            // clients never served (0), the one waiting longest.
            let next = s
                .clients
                .iter()
                .filter_map(|(name, l)| l.waiting.front().map(|w| (l.last_served, w.seq, name)))
                .min()
                .map(|(_, _, name)| name.clone());
            let Some(client) = next else {
                s.busy = false;
                // Lines of clients that wait for nothing are forgotten, so
                // the map does not grow with every client ever seen.
                s.clients.clear();
                return;
            };
            s.tick += 1;
            let tick = s.tick;
            let line = s.clients.get_mut(&client).expect("chosen from the map");
            line.last_served = tick;
            let Some(w) = line.waiting.pop_front() else {
                continue;
            };
            let depth = line.waiting.len();
            drop(s);
            self.observe(&client, depth);
            let turn = Turn::new(self, w.since.elapsed());
            match w.tx.send(turn) {
                Ok(()) => return,
                // The waiter went away between being chosen and now: its
                // turn goes to the next one.
                Err(turn) => turn.forget(),
            }
        }
    }

    /// A waiter that went away before its turn leaves the line.
    fn leave(&self, client: &str, seq: u64) {
        let mut s = self.lock();
        let Some(line) = s.clients.get_mut(client) else {
            return;
        };
        let before = line.waiting.len();
        line.waiting.retain(|w| w.seq != seq);
        let depth = line.waiting.len();
        drop(s);
        if depth != before {
            self.observe(client, depth);
        }
    }
}

/// The right to generate on the model; the next in line gets it when this
/// is dropped.
pub struct Turn {
    queue: Option<Arc<FairQueue>>,
    waited: Duration,
}

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("waited", &self.waited)
            .finish()
    }
}

impl Turn {
    fn new(queue: &Arc<FairQueue>, waited: Duration) -> Self {
        Self {
            queue: Some(Arc::clone(queue)),
            waited,
        }
    }

    /// How long the request waited in line.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Drops the turn without handing it on (its release is already
    /// being handled).
    fn forget(mut self) {
        self.queue = None;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(q) = self.queue.take() {
            q.release();
        }
    }
}

/// Resolves to a [`Turn`]; dropped before that, leaves the line.
pub struct Waiter {
    queue: Arc<FairQueue>,
    client: String,
    seq: u64,
    state: WaiterState,
}

enum WaiterState {
    Ready(Option<Turn>),
    Queued(oneshot::Receiver<Turn>),
    Done,
}

impl Waiter {
    /// Whether this request waits behind another (its turn was not free
    /// when it arrived): what a Responses stream announces as `queued`.
    pub fn is_queued(&self) -> bool {
        matches!(self.state, WaiterState::Queued(_))
    }
}

impl Future for Waiter {
    type Output = Turn;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Turn> {
        let this = &mut *self;
        match &mut this.state {
            WaiterState::Ready(t) => {
                let turn = t.take();
                this.state = WaiterState::Done;
                match turn {
                    Some(t) => Poll::Ready(t),
                    None => Poll::Pending,
                }
            }
            WaiterState::Queued(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(turn)) => {
                    this.state = WaiterState::Done;
                    Poll::Ready(turn)
                }
                // The sender is only dropped by `send`: unreachable, but a
                // waiter must never hang, so it takes a fresh place.
                Poll::Ready(Err(_)) => {
                    let again = this.queue.acquire(&this.client);
                    *this = again;
                    Pin::new(this).poll(cx)
                }
                Poll::Pending => Poll::Pending,
            },
            WaiterState::Done => Poll::Pending,
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if let WaiterState::Queued(_) = self.state {
            // Leave the line first; a turn already sent into the channel
            // is dropped with it afterwards and handed on.
            self.queue.leave(&self.client, self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// The turn, if the waiter has it now.
    fn now(w: &mut Waiter) -> Option<Turn> {
        w.now_or_never()
    }

    #[test]
    fn clients_take_turns_whatever_their_backlog() {
        let q = FairQueue::new("m", None);
        let running = now(&mut q.acquire("flood")).expect("free model: at once");
        let mut flood: Vec<Waiter> = (0..5).map(|_| q.acquire("flood")).collect();
        let mut other = q.acquire("other");
        assert_eq!(q.waiting(), 6);
        assert!(now(&mut other).is_none());

        let mut order = Vec::new();
        let mut current = running;
        loop {
            drop(current);
            let next = flood
                .iter_mut()
                .enumerate()
                .find_map(|(i, w)| now(w).map(|t| (format!("flood{i}"), t)))
                .or_else(|| now(&mut other).map(|t| ("other".to_owned(), t)));
            let Some((who, t)) = next else { break };
            order.push(who);
            current = t;
        }
        assert_eq!(
            order,
            ["other", "flood0", "flood1", "flood2", "flood3", "flood4"],
            "the other client goes first: the flooding one was just served"
        );
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn two_busy_clients_alternate() {
        let q = FairQueue::new("m", None);
        let t = now(&mut q.acquire("a")).unwrap();
        let mut waiters: Vec<(&str, Waiter)> = Vec::new();
        for _ in 0..3 {
            waiters.push(("a", q.acquire("a")));
        }
        for _ in 0..3 {
            waiters.push(("b", q.acquire("b")));
        }
        let mut order = Vec::new();
        let mut current = t;
        loop {
            drop(current);
            let Some((who, t)) = waiters
                .iter_mut()
                .find_map(|(who, w)| now(w).map(|t| (*who, t)))
            else {
                break;
            };
            order.push(who);
            current = t;
        }
        assert_eq!(order, ["b", "a", "b", "a", "b", "a"]);
    }

    #[test]
    fn a_waiter_that_goes_away_leaves_the_line() {
        let q = FairQueue::new("m", None);
        let t = now(&mut q.acquire("a")).unwrap();
        let gone = q.acquire("b");
        let mut stays = q.acquire("c");
        assert_eq!(q.waiting(), 2);
        drop(gone);
        assert_eq!(q.waiting(), 1);
        drop(t);
        let t = now(&mut stays).expect("c is next");
        drop(t);
        // Free again: the next comes at once, with no wait.
        let t = now(&mut q.acquire("a")).unwrap();
        assert_eq!(t.waited(), Duration::ZERO);
    }

    #[test]
    fn a_turn_sent_to_a_waiter_that_went_away_is_handed_on() {
        let q = FairQueue::new("m", None);
        let t = now(&mut q.acquire("a")).unwrap();
        let b = q.acquire("b");
        let mut c = q.acquire("c");
        drop(t); // b's turn now sits in its channel, not yet taken
        assert!(now(&mut c).is_none());
        drop(b);
        assert!(now(&mut c).is_some(), "c got the turn b never took");
    }
}
