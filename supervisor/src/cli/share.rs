//! `clawpen share add|ls|rm`: host folders shown to a VM.

use std::path::PathBuf;

use clap::Subcommand;
use clawpen_api::SharedFolder;
use serde_json::json;

use super::vm::NameArgs;
use super::CliError;

#[derive(Subcommand)]
pub enum ShareCommand {
    /// Share a host folder with a (stopped) VM; read-only unless --rw. The
    /// test guest mounts it at /mnt/TAG.
    Add {
        #[command(flatten)]
        vm: NameArgs,
        host_path: PathBuf,
        #[arg(long)]
        tag: String,
        /// Let the guest write.
        #[arg(long)]
        rw: bool,
    },
    /// List a VM's shares.
    Ls(NameArgs),
    /// Remove a share from a (stopped) VM.
    Rm {
        #[command(flatten)]
        vm: NameArgs,
        tag: String,
    },
}

pub async fn run(home: Option<PathBuf>, command: ShareCommand) -> Result<(), CliError> {
    match command {
        ShareCommand::Add {
            vm,
            host_path,
            tag,
            rw,
        } => {
            let (name, client) = vm.client(home)?;
            // Relative paths mean the CLI's working directory, not the supervisor's.
            let host_path = std::path::absolute(&host_path)
                .map_err(|e| CliError::BadInput(format!("{}: {e}", host_path.display())))?;
            let share: SharedFolder = client
                .post(
                    &format!("/vms/{name}/shares"),
                    &json!({ "host_path": host_path, "tag": tag, "rw": rw }),
                )
                .await?;
            println!(
                "{name}: {} shared as {} ({})",
                share.host_path,
                share.tag,
                if share.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
            );
        }
        ShareCommand::Ls(vm) => {
            let (name, client) = vm.client(home)?;
            let shares: Vec<SharedFolder> = client.get(&format!("/vms/{name}/shares")).await?;
            println!("{:<16} {:<4} HOST PATH", "TAG", "MODE");
            for s in shares {
                println!(
                    "{:<16} {:<4} {}",
                    s.tag,
                    if s.read_only { "ro" } else { "rw" },
                    s.host_path
                );
            }
        }
        ShareCommand::Rm { vm, tag } => {
            let (name, client) = vm.client(home)?;
            client.delete(&format!("/vms/{name}/shares/{tag}")).await?;
            println!("{name}: share {tag} removed");
        }
    }
    Ok(())
}
