//! The guest's first-boot configuration: what a guest image needs to reach
//! the inference service as its VM (base URL, this VM's own key, the model
//! and its limits), which port its service listens on, and its shares with
//! the file system each arrives by. Written to `vms/NAME/guest-config.json`
//! (for people) and `vms/NAME/guest-config.img` (a config disk,
//! [`clawpen_vmimage::config_disk`]) before every cold boot; every backend
//! attaches the disk read-only (QEMU a raw virtio drive, VZ a read-only
//! disk image attachment), so nothing in the guest has to be trusted to
//! find it, nothing on the network carries it, and the key never appears
//! on a host command line.

use std::path::{Path, PathBuf};

use clawpen_api::SharedFolder;
use clawpen_vmimage::openclaw::DEFAULT_GATEWAY_PORT;
pub use clawpen_vmimage::openclaw::{GuestConfig, InferenceConfig};
pub use clawpen_vmimage::{ConfigDiskError, GuestShare, ShareFs};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum GuestConfigError {
    #[error("cannot write the guest configuration {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the config disk {path}: {source}")]
    Disk {
        path: PathBuf,
        source: ConfigDiskError,
    },
}

/// What the host serves, as far as guests need to know (set by `up` once
/// the inference service is configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    pub model: String,
    pub context_window: u64,
    pub max_tokens: u64,
    pub reasoning: bool,
}

impl Default for ServedModel {
    /// A model name the service maps to its default model, and limits
    /// every supported model meets.
    fn default() -> Self {
        Self {
            model: "default".into(),
            context_window: 32_768,
            max_tokens: MAX_OUTPUT_TOKENS,
            reasoning: false,
        }
    }
}

impl ServedModel {
    /// What the service configured by `config` serves guests: the model
    /// `--model` names, else the only local model's, else `default` (what
    /// an upstream maps to its own). A local model's context window and
    /// reasoning come from its GGUF header; an upstream's limits are not
    /// known here, so they stay the defaults every supported model meets.
    pub fn of(config: &clawpen_inference::InferenceConfig) -> Self {
        let local = |name: &str| {
            config
                .local_models
                .iter()
                .find(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == name))
        };
        let (model, path) = match (&config.model, config.local_models.as_slice()) {
            (Some(name), _) => (name.clone(), local(name)),
            (None, [only]) => (
                only.file_stem()
                    .map_or_else(|| "default".into(), |s| s.to_string_lossy().into_owned()),
                Some(only),
            ),
            (None, _) => ("default".into(), None),
        };
        let mut served = Self {
            model,
            ..Self::default()
        };
        let Some(path) = path else {
            return served;
        };
        match clawpen_inference::engine::local::facts(path) {
            Ok(facts) => {
                served.context_window = facts.context_length as u64;
                // Room for the prompt: an agent's first turn alone is
                // thousands of tokens.
                served.max_tokens = (served.context_window / 4).clamp(16, MAX_OUTPUT_TOKENS);
                served.reasoning = facts.reasoning;
            }
            Err(e) => tracing::warn!("guests get default model limits: {e}"),
        }
        served
    }
}

/// The most output tokens a guest's agent asks for in one request.
const MAX_OUTPUT_TOKENS: u64 = 8_192;

/// The configuration of VM `vm` with inference key `api_key` and `shares`,
/// which the VMM offers as `share_fs`. The gateway
/// token is derived from the key (not stored apart), so it is as secret as
/// the key, the same on every boot, and gone with the VM.
pub fn for_vm(
    vm: &str,
    api_key: &str,
    served: &ServedModel,
    shares: &[SharedFolder],
    share_fs: ShareFs,
) -> GuestConfig {
    let token = hex::encode(&Sha256::digest(format!("clawpen-gateway-token:{api_key}"))[..24]);
    GuestConfig {
        vm: vm.to_owned(),
        inference: InferenceConfig {
            base_url: crate::egress::guest_inference_url(),
            api_key: api_key.to_owned(),
            model: served.model.clone(),
            context_window: served.context_window,
            max_tokens: served.max_tokens,
            reasoning: served.reasoning,
            timeout_seconds: clawpen_vmimage::openclaw::DEFAULT_REQUEST_TIMEOUT_SECONDS,
        },
        gateway_port: DEFAULT_GATEWAY_PORT,
        gateway_token: Some(token),
        shares: shares
            .iter()
            .map(|s| GuestShare {
                tag: s.tag.to_string(),
                fs: share_fs,
            })
            .collect(),
    }
}

