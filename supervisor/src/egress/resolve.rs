//! Host-side name resolution for the gateway's dials, with a test seam:
//! `CLAWPEN_EGRESS_HOSTS=allowed.test=127.0.0.1,tls.test=127.0.0.1:8443`
//! makes those names resolve to those addresses (and, with a port, dials
//! that port whatever port the guest used), so tests can point names at
//! servers they run on loopback. Names not in the map use the system
//! resolver.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The test seam's environment variable.
pub const HOSTS_ENV: &str = "CLAWPEN_EGRESS_HOSTS";
/// How long a system lookup may take.
const LOOKUP_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("{HOSTS_ENV}: entry {entry:?}: {why}")]
pub struct HostsError {
    entry: String,
    why: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Resolver {
    overrides: HashMap<String, Vec<Override>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Override {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl Resolver {
    /// The system resolver with `$CLAWPEN_EGRESS_HOSTS` on top.
    pub fn from_env() -> Result<Self, HostsError> {
        match std::env::var(HOSTS_ENV) {
            Ok(spec) => Self::parse(&spec),
            Err(_) => Ok(Self::default()),
        }
    }

    /// `name=addr[|addr...],...`; `addr` is an IP or `IP:port` (`[v6]:port`).
    pub fn parse(spec: &str) -> Result<Self, HostsError> {
        let mut overrides: HashMap<String, Vec<Override>> = HashMap::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let err = |why| HostsError {
                entry: entry.to_string(),
                why,
            };
            let (name, addrs) = entry.split_once('=').ok_or_else(|| err("no '='"))?;
            let name = clawpen_api::egress::normalise_domain(name.trim())
                .ok_or_else(|| err("not a host name"))?;
            for addr in addrs.split('|').map(str::trim) {
                let parsed = match addr.parse::<SocketAddr>() {
                    Ok(socket) => Override::Socket(socket),
                    Err(_) => Override::Ip(addr.parse().map_err(|_| err("not an address"))?),
                };
                overrides.entry(name.clone()).or_default().push(parsed);
            }
        }
        Ok(Self { overrides })
    }

    /// Addresses to dial for `name` when the guest asked for `port`.
    pub async fn lookup(&self, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Some(list) = self.overrides.get(name) {
            return Ok(list
                .iter()
                .map(|o| match o {
                    Override::Ip(ip) => SocketAddr::new(*ip, port),
                    Override::Socket(socket) => *socket,
                })
                .collect());
        }
        match tokio::time::timeout(LOOKUP_LIMIT, tokio::net::lookup_host((name, port))).await {
            Ok(Ok(addrs)) => Ok(addrs.collect()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} s", LOOKUP_LIMIT.as_secs())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrides_win_and_may_fix_the_port() {
        let r = Resolver::parse("Allowed.test=127.0.0.1, tls.test=127.0.0.1:8443|[::1]:9").unwrap();
        assert_eq!(
            r.lookup("allowed.test", 80).await.unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(
            r.lookup("tls.test", 443).await.unwrap(),
            vec![
                "127.0.0.1:8443".parse().unwrap(),
                "[::1]:9".parse().unwrap()
            ]
        );
        assert!(Resolver::parse("x").is_err());
        assert!(Resolver::parse("a.test=nope").is_err());
    }
}
