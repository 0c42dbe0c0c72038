//! Deciding a flow from a VM's rules: deny beats allow, nothing matching is
//! deny, and special ranges (the host, private networks, metadata) need a rule
//! that names them.

use std::net::IpAddr;

use clawpen_api::{EgressAction, EgressProto, EgressRule, EgressTarget};

use super::net::{special_range, SpecialRange};

/// The outcome of a check and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// The rule that decided; `None` for the default and built-in decisions.
    pub rule: Option<u64>,
    pub reason: String,
}

impl Verdict {
    pub fn allow(rule: Option<u64>, reason: impl Into<String>) -> Self {
        Self {
            allow: true,
            rule,
            reason: reason.into(),
        }
    }

    pub fn deny(rule: Option<u64>, reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            rule,
            reason: reason.into(),
        }
    }

    fn by(rule: &EgressRule) -> Self {
        Self {
            allow: rule.action == EgressAction::Allow,
            rule: Some(rule.id),
            reason: format!("rule {rule}"),
        }
    }
}

/// One VM's rules, as the gateway reads them for each new flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<EgressRule>,
}

impl RuleSet {
    pub fn new(rules: Vec<EgressRule>) -> Self {
        Self { rules }
    }

    fn first(
        &self,
        action: EgressAction,
        pred: impl Fn(&EgressRule) -> bool,
    ) -> Option<&EgressRule> {
        self.rules.iter().find(|r| r.action == action && pred(r))
    }

    /// Deny first, then allow, else the default deny.
    fn decide(&self, pred: impl Fn(&EgressRule) -> bool, default: &str) -> Verdict {
        if let Some(rule) = self.first(EgressAction::Deny, &pred) {
            return Verdict::by(rule);
        }
        if let Some(rule) = self.first(EgressAction::Allow, &pred) {
            return Verdict::by(rule);
        }
        Verdict::deny(None, default)
    }

    /// May the guest learn an address for `name`? Yes if some allow rule names
    /// it (on any port) and no deny rule shuts it out entirely; connections
    /// are then checked port by port.
    pub fn resolve(&self, name: &str) -> Verdict {
        if let Some(rule) = self.first(EgressAction::Deny, |r| {
            r.target.matches_name(name) && r.unrestricted()
        }) {
            return Verdict::by(rule);
        }
        match self.first(EgressAction::Allow, |r| r.target.matches_name(name)) {
            Some(rule) => Verdict::by(rule),
            None => Verdict::deny(None, "default deny: no rule names it"),
        }
    }

    /// Whether the rule `rule` (the one that allowed a flow) names `port`
    /// in a port range of its own, rather than allowing every port: there
    /// the gateway lets any protocol through uninspected (H1).
    pub fn names_port(&self, rule: Option<u64>, port: u16) -> bool {
        self.rules
            .iter()
            .any(|r| Some(r.id) == rule && r.ports.is_some_and(|p| !p.is_all() && p.contains(port)))
    }

    /// A connection to a name (through its synthetic address).
    pub fn connect_name(&self, name: &str, proto: EgressProto, port: u16) -> Verdict {
        self.decide(
            |r| r.target.matches_name(name) && r.covers(proto, port),
            "default deny: no rule allows this name and port",
        )
    }

    /// The inference service at the gateway (`name` or `gateway`, `port`):
    /// allowed by default, unless a deny rule names it or holds the gateway's
    /// address.
    pub fn inference(&self, name: &str, gateway: IpAddr, port: u16) -> Verdict {
        let denied = self.first(EgressAction::Deny, |r| {
            (r.target.matches_name(name) || cidr_matches(r, gateway))
                && r.covers(EgressProto::Tcp, port)
        });
        match denied {
            Some(rule) => Verdict::by(rule),
            None => Verdict::allow(None, "built-in: the inference service"),
        }
    }

    /// A connection to a literal address: CIDR rules only, and special ranges
    /// only through a rule that names them.
    pub fn connect_ip(&self, ip: IpAddr, proto: EgressProto, port: u16) -> Verdict {
        let verdict = self.decide(
            |r| cidr_matches(r, ip) && r.covers(proto, port),
            "default deny: no CIDR rule allows this address and port",
        );
        if !verdict.allow {
            return verdict;
        }
        match self.special_check(ip, proto, port) {
            Ok(()) => verdict,
            Err(deny) => deny,
        }
    }

    /// The address a name resolved to on the host, before it is dialled: deny
    /// CIDR rules apply, and a special range (DNS rebinding towards the host,
    /// the LAN or metadata) needs a rule that names it.
    pub fn check_resolved(&self, ip: IpAddr, proto: EgressProto, port: u16) -> Result<(), Verdict> {
        if let Some(rule) = self.first(EgressAction::Deny, |r| {
            cidr_matches(r, ip) && r.covers(proto, port)
        }) {
            return Err(Verdict {
                allow: false,
                rule: Some(rule.id),
                reason: format!("resolves to {ip}, denied by rule {rule}"),
            });
        }
        self.special_check(ip, proto, port)
    }

    /// Ok if `ip` is not special, or an allow rule's network lies inside its
    /// special range and contains it. `0.0.0.0/0` does not name loopback;
    /// `127.0.0.0/8` does.
    fn special_check(&self, ip: IpAddr, proto: EgressProto, port: u16) -> Result<(), Verdict> {
        let Some(SpecialRange { cidr: block, kind }) = special_range(ip) else {
            return Ok(());
        };
        let named = self.first(EgressAction::Allow, |r| match &r.target {
            EgressTarget::Cidr(c) => block.covers(c) && c.contains(ip) && r.covers(proto, port),
            _ => false,
        });
        match named {
            Some(_) => Ok(()),
            None => Err(Verdict::deny(
                None,
                format!("{ip} is {kind} ({block}); no allow rule names that range"),
            )),
        }
    }
}