/// Writes the JSON file `json` and the config disk `disk`, each atomically
/// (temp + rename) and readable by the owner only: they hold the VM's key.
/// The disk is written last, so a crash between the two leaves the guest
/// the previous boot's disk, whole.
pub fn write(config: &GuestConfig, json: &Path, disk: &Path) -> Result<(), GuestConfigError> {
    let image = config
        .to_config_disk()
        .map_err(|source| GuestConfigError::Disk {
            path: disk.to_owned(),
            source,
        })?;
    let write = |path: &Path, bytes: &[u8]| {
        crate::private_file::write_private(path, bytes).map_err(|e| GuestConfigError::Write {
            path: e.path,
            source: e.source,
        })
    };
    write(json, &config.to_json())?;
    write(disk, &image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_served_model_is_named_by_the_config_and_unreadable_files_keep_defaults() {
        let config = |model: Option<&str>, local: &[&str]| clawpen_inference::InferenceConfig {
            model: model.map(str::to_owned),
            local_models: local.iter().map(PathBuf::from).collect(),
            ..Default::default()
        };
        assert_eq!(ServedModel::of(&config(None, &[])), ServedModel::default());
        let only = ServedModel::of(&config(None, &["/nonexistent/qwen.gguf"]));
        assert_eq!(only.model, "qwen");
        assert_eq!(only.context_window, ServedModel::default().context_window);
        let named = ServedModel::of(&config(Some("b"), &["/none/a.gguf", "/none/b.gguf"]));
        assert_eq!(named.model, "b");
        assert_eq!(
            ServedModel::of(&config(None, &["/none/a.gguf", "/none/b.gguf"])).model,
            "default"
        );
    }

    #[test]
    fn written_private_and_in_the_agreed_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guest-config.json");
        let disk = dir.path().join("guest-config.img");
        let served = ServedModel {
            model: "qwen3-8b".into(),
            ..ServedModel::default()
        };
        let config = for_vm("agent", "sk-clawpen-x", &served, &[], ShareFs::NineP);
        write(&config, &path, &disk).unwrap();
        // Stable across boots, different per key.
        assert_eq!(
            for_vm("agent", "sk-clawpen-x", &served, &[], ShareFs::NineP),
            config
        );
        assert_ne!(
            for_vm("agent", "sk-clawpen-y", &served, &[], ShareFs::NineP).gateway_token,
            config.gateway_token
        );
        for p in [&path, &disk] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The disk holds the same JSON, whole blocks, nothing left over.
        let image = std::fs::read(&disk).unwrap();
        assert!(image
            .len()
            .is_multiple_of(clawpen_vmimage::config_disk::BLOCK));
        assert_eq!(
            clawpen_vmimage::config_disk::decode(&image).unwrap(),
            &std::fs::read(&path).unwrap()[..]
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["vm"], "agent");
        assert_eq!(json["inference"]["base_url"], "http://10.200.0.1/v1");
        assert_eq!(json["inference"]["api_key"], "sk-clawpen-x");
        assert_eq!(json["inference"]["model"], "qwen3-8b");
        assert_eq!(json["inference"]["context_window"], 32768);
        assert_eq!(json["gateway_port"], 18789);
        assert_eq!(json["gateway_token"].as_str().unwrap().len(), 48);
    }

    #[test]
    fn shares_carry_the_file_system_the_vmm_offers() {
        let shares = [clawpen_api::SharedFolder {
            tag: clawpen_api::ShareTag::parse("work").unwrap(),
            host_path: "/srv/work".into(),
            read_only: true,
        }];
        let served = ServedModel::default();
        let vz = for_vm("agent", "k", &served, &shares, ShareFs::Virtiofs);
        assert_eq!(
            vz.shares,
            vec![GuestShare {
                tag: "work".into(),
                fs: ShareFs::Virtiofs
            }]
        );
        // What the guests' shell looks for; no host path goes to the guest.
        let json = String::from_utf8(vz.to_json()).unwrap();
        assert!(json.contains(r#""tag":"work","fs":"virtiofs""#), "{json}");
        assert!(!json.contains("/srv/work"));
        let qemu = for_vm("agent", "k", &served, &shares, ShareFs::NineP);
        assert_eq!(qemu.shares[0].fs, ShareFs::NineP);
        // No shares: no field at all.
        let none = for_vm("agent", "k", &served, &[], ShareFs::NineP);
        assert!(!String::from_utf8(none.to_json())
            .unwrap()
            .contains("shares"));
    }
}
