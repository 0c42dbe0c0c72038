//! The egress gateway: every VM's only NIC ends here, in a userspace network
//! stack the supervisor runs per VM, and nothing leaves unless the VM's rules
//! allow it. Default deny; every decision is logged and announced.
//!
//! - `net` — the guest's fixed addresses and the special ranges.
//! - `rules` — deciding a flow from a VM's rules.
//! - `wire`, `dhcp`, `dns`, `sniff` — checked parsers and builders for the
//!   bytes the guest sends (frames, DHCP, DNS, TLS ClientHello, HTTP).
//! - `fakeip` — synthetic addresses that carry a name into a connection.
//! - `stack` — the synchronous frame handler on smoltcp (fuzzed).
//! - `link` — guest frames over the VMM's link: QEMU's length-prefixed
//!   stream or VZ's datagram socketpair.
//! - `gateway`, `host`, `resolve` — the async shell: the VMM's socket, host
//!   connections, name resolution (with the `CLAWPEN_EGRESS_HOSTS` test seam).
//! - `log` — the batched log writer.
//!
//! A VM's inference flow is dialled in `host::dial`, which first writes
//! the line naming the VM (`clawpen_inference::guest_link`): the service
//! accepts a VM's key only on its own VM's connections.

mod dhcp;
mod dns;
mod fakeip;
mod gateway;
mod host;
mod http_stream;
mod link;
mod log;
pub mod net;
mod resolve;
mod rules;
mod sniff;
mod stack;
#[cfg(test)]
pub(crate) mod tests;
mod udp;
mod wire;

/// The parsers of what a guest sends (frames, DHCP, DNS, the first bytes of
/// a connection, HTTP request streams), re-exported for the fuzz targets
/// (`fuzz/`): the library re-exports this module, and nothing else of
/// `egress`.
pub mod fuzzing {
    pub use super::dhcp::reply as dhcp_reply;
    pub use super::dns::{answer as dns_answer, DnsPolicy};
    pub use super::http_stream::HttpRequests;
    pub use super::rules::Verdict;
    pub use super::sniff::{http_host, tls_sni, Sniffed};
    pub use super::wire::{classify, GuestFrame, Ipv4Frame, L4};
}

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use clawpen_api::{EgressLogEntry, EgressRule, NewEgressRule, VmName};
use tokio::sync::{mpsc, watch};

use crate::events::EventBus;
use crate::store::{Store, StoreError};
pub use gateway::GatewayHandle;
#[cfg(target_os = "macos")]
pub use link::datagram_pair;
pub use link::LinkSource;
pub use net::guest_inference_url;
pub use resolve::HostsError;
use rules::RuleSet;

/// Most log entries one API call returns.
pub const MAX_LOG_PAGE: u32 = 10_000;
/// Log entries returned when the caller does not say.
pub const DEFAULT_LOG_PAGE: u32 = 100;

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("VM {vm} has no egress rule #{id}")]
    NoRule { vm: VmName, id: u64 },
    #[error(transparent)]
    Hosts(#[from] HostsError),
    #[error("cannot open a loopback port for a forward: {0}")]
    Forward(std::io::Error),
    #[error("cannot start the egress gateway of VM {vm}: {source}")]
    Spawn { vm: VmName, source: std::io::Error },
}

/// The egress subsystem: rules (in the store, pushed live to gateways), the
/// log writer, and a gateway per running VM.
pub struct Egress {
    store: Arc<Store>,
    log: log::LogSender,
    ids: Arc<AtomicU64>,
    resolver: Arc<resolve::Resolver>,
    inference: watch::Sender<Option<SocketAddr>>,
    /// Live rule sets of VMs that have had a gateway; a change is sent here
    /// after it is stored, so it applies to the next connection.
    live: Mutex<HashMap<VmName, watch::Sender<Arc<RuleSet>>>>,
    /// Where each attached VM's gateway takes forwarded host connections.
    forward_to: Arc<Mutex<HashMap<VmName, mpsc::UnboundedSender<gateway::Forwarded>>>>,
    /// Open forwards: (VM, guest port) → host address.
    forwards: Mutex<HashMap<(VmName, u16), Forward>>,
    /// Where a new forward is announced (the console links to it).
    events: EventBus,
}

/// A loopback listener whose connections go to a guest port.
struct Forward {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Where forwards into guests listen, the first that binds: a loopback
/// address of their own, never the console's. Browsers send a host's
/// cookies to every port of that host, so a forward on the console's
/// address would hand the console's session cookie to a server the guest
/// controls. 127.0.0.2 is loopback on Linux; macOS has only 127.0.0.1 on
/// `lo0` unless aliased, so there `[::1]` is used. `clawpen up` refuses to
/// serve the console on either.
pub const FORWARD_IPS: [IpAddr; 2] = [
    IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2)),
    IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
];

