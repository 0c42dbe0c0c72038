//! Egress rules and the egress log: what a VM may reach on the network, and
//! every connection it tried.
//!
//! Rules are checked here, by constructors that never panic, so the console
//! (wasm), the CLI and the server agree on what a valid rule is and a bad
//! rule is refused before anything is stored.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::vm::VmName;

/// Longest domain name (RFC 1035, without the trailing dot).
pub const MAX_DOMAIN_LEN: usize = 253;

/// Why a rule's field is not valid. `field` names the JSON field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub field: &'static str,
    pub message: String,
}

impl RuleError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// What a matching rule does. Deny beats allow; no match is deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressAction {
    Allow,
    Deny,
}

impl EgressAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressAction::Allow => "allow",
            EgressAction::Deny => "deny",
        }
    }
}

impl fmt::Display for EgressAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Transport protocol a rule is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressProto {
    Tcp,
    Udp,
}

impl EgressProto {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressProto::Tcp => "tcp",
            EgressProto::Udp => "udp",
        }
    }
}

impl fmt::Display for EgressProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for EgressProto {
    type Err = RuleError;
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw.to_ascii_lowercase().as_str() {
            "tcp" => Ok(EgressProto::Tcp),
            "udp" => Ok(EgressProto::Udp),
            _ => Err(RuleError::new(
                "proto",
                format!("protocol {raw:?} is not tcp or udp"),
            )),
        }
    }
}

/// An IP network: address and prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::y/n`, or a bare address (a single host).
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        let bad = |why: String| RuleError::new("target", why);
        let (addr_s, prefix_s) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| bad(format!("{addr_s:?} is not an IP address")))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_s {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| bad(format!("prefix length {p:?} must be 0 to {max}")))?,
        };
        let cidr = Self { addr, prefix };
        let network = cidr.network();
        if network != addr {
            return Err(bad(format!(
                "{raw} has host bits set; the network is {network}/{prefix}"
            )));
        }
        Ok(cidr)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(u32::from(a), self.prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(u128::from(a), self.prefix).into()),
        }
    }

    /// True if `ip` lies in this network. IPv4-mapped IPv6 addresses are
    /// compared as the IPv4 address they carry.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    /// True if every address of `other` is in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a rule is about: one exact name, every name under a domain, or a
/// network.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EgressTarget {
    /// `api.telegram.org`: exactly this name (lowercase, no trailing dot).
    Domain(String),
    /// `*.github.com`: any name ending in `.github.com` (not `github.com` itself).
    Wildcard(String),
    /// `140.82.112.0/20`: connections to a literal address in this network,
    /// and the exception that lets a name resolve into a private range.
    Cidr(Cidr),
}

impl EgressTarget {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(RuleError::new("target", "target is empty"));
        }
        if raw.contains('/') || raw.parse::<IpAddr>().is_ok() {
            return Cidr::parse(raw).map(EgressTarget::Cidr);
        }
        if let Some(suffix) = raw.strip_prefix("*.") {
            return match normalise_domain(suffix) {
                Some(suffix) => Ok(EgressTarget::Wildcard(suffix)),
                None => Err(bad_domain(raw)),
            };
        }
        if raw.contains('*') {
            return Err(RuleError::new(
                "target",
                format!(
                    "{raw:?}: a wildcard is only allowed as the first label, as in *.github.com"
                ),
            ));
        }
        Ok(EgressTarget::Domain(check_domain(raw)?))
    }

    /// True if this target names `name` (already normalised by [`normalise_domain`]).
    pub fn matches_name(&self, name: &str) -> bool {
        match self {
            EgressTarget::Domain(d) => d == name,
            EgressTarget::Wildcard(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            EgressTarget::Cidr(_) => false,
        }
    }
}

impl fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressTarget::Domain(d) => f.write_str(d),
            EgressTarget::Wildcard(s) => write!(f, "*.{s}"),
            EgressTarget::Cidr(c) => write!(f, "{c}"),
        }
    }
}