fn cidr_matches(rule: &EgressRule, ip: IpAddr) -> bool {
    matches!(&rule.target, EgressTarget::Cidr(c) if c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawpen_api::PortRange;

    fn rule(id: u64, action: EgressAction, target: &str, ports: Option<&str>) -> EgressRule {
        EgressRule {
            id,
            action,
            target: EgressTarget::parse(target).unwrap(),
            ports: ports.map(|p| PortRange::parse(p).unwrap()),
            proto: None,
            created_unix: 0,
        }
    }

    use EgressAction::{Allow, Deny};
    use EgressProto::Tcp;

    #[test]
    fn default_is_deny() {
        let rules = RuleSet::default();
        assert!(!rules.resolve("a.test").allow);
        assert!(!rules.connect_name("a.test", Tcp, 443).allow);
        assert!(
            !rules
                .connect_ip("140.82.112.1".parse().unwrap(), Tcp, 443)
                .allow
        );
    }

    #[test]
    fn deny_beats_allow_and_ports_narrow() {
        let rules = RuleSet::new(vec![
            rule(1, Allow, "*.github.com", None),
            rule(2, Deny, "evil.github.com", None),
            rule(3, Allow, "api.telegram.org", Some("443")),
            rule(4, Deny, "api.telegram.org", Some("80")),
        ]);
        assert_eq!(rules.resolve("api.github.com").rule, Some(1));
        let v = rules.resolve("evil.github.com");
        assert!(!v.allow && v.rule == Some(2));
        assert!(
            rules.resolve("api.telegram.org").allow,
            "a port-limited deny keeps the name"
        );
        assert!(rules.connect_name("api.telegram.org", Tcp, 443).allow);
        assert_eq!(
            rules.connect_name("api.telegram.org", Tcp, 80).rule,
            Some(4)
        );
        let v = rules.connect_name("api.telegram.org", Tcp, 8443);
        assert!(!v.allow && v.rule.is_none());
        assert!(!rules.resolve("github.com").allow);
    }

    #[test]
    fn a_rule_without_a_protocol_allows_tcp_only_and_denies_both() {
        // H6: UDP to a name (QUIC with any SNI) only through a UDP rule.
        let rules = RuleSet::new(vec![rule(1, Allow, "a.test", None)]);
        assert!(rules.connect_name("a.test", Tcp, 443).allow);
        assert!(!rules.connect_name("a.test", EgressProto::Udp, 443).allow);
        let cidr = RuleSet::new(vec![rule(1, Allow, "140.82.0.0/16", None)]);
        let ip: IpAddr = "140.82.112.1".parse().unwrap();
        assert!(cidr.connect_ip(ip, Tcp, 443).allow);
        assert!(!cidr.connect_ip(ip, EgressProto::Udp, 443).allow);
        let udp = RuleSet::new(vec![EgressRule {
            proto: Some(EgressProto::Udp),
            ..rule(1, Allow, "a.test", None)
        }]);
        assert!(udp.connect_name("a.test", EgressProto::Udp, 443).allow);
        let denied = RuleSet::new(vec![
            rule(1, Deny, "a.test", None),
            EgressRule {
                proto: Some(EgressProto::Udp),
                ..rule(2, Allow, "a.test", None)
            },
        ]);
        assert_eq!(
            denied.connect_name("a.test", EgressProto::Udp, 53).rule,
            Some(1)
        );
    }

    #[test]
    fn inference_is_allowed_unless_denied() {
        let gw: IpAddr = "10.200.0.1".parse().unwrap();
        let name = "inference.clawpen.internal";
        assert!(RuleSet::default().inference(name, gw, 80).allow);
        let by_name = RuleSet::new(vec![rule(4, Deny, name, None)]);
        assert_eq!(by_name.inference(name, gw, 80).rule, Some(4));
        let by_cidr = RuleSet::new(vec![rule(5, Deny, "10.200.0.0/24", Some("80"))]);
        assert!(!by_cidr.inference(name, gw, 80).allow);
    }

    #[test]
    fn special_ranges_need_a_rule_that_names_them() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let meta: IpAddr = "169.254.169.254".parse().unwrap();
        let everything = RuleSet::new(vec![rule(1, Allow, "0.0.0.0/0", None)]);
        assert!(
            everything
                .connect_ip("140.82.112.1".parse().unwrap(), Tcp, 443)
                .allow
        );
        assert!(!everything.connect_ip(lo, Tcp, 80).allow);
        assert!(!everything.connect_ip(meta, Tcp, 80).allow);
        assert!(everything.check_resolved(lo, Tcp, 80).is_err());
        let named = RuleSet::new(vec![rule(1, Allow, "127.0.0.0/8", Some("8000-9000"))]);
        assert!(named.connect_ip(lo, Tcp, 8080).allow);
        assert!(!named.connect_ip(lo, Tcp, 22).allow);
        assert!(named.check_resolved(lo, Tcp, 8080).is_ok());
        assert!(named.check_resolved(meta, Tcp, 8080).is_err());
        let deny = RuleSet::new(vec![rule(7, Deny, "140.82.112.0/20", None)]);
        assert_eq!(
            deny.check_resolved("140.82.112.9".parse().unwrap(), Tcp, 443)
                .unwrap_err()
                .rule,
            Some(7)
        );
    }
}