async fn bind_forward() -> Result<tokio::net::TcpListener, EgressError> {
    let mut last = None;
    for ip in FORWARD_IPS {
        match tokio::net::TcpListener::bind((ip, 0)).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(EgressError::Forward(
        last.expect("FORWARD_IPS is not empty"),
    ))
}

impl Egress {
    /// Needs a tokio runtime (it starts the log writer).
    pub fn new(store: Arc<Store>, events: EventBus) -> Result<Arc<Self>, EgressError> {
        let resolver = resolve::Resolver::from_env()?;
        let next_id = store.max_egress_log_id()? + 1;
        Ok(Arc::new(Self {
            log: log::spawn_writer(store.clone(), events.clone()),
            store,
            ids: Arc::new(AtomicU64::new(next_id)),
            resolver: Arc::new(resolver),
            inference: watch::channel(None).0,
            live: Mutex::new(HashMap::new()),
            forward_to: Arc::default(),
            forwards: Mutex::new(HashMap::new()),
            events,
        }))
    }

    /// Where the guest's fixed inference address forwards to.
    pub fn set_inference_addr(&self, addr: SocketAddr) {
        self.inference.send_replace(Some(addr));
    }

    pub fn rules(&self, vm: &VmName) -> Result<Vec<EgressRule>, EgressError> {
        Ok(self.store.egress_rules(vm)?)
    }

    /// Stores a rule (already checked by its constructors) and applies it.
    pub fn add_rule(&self, vm: &VmName, rule: &NewEgressRule) -> Result<EgressRule, EgressError> {
        let stored = self.store.insert_egress_rule(vm, rule)?;
        self.push_rules(vm)?;
        tracing::info!(vm = %vm, rule = %stored, "egress rule added");
        Ok(stored)
    }

    pub fn remove_rule(&self, vm: &VmName, id: u64) -> Result<(), EgressError> {
        if !self.store.delete_egress_rule(vm, id)? {
            return Err(EgressError::NoRule { vm: vm.clone(), id });
        }
        self.push_rules(vm)?;
        tracing::info!(vm = %vm, id, "egress rule removed");
        Ok(())
    }

    pub fn log_page(
        &self,
        vm: &VmName,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<Vec<EgressLogEntry>, EgressError> {
        let limit = limit.unwrap_or(DEFAULT_LOG_PAGE).clamp(1, MAX_LOG_PAGE);
        Ok(self.store.egress_log(vm, after, limit)?)
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<VmName, watch::Sender<Arc<RuleSet>>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the stored rules to the VM's gateway, if it has one.
    fn push_rules(&self, vm: &VmName) -> Result<(), EgressError> {
        let rules = Arc::new(RuleSet::new(self.store.egress_rules(vm)?));
        if let Some(tx) = self.live().get(vm) {
            tx.send_replace(rules);
        }
        Ok(())
    }

    /// Starts the gateway for a VM's link: QEMU's `net.sock` (a fresh VMM or
    /// a re-adopted one) or the gateway's end of VZ's datagram socketpair.
    /// Dropping the handle stops it.
    pub fn attach_link(&self, vm: &VmName, link: LinkSource) -> Result<GatewayHandle, EgressError> {
        let rules = Arc::new(RuleSet::new(self.store.egress_rules(vm)?));
        let receiver = {
            let mut live = self.live();
            let tx = live
                .entry(vm.clone())
                .or_insert_with(|| watch::channel(rules.clone()).0);
            tx.send_replace(rules);
            tx.subscribe()
        };
        let fake = fakeip::FakeIps::from_pairs(self.store.egress_names(vm)?);
        let (forward_tx, forwards) = mpsc::unbounded_channel();
        self.forward_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm.clone(), forward_tx);
        gateway::spawn(gateway::GatewayContext {
            vm: vm.clone(),
            link,
            rules: receiver,
            fake,
            ids: self.ids.clone(),
            resolver: self.resolver.clone(),
            inference: self.inference.subscribe(),
            log: self.log.for_vm(vm.clone(), self.ids.clone()),
            forwards,
        })
        .map_err(|source| EgressError::Spawn {
            vm: vm.clone(),
            source,
        })
    }

    /// A loopback address whose connections reach the VM's `guest_port`
    /// through its gateway (the same one on a second call), on one of
    /// [`FORWARD_IPS`]. The guest is reachable from the host this way only,
    /// never from the LAN; while the VM has no gateway, connections are
    /// closed at once.
    pub async fn forward(&self, vm: &VmName, guest_port: u16) -> Result<SocketAddr, EgressError> {
        let key = (vm.clone(), guest_port);
        if let Some(existing) = self.lock_forwards().get(&key) {
            return Ok(existing.addr);
        }
        let listener = bind_forward().await?;
        let addr = listener.local_addr().map_err(EgressError::Forward)?;
        let routes = self.forward_to.clone();
        let name = vm.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let route = routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    .cloned();
                match route {
                    Some(tx) if tx.send((stream, guest_port)).is_ok() => {}
                    _ => {
                        tracing::debug!(vm = %name, guest_port, "forward: the VM has no network now")
                    }
                }
            }
        });
        let mut forwards = self.lock_forwards();
        // A racing call may have opened one meanwhile: keep the first.
        let forward = forwards.entry(key).or_insert(Forward { addr, accept });
        let opened = forward.addr;
        drop(forwards);
        if opened == addr {
            self.events.publish(clawpen_api::Event::Forward {
                name: vm.clone(),
                forward: clawpen_api::ForwardInfo {
                    guest_port,
                    host_addr: addr.to_string(),
                },
            });
        }
        Ok(opened)
    }

    /// The VM's open forwards: (guest port, host address), by port.
    pub fn forwards(&self, vm: &VmName) -> Vec<(u16, SocketAddr)> {
        let mut list: Vec<(u16, SocketAddr)> = self
            .lock_forwards()
            .iter()
            .filter(|((name, _), _)| name == vm)
            .map(|((_, port), f)| (*port, f.addr))
            .collect();
        list.sort();
        list
    }

    /// Closes the VM's forwards (it was deleted).
    pub fn forget(&self, vm: &VmName) {
        self.lock_forwards().retain(|(name, _), _| name != vm);
        self.forward_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm);
    }

    fn lock_forwards(&self) -> std::sync::MutexGuard<'_, HashMap<(VmName, u16), Forward>> {
        self.forwards.lock().unwrap_or_else(|p| p.into_inner())
    }
}