impl Serialize for EgressTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EgressTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        EgressTarget::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Lowercases a DNS name and drops one trailing dot; `None` if it is not a
/// valid host name (letters, digits, `-`, `_`, labels of 1 to 63 bytes).
pub fn normalise_domain(raw: &str) -> Option<String> {
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    if name.is_empty() || name.len() > MAX_DOMAIN_LEN {
        return None;
    }
    let ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    });
    ok.then_some(name)
}

fn bad_domain(raw: &str) -> RuleError {
    RuleError::new(
        "target",
        format!(
            "{raw:?} is not a domain name (letters, digits and '-' in dot-separated labels; \
             international names in their xn-- form), a *.wildcard or a CIDR"
        ),
    )
}

fn check_domain(raw: &str) -> Result<String, RuleError> {
    normalise_domain(raw).ok_or_else(|| bad_domain(raw))
}

/// A port or an inclusive range of ports. Written `443` or `8000-9000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(raw: &str) -> Result<Self, RuleError> {
        let raw = raw.trim();
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    RuleError::new(
                        "ports",
                        format!("{s:?} is not a port (1 to 65535) or a range like 8000-9000"),
                    )
                })
        };
        let (first, last) = match raw.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(raw)?;
                (p, p)
            }
        };
        if first > last {
            return Err(RuleError::new(
                "ports",
                format!("port range {raw:?} ends before it starts"),
            ));
        }
        Ok(Self { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub fn is_all(&self) -> bool {
        self.first <= 1 && self.last == u16::MAX
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (443) or a port range (\"8000-9000\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                PortRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                PortRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortRange::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Body of `POST /api/v1/vms/{name}/egress/rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEgressRule {
    pub action: EgressAction,
    pub target: EgressTarget,
    /// `None`: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    /// `None`: TCP for an allow rule (UDP, which no name's traffic is
    /// checked in, must be asked for), both for a deny rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<EgressProto>,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRule {
    pub id: u64,
    pub action: EgressAction,
    pub target: EgressTarget,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<EgressProto>,
    pub created_unix: u64,
}

impl EgressRule {
    /// True if the rule applies to this protocol and port (the target aside).
    /// A rule without a protocol allows TCP only (UDP to a name is relayed
    /// unchecked, so it must be asked for) but denies both.
    pub fn covers(&self, proto: EgressProto, port: u16) -> bool {
        let proto_ok = match self.proto {
            Some(p) => p == proto,
            None => proto == EgressProto::Tcp || self.action == EgressAction::Deny,
        };
        proto_ok && self.ports.is_none_or(|r| r.contains(port))
    }

    /// True if the rule was written without a port range or protocol.
    pub fn unrestricted(&self) -> bool {
        self.proto.is_none() && self.ports.is_none_or(|r| r.is_all())
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {} {}", self.id, self.action, self.target)?;
        if let Some(ports) = self.ports {
            write!(f, " port {ports}")?;
        }
        if let Some(proto) = self.proto {
            write!(f, " {proto}")?;
        }
        Ok(())
    }
}

/// Which traffic a log entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressLogProto {
    Tcp,
    Udp,
    /// A DNS question the gateway answered (UDP or TCP port 53 of the gateway).
    Dns,
    Icmp,
    /// Any IPv6 frame: the guest gets no IPv6 address and every one is dropped.
    Ipv6,
    /// An IPv4 packet no relay carries, dropped: a fragment (never
    /// reassembled), or a protocol other than TCP, UDP and ICMP.
    Ip,
    /// A line about the log itself: how many lines a VM over its rate
    /// limit had suppressed.
    Suppressed,
}

impl EgressLogProto {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressLogProto::Tcp => "tcp",
            EgressLogProto::Udp => "udp",
            EgressLogProto::Dns => "dns",
            EgressLogProto::Icmp => "icmp",
            EgressLogProto::Ipv6 => "ipv6",
            EgressLogProto::Ip => "ip",
            EgressLogProto::Suppressed => "suppressed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "tcp" => EgressLogProto::Tcp,
            "udp" => EgressLogProto::Udp,
            "dns" => EgressLogProto::Dns,
            "icmp" => EgressLogProto::Icmp,
            "ipv6" => EgressLogProto::Ipv6,
            "ip" => EgressLogProto::Ip,
            "suppressed" => EgressLogProto::Suppressed,
            _ => return None,
        })
    }
}

