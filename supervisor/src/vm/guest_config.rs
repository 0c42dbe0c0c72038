//! The guest's first-boot configuration: what a guest image needs to reach
//! the inference service as its VM (base URL, this VM's own key, the model
//! and its limits) and which port its service listens on. Written to
//! `vms/NAME/guest-config.json` before every cold boot and handed to the
//! guest read-only (QEMU `-fw_cfg name=opt/clawpen/config.json`; in the
//! guest `/sys/firmware/qemu_fw_cfg/by_name/opt/clawpen/config.json/raw`),
//! so nothing in the guest has to be trusted to find it and nothing on the
//! network carries it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The fw_cfg item name QEMU exposes the file under.
pub const FW_CFG_NAME: &str = "opt/clawpen/config.json";

/// The guest-facing port of the agent gateway in guest images that run one
/// (OpenClaw's default).
pub const DEFAULT_GATEWAY_PORT: u16 = 18789;

#[derive(Debug, thiserror::Error)]
pub enum GuestConfigError {
    #[error("cannot write the guest configuration {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestConfig {
    pub vm: String,
    pub inference: GuestInference,
    pub gateway_port: u16,
}

/// How the guest talks to the inference service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestInference {
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub context_window: u32,
    pub max_tokens: u32,
    pub reasoning: bool,
}

/// What the host serves, as far as guests need to know (set by `up` once
/// the inference service is configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    pub model: String,
    pub context_window: u32,
    pub max_tokens: u32,
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

impl GuestConfig {
    pub fn new(vm: &str, api_key: &str, served: &ServedModel) -> Self {
        Self {
            vm: vm.to_owned(),
            inference: GuestInference {
                base_url: crate::egress::guest_inference_url(),
                api_key: api_key.to_owned(),
                model: served.model.clone(),
                context_window: served.context_window,
                max_tokens: served.max_tokens,
                reasoning: served.reasoning,
            },
            gateway_port: DEFAULT_GATEWAY_PORT,
        }
    }

    /// Writes the file atomically (temp + rename), readable by the owner
    /// only: it holds the VM's key.
    pub fn write(&self, path: &Path) -> Result<(), GuestConfigError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| GuestConfigError::Write { path, source }
        };
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).expect("GuestConfig serialises");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err(&tmp))?;
        file.write_all(&json).map_err(err(&tmp))?;
        file.sync_all().map_err(err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(err(path))
    }
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
        GuestConfig::new("agent", "sk-clawpen-x", &served)
            .write(&path)
            .unwrap();
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
    }
}
