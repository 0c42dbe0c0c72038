//! `clawpen vm ls|start|stop|reset`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use clawpen_api::{VmInfo, VmName};
use serde_json::json;

use super::client::Client;
use super::CliError;

#[derive(Args)]
pub struct Target {
    /// Supervisor URL (default: the one `clawpen up` recorded, else http://127.0.0.1:7070).
    #[arg(long, env = "CLAWPEN_URL")]
    url: Option<String>,
}

#[derive(Subcommand)]
pub enum VmCommand {
    /// List VMs and their states.
    Ls(Target),
    /// Boot a stopped VM.
    Start(NameArgs),
    /// Stop a running VM.
    Stop(NameArgs),
    /// Bring a VM back to its clean disk, running.
    Reset {
        #[command(flatten)]
        vm: NameArgs,
        /// Fresh disk and full boot.
        #[arg(long)]
        cold: bool,
    },
}

#[derive(Args)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    target: Target,
}

impl NameArgs {
    fn name(&self) -> Result<VmName, CliError> {
        VmName::parse(&self.name).map_err(|e| CliError::BadInput(e.to_string()))
    }
}

pub async fn run(home: Option<PathBuf>, command: VmCommand) -> Result<(), CliError> {
    match command {
        VmCommand::Ls(target) => {
            let vms: Vec<VmInfo> = Client::new(home, target.url)?.get("/vms").await?;
            println!(
                "{:<16} {:<12} {:<12} {:>8} {:>5}",
                "NAME", "STATE", "IMAGE", "PID", "ACCEL"
            );
            for vm in vms {
                println!(
                    "{:<16} {:<12} {:<12} {:>8} {:>5}",
                    vm.spec.name,
                    vm.state.label(),
                    vm.spec.image,
                    vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    vm.accel.unwrap_or_else(|| "-".into())
                );
            }
        }
        VmCommand::Start(args) => {
            let name = args.name()?;
            let vm: VmInfo = Client::new(home, args.target.url)?
                .post(&format!("/vms/{name}/start"), &json!({}))
                .await?;
            println!("{} {}", vm.spec.name, vm.state);
        }
        VmCommand::Stop(args) => {
            let name = args.name()?;
            let vm: VmInfo = Client::new(home, args.target.url)?
                .post(&format!("/vms/{name}/stop"), &json!({}))
                .await?;
            println!("{} {}", vm.spec.name, vm.state);
        }
        VmCommand::Reset { vm, cold } => {
            let name = vm.name()?;
            let started = std::time::Instant::now();
            let info: VmInfo = Client::new(home, vm.target.url)?
                .post(&format!("/vms/{name}/reset"), &json!({ "cold": cold }))
                .await?;
            println!(
                "{} {} (reset in {:.2} s)",
                info.spec.name,
                info.state,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
