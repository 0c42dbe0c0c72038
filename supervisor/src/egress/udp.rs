//! The host side of the guest's allowed UDP flows: one connected host
//! socket per flow (so only the target's answers come back), opened after
//! the same resolve-time checks as a TCP dial, closed when the stack says
//! the flow went idle. Datagrams are never queued without bound: a few wait
//! while the socket opens, later ones are dropped when the socket is full,
//! as UDP may.

use std::collections::HashMap;
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
    events: mpsc::UnboundedSender<UdpEvent>,
}

impl UdpRelays {
    pub fn new(events: mpsc::UnboundedSender<UdpEvent>) -> Self {
        Self {
            relays: HashMap::new(),
            events,
        }
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
        let task = tokio::spawn(async move {
            let socket = match host::open_udp(target, &rules, &resolver).await {
                Ok((socket, _)) => Arc::new(socket),
                Err(e) => {
                    let _ = events.send(UdpEvent::Failed(key, e));
                    return;
                }
            };
            let _ = socket.send(&first).await;
            if events.send(UdpEvent::Opened(key, socket.clone())).is_err() {
                return;
            }
            let mut buf = vec![0u8; MAX_DATAGRAM];
            // Errors such as ICMP port unreachable are not fatal for UDP.
            while let Ok(n) = socket.recv(&mut buf).await {
                let reply = Bytes::copy_from_slice(&buf[..n]);
                if events.send(UdpEvent::Reply(key, reply)).is_err() {
                    return;
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
