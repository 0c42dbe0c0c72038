//! `clawpen vm ls|start|stop|reset`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use clawpen_api::{SnapshotInfo, VmInfo, VmName};
use serde_json::json;

use super::client::Client;
use super::progress::with_progress;
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
    /// Bring a VM back to its clean snapshot, running (warm: no boot).
    Reset {
        #[command(flatten)]
        vm: NameArgs,
        /// The clean snapshot's disk and a full boot, even with a memory state.
        #[arg(long)]
        cold: bool,
    },
    /// Make a VM from an image in the image store (it starts `Created`).
    Create {
        #[command(flatten)]
        vm: NameArgs,
        #[arg(long)]
        image: String,
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory in MiB.
        #[arg(long)]
        memory: Option<u32>,
        /// Disk size in GiB (at least the base image's).
        #[arg(long)]
        disk: Option<u32>,
    },
    /// Stop a VM and remove it with its disk and snapshots.
    Delete(NameArgs),
    /// Print the VM's serial console log.
    Logs(NameArgs),
    /// Print the base URL and API key the VM's guest uses for inference.
    Inference(NameArgs),
    /// Open (or show) a loopback port on this host that reaches a port of
    /// the guest, e.g. its agent gateway's web UI.
    Forward {
        #[command(flatten)]
        vm: NameArgs,
        /// The guest's port.
        guest_port: u16,
    },
    /// Snapshots of a VM.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// List a VM's snapshots.
    Ls(NameArgs),
    /// Save disk (+ memory while running) under a name.
    Take {
        #[command(flatten)]
        vm: NameArgs,
        snapshot: String,
    },
    /// Return the VM to a snapshot, running.
    Restore {
        #[command(flatten)]
        vm: NameArgs,
        snapshot: String,
        /// Disk only and a full boot, even with a memory state.
        #[arg(long)]
        cold: bool,
    },
    /// Delete a snapshot.
    Rm {
        #[command(flatten)]
        vm: NameArgs,
        snapshot: String,
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

    pub(super) fn client(self, home: Option<PathBuf>) -> Result<(VmName, Client), CliError> {
        let name = self.name()?;
        Ok((name, Client::new(home, self.target.url)?))
    }
}

fn snapshot_name(raw: &str) -> Result<clawpen_api::SnapshotName, CliError> {
    clawpen_api::SnapshotName::parse(raw).map_err(|e| CliError::BadInput(e.to_string()))
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
            let (name, client) = args.client(home)?;
            let path = format!("/vms/{name}/start");
            let vm: VmInfo = with_progress(&client, &name, client.post(&path, &json!({}))).await?;
            println!("{} {}", vm.spec.name, vm.state);
        }
        VmCommand::Stop(args) => {
            let (name, client) = args.client(home)?;
            let path = format!("/vms/{name}/stop");
            let vm: VmInfo = with_progress(&client, &name, client.post(&path, &json!({}))).await?;
            println!("{} {}", vm.spec.name, vm.state);
        }
        VmCommand::Reset { vm, cold } => {
            let (name, client) = vm.client(home)?;
            let started = std::time::Instant::now();
            let path = format!("/vms/{name}/reset");
            let body = json!({ "cold": cold });
            let info: VmInfo = with_progress(&client, &name, client.post(&path, &body)).await?;
            println!(
                "{} {} (reset in {:.2} s)",
                info.spec.name,
                info.state,
                started.elapsed().as_secs_f64()
            );
        }
        VmCommand::Create {
            vm,
            image,
            cpus,
            memory,
            disk,
        } => {
            let name = vm.name()?;
            let info: VmInfo = Client::new(home, vm.target.url)?
                .post(
                    "/vms",
                    &json!({ "name": name, "image": image, "cpus": cpus,
                             "memory_mib": memory, "disk_gib": disk }),
                )
                .await?;
            println!("{} {}", info.spec.name, info.state);
        }
        VmCommand::Delete(vm) => {
            let (name, client) = vm.client(home)?;
            client.delete(&format!("/vms/{name}")).await?;
            println!("{name} deleted");
        }
        VmCommand::Logs(vm) => {
            let (name, client) = vm.client(home)?;
            print!("{}", client.get_text(&format!("/vms/{name}/logs")).await?);
        }
        VmCommand::Inference(vm) => {
            let (name, client) = vm.client(home)?;
            let access: clawpen_api::InferenceAccess =
                client.get(&format!("/vms/{name}/inference")).await?;
            println!("base_url: {}", access.base_url);
            println!("api_key:  {}", access.api_key);
        }
        VmCommand::Forward { vm, guest_port } => {
            let (name, client) = vm.client(home)?;
            let forward: clawpen_api::ForwardInfo = client
                .post(
                    &format!("/vms/{name}/forwards"),
                    &json!({ "guest_port": guest_port }),
                )
                .await?;
            println!("http://{}/", forward.host_addr);
        }
        VmCommand::Snapshot(command) => snapshot(home, command).await?,
    }
    Ok(())
}

async fn snapshot(home: Option<PathBuf>, command: SnapshotCommand) -> Result<(), CliError> {
    match command {
        SnapshotCommand::Ls(vm) => {
            let (name, client) = vm.client(home)?;
            let list: Vec<SnapshotInfo> = client.get(&format!("/vms/{name}/snapshots")).await?;
            println!("{:<32} {:<7}", "SNAPSHOT", "MEMORY");
            for s in list {
                println!(
                    "{:<32} {:<7}",
                    s.name,
                    if s.has_memory { "yes" } else { "no" }
                );
            }
        }
        SnapshotCommand::Take { vm, snapshot } => {
            let snapshot = snapshot_name(&snapshot)?;
            let (name, client) = vm.client(home)?;
            let started = std::time::Instant::now();
            let info: SnapshotInfo = client
                .post(
                    &format!("/vms/{name}/snapshots"),
                    &json!({ "name": snapshot }),
                )
                .await?;
            println!(
                "{name}: snapshot {} taken ({}) in {:.2} s",
                info.name,
                if info.has_memory {
                    "disk + memory"
                } else {
                    "disk"
                },
                started.elapsed().as_secs_f64()
            );
        }
        SnapshotCommand::Restore { vm, snapshot, cold } => {
            let snapshot = snapshot_name(&snapshot)?;
            let (name, client) = vm.client(home)?;
            let started = std::time::Instant::now();
            let path = format!("/vms/{name}/snapshots/{snapshot}/restore");
            let body = json!({ "cold": cold });
            let info: VmInfo = with_progress(&client, &name, client.post(&path, &body)).await?;
            println!(
                "{} {} (restored {snapshot} in {:.2} s)",
                info.spec.name,
                info.state,
                started.elapsed().as_secs_f64()
            );
        }
        SnapshotCommand::Rm { vm, snapshot } => {
            let snapshot = snapshot_name(&snapshot)?;
            let (name, client) = vm.client(home)?;
            client
                .delete(&format!("/vms/{name}/snapshots/{snapshot}"))
                .await?;
            println!("{name}: snapshot {snapshot} deleted");
        }
    }
    Ok(())
}
