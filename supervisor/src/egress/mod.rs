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
//! Per-VM inference API keys are a later step: the inference flow is dialled
//! in `host::dial` knowing which VM it serves, which is where a key would be
//! added (an HTTP-aware forwarder instead of the plain TCP one).

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
mod tests;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use clawpen_api::{EgressLogEntry, EgressRule, NewEgressRule, VmName};
use tokio::sync::watch;

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
}

impl Egress {
    /// Needs a tokio runtime (it starts the log writer).
    pub fn new(store: Arc<Store>, events: EventBus) -> Result<Arc<Self>, EgressError> {
        let resolver = resolve::Resolver::from_env()?;
        let next_id = store.max_egress_log_id()? + 1;
        Ok(Arc::new(Self {
            log: log::spawn_writer(store.clone(), events),
            store,
            ids: Arc::new(AtomicU64::new(next_id)),
            resolver: Arc::new(resolver),
            inference: watch::channel(None).0,
            live: Mutex::new(HashMap::new()),
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
        Ok(gateway::spawn(gateway::GatewayContext {
            vm: vm.clone(),
            link,
            rules: receiver,
            fake,
            ids: self.ids.clone(),
            resolver: self.resolver.clone(),
            inference: self.inference.subscribe(),
            log: self.log.clone(),
        }))
    }
}
