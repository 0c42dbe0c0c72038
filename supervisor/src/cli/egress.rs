//! `clawpen egress allow|deny|rm|ls|log VM ...`: a VM's egress rules and log.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use clawpen_api::{
    EgressAction, EgressLogEntry, EgressProto, EgressRule, EgressTarget, Event, NewEgressRule,
    PortRange, VmName,
};
use futures::StreamExt;

use super::client::Client;
use super::CliError;

#[derive(Subcommand)]
pub enum EgressCommand {
    /// Allow connections to a domain (`api.telegram.org`), a wildcard
    /// (`*.github.com`) or a CIDR (`140.82.112.0/20`). Applies at once.
    Allow(RuleArgs),
    /// Deny them (deny beats allow; anything not allowed is denied anyway).
    Deny(RuleArgs),
    /// Remove a rule by its id (see `ls`).
    Rm {
        #[command(flatten)]
        vm: VmArgs,
        id: u64,
    },
    /// List a VM's rules.
    Ls(VmArgs),
    /// Print a VM's egress log: every connection, DNS question and dropped frame.
    Log {
        #[command(flatten)]
        vm: VmArgs,
        /// Keep printing new entries as they happen.
        #[arg(long, short)]
        follow: bool,
        /// How many of the latest entries to print first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Args)]
pub struct VmArgs {
    name: String,
    /// Supervisor URL (default: the one `clawpen up` recorded).
    #[arg(long, env = "CLAWPEN_URL")]
    url: Option<String>,
}

impl VmArgs {
    fn client(self, home: Option<PathBuf>) -> Result<(VmName, Client), CliError> {
        let name = VmName::parse(&self.name).map_err(|e| CliError::BadInput(e.to_string()))?;
        Ok((name, Client::new(home, self.url)?))
    }
}

#[derive(Args)]
pub struct RuleArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Domain, *.wildcard or CIDR.
    target: String,
    /// A port (443) or a range (8000-9000); default every port.
    #[arg(long)]
    port: Option<String>,
    /// tcp or udp; default: tcp for allow (UDP must be asked for), both for deny.
    #[arg(long)]
    proto: Option<String>,
}

impl RuleArgs {
    /// The rule, checked here first so bad input exits 2 before any request.
    fn rule(&self, action: EgressAction) -> Result<NewEgressRule, CliError> {
        let bad = |e: clawpen_api::RuleError| CliError::BadInput(e.to_string());
        Ok(NewEgressRule {
            action,
            target: EgressTarget::parse(&self.target).map_err(bad)?,
            ports: self
                .port
                .as_deref()
                .map(PortRange::parse)
                .transpose()
                .map_err(bad)?,
            proto: self
                .proto
                .as_deref()
                .map(str::parse::<EgressProto>)
                .transpose()
                .map_err(bad)?,
        })
    }
}

pub async fn run(home: Option<PathBuf>, command: EgressCommand) -> Result<(), CliError> {
    match command {
        EgressCommand::Allow(args) => add(home, args, EgressAction::Allow).await,
        EgressCommand::Deny(args) => add(home, args, EgressAction::Deny).await,
        EgressCommand::Rm { vm, id } => {
            let (name, client) = vm.client(home)?;
            client
                .delete(&format!("/vms/{name}/egress/rules/{id}"))
                .await?;
            println!("{name}: rule #{id} removed");
            Ok(())
        }
        EgressCommand::Ls(vm) => {
            let (name, client) = vm.client(home)?;
            let rules: Vec<EgressRule> = client.get(&format!("/vms/{name}/egress/rules")).await?;
            println!(
                "{:>5} {:<6} {:<40} {:<12} {:<5}",
                "ID", "ACTION", "TARGET", "PORTS", "PROTO"
            );
            for r in &rules {
                println!(
                    "{:>5} {:<6} {:<40} {:<12} {:<5}",
                    r.id,
                    r.action,
                    r.target.to_string(),
                    r.ports
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "any".into()),
                    r.proto
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "any".into()),
                );
            }
            if rules.is_empty() {
                println!("(no rules: everything is denied)");
            }
            Ok(())
        }
        EgressCommand::Log { vm, follow, limit } => log(home, vm, follow, limit).await,
    }
}

async fn add(home: Option<PathBuf>, args: RuleArgs, action: EgressAction) -> Result<(), CliError> {
    let rule = args.rule(action)?;
    let (name, client) = args.vm.client(home)?;
    let body = serde_json::to_value(&rule).map_err(|e| CliError::Other(e.into()))?;
    let stored: EgressRule = client
        .post(&format!("/vms/{name}/egress/rules"), &body)
        .await?;
    println!("{name}: {stored}");
    Ok(())
}

fn line(e: &EgressLogEntry) -> String {
    let time = e.time_unix_ms / 1000;
    let what = match (&e.name, &e.addr) {
        (Some(name), Some(addr)) => format!("{name} ({addr})"),
        (Some(name), None) => name.clone(),
        (None, Some(addr)) => addr.clone(),
        (None, None) => "-".into(),
    };
    let port = e.port.map(|p| format!(":{p}")).unwrap_or_default();
    let bytes = match (e.bytes_up, e.bytes_down) {
        (Some(up), Some(down)) if e.ended_unix_ms.is_some() => {
            format!(" [up {up} B, down {down} B]")
        }
        _ => String::new(),
    };
    format!(
        "{:>8} {time} {:<5} {:<5} {what}{port} — {}{bytes}",
        e.id, e.decision, e.proto, e.reason
    )
}

async fn log(home: Option<PathBuf>, vm: VmArgs, follow: bool, limit: u32) -> Result<(), CliError> {
    let (name, client) = vm.client(home)?;
    // Subscribe before reading the backlog, so nothing falls in between.
    let events = if follow {
        Some(client.events().await?)
    } else {
        None
    };
    let entries: Vec<EgressLogEntry> = client
        .get(&format!("/vms/{name}/egress/log?limit={limit}"))
        .await?;
    let mut last = 0;
    for e in &entries {
        println!("{}", line(e));
        last = last.max(e.id);
    }
    let Some(events) = events else {
        return Ok(());
    };
    let mut stream = events.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| CliError::Other(e.into()))?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let Some(data) = message.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            if let Ok(Event::Egress { entry }) = serde_json::from_str::<Event>(data.trim()) {
                // Flows come twice: when decided and when they end.
                if entry.vm == name && (entry.id > last || entry.ended_unix_ms.is_some()) {
                    last = last.max(entry.id);
                    println!("{}", line(&entry));
                }
            }
        }
    }
    Ok(())
}