impl fmt::Display for EgressLogProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One decision of a VM's egress gateway. Flows are logged when they are
/// decided and again (same `id`) when they end, with the bytes moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressLogEntry {
    pub id: u64,
    pub vm: VmName,
    /// When the guest asked (its SYN, its DNS question), ms since the epoch.
    pub time_unix_ms: u64,
    pub proto: EgressLogProto,
    /// The name the guest asked for or connected to (through its synthetic address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The destination address: the literal address the guest used, or the
    /// host-side address a name was dialled at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub decision: EgressAction,
    /// The rule that decided; `None` for the default deny and built-in decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u64>,
    /// Why, in words (`rule #3 allow api.telegram.org`, `default deny`,
    /// `allowed.test resolves to loopback 127.0.0.1`, ...).
    pub reason: String,
    /// Guest → outside bytes; set when the flow has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Outside → guest bytes; set when the flow has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_unix_ms: Option<u64>,
}

/// Query of `GET /api/v1/vms/{name}/egress/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressLogQuery {
    /// Only entries with a larger id (to page forward).
    #[serde(default)]
    pub after: Option<u64>,
    /// At most this many, the newest ones (default 100, at most 10000).
    #[serde(default)]
    pub limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print_back() {
        for (raw, shown) in [
            ("api.telegram.org", "api.telegram.org"),
            ("API.Telegram.org.", "api.telegram.org"),
            ("*.github.com", "*.github.com"),
            ("140.82.112.0/20", "140.82.112.0/20"),
            ("10.0.0.1", "10.0.0.1/32"),
            ("fd00::/8", "fd00::/8"),
        ] {
            assert_eq!(EgressTarget::parse(raw).unwrap().to_string(), shown);
        }
        for bad in [
            "",
            "*",
            "a.*.com",
            "*.",
            "exa mple.com",
            "-a.com",
            "a..b",
            "140.82.112.5/20",
            "1.2.3.4/33",
            "::1/200",
            "x/8",
        ] {
            let err = EgressTarget::parse(bad).unwrap_err();
            assert_eq!(err.field, "target", "{bad:?}");
        }
    }

    #[test]
    fn wildcards_need_a_label_in_front() {
        let w = EgressTarget::parse("*.github.com").unwrap();
        assert!(w.matches_name("api.github.com"));
        assert!(w.matches_name("a.b.github.com"));
        assert!(!w.matches_name("github.com"));
        assert!(!w.matches_name("evilgithub.com"));
        let d = EgressTarget::parse("github.com").unwrap();
        assert!(d.matches_name("github.com") && !d.matches_name("api.github.com"));
    }

    #[test]
    fn cidr_contains_and_covers() {
        let net = Cidr::parse("140.82.112.0/20").unwrap();
        assert!(net.contains("140.82.127.255".parse().unwrap()));
        assert!(!net.contains("140.82.128.0".parse().unwrap()));
        assert!(net.contains("::ffff:140.82.112.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.covers(&net) && !net.covers(&all));
    }

    #[test]
    fn ports_parse_from_numbers_and_strings() {
        let r: NewEgressRule =
            serde_json::from_str(r#"{"action":"allow","target":"a.b","ports":443}"#).unwrap();
        assert_eq!(
            r.ports,
            Some(PortRange {
                first: 443,
                last: 443
            })
        );
        let r: NewEgressRule = serde_json::from_str(
            r#"{"action":"deny","target":"a.b","ports":"80-90","proto":"tcp"}"#,
        )
        .unwrap();
        assert_eq!(r.ports.unwrap().to_string(), "80-90");
        for bad in [r#""0""#, r#""90-80""#, "70000", r#""x""#, "-1"] {
            let json = format!(r#"{{"action":"allow","target":"a.b","ports":{bad}}}"#);
            assert!(
                serde_json::from_str::<NewEgressRule>(&json).is_err(),
                "{bad}"
            );
        }
    }
}
