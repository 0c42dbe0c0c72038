//! The host side of the guest's allowed UDP flows: one connected host
//! socket per flow (so only the target's answers come back), opened after
//! the same resolve-time checks as a TCP dial, closed when the stack says
//! the flow went idle. Datagrams are never queued without bound: a few wait
//! while the socket opens, later ones are dropped when the socket is full,
//! as UDP may.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::host;
use super::resolve::Resolver;
use super::rules::RuleSet;
use super::stack::{DialError, DialTarget, UdpKey};

/// Datagrams kept per flow while its socket opens.
const PENDING: usize = 16;
/// Largest datagram read from the host.
const MAX_DATAGRAM: usize = 65_535;
/// Relay events the gateway loop may have waiting, for all of a VM's UDP
/// flows. A host reply that finds the queue full is dropped (and counted):
/// UDP may lose datagrams, and a guest that stops taking frames must not
/// make its replies pile up in the supervisor (H8).
pub const EVENT_QUEUE: usize = 256;

/// What the relay reports back to the gateway loop.
#[derive(Debug)]
pub enum UdpEvent {
    Opened(UdpKey, Arc<UdpSocket>),
    Failed(UdpKey, DialError),
    Reply(UdpKey, Bytes),
}

struct Relay {
    socket: Option<Arc<UdpSocket>>,
    pending: Vec<Bytes>,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every open UDP flow of one VM.
pub struct UdpRelays {
    relays: HashMap<UdpKey, Relay>,
    events: mpsc::Sender<UdpEvent>,
    /// Host replies dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

impl UdpRelays {
    /// Relays whose events go to `events` (a queue of [`EVENT_QUEUE`]).
    pub fn new(events: mpsc::Sender<UdpEvent>) -> Self {
        Self {
            relays: HashMap::new(),
            events,
            dropped: Arc::default(),
        }
    }

    /// Host replies dropped so far because the guest was not taking them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Opens the host socket for a new flow and sends its first datagram.
    pub fn open(
        &mut self,
        key: UdpKey,
        target: DialTarget,
        first: Bytes,
        rules: Arc<RuleSet>,
        resolver: Arc<Resolver>,
    ) {
        let events = self.events.clone();
        let dropped = self.dropped.clone();
        let task = tokio::spawn(async move {
            let socket = match host::open_udp(target, &rules, &resolver).await {
                Ok((socket, _)) => Arc::new(socket),
                Err(e) => {
                    let _ = events.send(UdpEvent::Failed(key, e)).await;
                    return;
                }
            };
            let _ = socket.send(&first).await;
            if events
                .send(UdpEvent::Opened(key, socket.clone()))
                .await
                .is_err()
            {
                return;
            }
            let mut buf = vec![0u8; MAX_DATAGRAM];
            // Errors such as ICMP port unreachable are not fatal for UDP.
            while let Ok(n) = socket.recv(&mut buf).await {
                let reply = Bytes::copy_from_slice(&buf[..n]);
                match events.try_send(UdpEvent::Reply(key, reply)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        self.relays.insert(
            key,
            Relay {
                socket: None,
                pending: Vec::new(),
                task,
            },
        );
    }

    /// The flow's socket is ready: what waited goes out.
    pub fn opened(&mut self, key: UdpKey, socket: Arc<UdpSocket>) {
        if let Some(relay) = self.relays.get_mut(&key) {
            for datagram in relay.pending.drain(..) {
                let _ = socket.try_send(&datagram);
            }
            relay.socket = Some(socket);
        }
    }

    /// A further datagram of a flow.
    pub fn send(&mut self, key: UdpKey, payload: Bytes) {
        let Some(relay) = self.relays.get_mut(&key) else {
            return;
        };
        match &relay.socket {
            Some(socket) => {
                let _ = socket.try_send(&payload);
            }
            None if relay.pending.len() < PENDING => relay.pending.push(payload),
            None => {}
        }
    }

    pub fn close(&mut self, key: UdpKey) {
        self.relays.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// H8: a host that floods replies while the gateway loop takes none
    /// (its guest stopped taking frames) fills the bounded queue and the
    /// rest is dropped and counted, not held.
    #[tokio::test]
    async fn replies_nobody_takes_are_dropped_not_queued() {
        let host = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (events, mut taken) = mpsc::channel(EVENT_QUEUE);
        let mut relays = UdpRelays::new(events);
        let key = (41000, std::net::Ipv4Addr::new(198, 18, 0, 1), 5000);
        relays.open(
            key,
            DialTarget::Addr(host.local_addr().unwrap()),
            Bytes::from_static(b"hello"),
            Arc::new(RuleSet::default()),
            Arc::new(Resolver::parse("").unwrap()),
        );
        // the relay's first datagram tells the host where to answer
        let mut buf = [0u8; 16];
        let (_, relay_addr) = host.recv_from(&mut buf).await.unwrap();
        assert!(matches!(taken.recv().await, Some(UdpEvent::Opened(..))));
        let flood = EVENT_QUEUE * 8;
        for _ in 0..flood {
            host.send_to(b"reply", relay_addr).await.unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while taken.len() + (relays.dropped() as usize) < flood / 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay read too little"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(taken.len() <= EVENT_QUEUE, "{} queued", taken.len());
        assert!(relays.dropped() > 0);
    }
}
