//! The guest's first-boot configuration: what a guest image needs to reach
//! the inference service as its VM (base URL, this VM's own key, the model
//! and its limits) and which port its service listens on. Written to
//! `vms/NAME/guest-config.json` before every cold boot and handed to the
//! guest read-only (QEMU `-fw_cfg name=opt/clawpen/config.json`; in the
//! guest `/sys/firmware/qemu_fw_cfg/by_name/opt/clawpen/config.json/raw`),
//! so nothing in the guest has to be trusted to find it and nothing on the
//! network carries it.

use std::path::{Path, PathBuf};

use clawpen_vmimage::openclaw::DEFAULT_GATEWAY_PORT;
pub use clawpen_vmimage::openclaw::{GuestConfig, InferenceConfig, FW_CFG_NAME};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum GuestConfigError {
    #[error("cannot write the guest configuration {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
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
            max_tokens: 8_192,
            reasoning: false,
        }
    }
}

/// The configuration of VM `vm` with inference key `api_key`. The gateway
/// token is derived from the key (not stored apart), so it is as secret as
/// the key, the same on every boot, and gone with the VM.
pub fn for_vm(vm: &str, api_key: &str, served: &ServedModel) -> GuestConfig {
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
        },
        gateway_port: DEFAULT_GATEWAY_PORT,
        gateway_token: Some(token),
    }
}

/// Writes the file atomically (temp + rename), readable by the owner only:
/// it holds the VM's key.
pub fn write(config: &GuestConfig, path: &Path) -> Result<(), GuestConfigError> {
    crate::private_file::write_private(path, &config.to_json()).map_err(|e| {
        GuestConfigError::Write {
            path: e.path,
            source: e.source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_private_and_in_the_agreed_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guest-config.json");
        let served = ServedModel {
            model: "qwen3-8b".into(),
            ..ServedModel::default()
        };
        let config = for_vm("agent", "sk-clawpen-x", &served);
        write(&config, &path).unwrap();
        // Stable across boots, different per key.
        assert_eq!(for_vm("agent", "sk-clawpen-x", &served), config);
        assert_ne!(
            for_vm("agent", "sk-clawpen-y", &served).gateway_token,
            config.gateway_token
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
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
}
