//! `clawpen up --inference-url URL`: the VM host's inference comes from
//! `clawpen inference serve` on another machine.
//!
//! Nothing changes for guests: they still call `http://10.200.0.1/v1` with
//! their own VM key, checked by the supervisor's keyed guest listener, and
//! every request is still recorded under its VM (the console's session
//! view). Only the engine behind that listener changes: the inference
//! crate's upstream engine, pointed at the remote, which names the VM in
//! each request (`x-clawpen-client`) so the remote queues fairly and keeps
//! its prefix cache per VM too.

use std::time::Duration;

use clawpen_inference::engine::upstream::{UpstreamEngine, UpstreamError, UpstreamSettings};
use clawpen_inference::{Family, InferenceConfig};

/// How long the check at start waits for the remote's model list.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// A remote inference service that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("--inference-url {url:?} is not an http:// or https:// URL with a host")]
    BadUrl { url: String },
    #[error("--inference-url {url:?}: give the service's address without query or fragment")]
    Extras { url: String },
    #[error("--inference-key is empty")]
    EmptyKey,
    #[error("--inference-key needs --inference-url")]
    KeyWithoutUrl,
    #[error(
        "--inference-url serves from the remote's models: --model takes a model name there, \
         not a .gguf file ({file})"
    )]
    LocalModel { file: String },
    /// Not a `#[source]`: the message already holds the whole reason, and
    /// `{:#}` would print it twice.
    #[error("--inference-url: {0}")]
    Unusable(UpstreamError),
}

impl From<UpstreamError> for RemoteError {
    fn from(e: UpstreamError) -> Self {
        RemoteError::Unusable(e)
    }
}

impl RemoteError {
    /// Whether the fault is in the arguments (exit 2) rather than the remote.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, RemoteError::Unusable(_))
    }
}

/// The remote's API base: `http://host:7080` and `http://host:7080/` mean
/// `http://host:7080/v1`; a URL with a path is taken as the base itself.
pub fn base_url(raw: &str) -> Result<String, RemoteError> {
    let bad = || RemoteError::BadUrl {
        url: raw.to_owned(),
    };
    let url = reqwest::Url::parse(raw.trim()).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(RemoteError::Extras {
            url: raw.to_owned(),
        });
    }
    let text = url.as_str().trim_end_matches('/');
    Ok(if url.path() == "/" {
        format!("{text}/v1")
    } else {
        text.to_owned()
    })
}

/// What `--inference-url` / `--inference-key` / `--model` make of the
/// engine configuration, checked before anything is started.
#[derive(Debug, Clone)]
pub struct Remote {
    pub base: String,
    pub key: Option<String>,
}

impl Remote {
    /// `None` when no `--inference-url` was given.
    pub fn from_args(
        url: Option<&str>,
        key: Option<String>,
        config: &InferenceConfig,
    ) -> Result<Option<Self>, RemoteError> {
        let Some(url) = url else {
            return match key {
                Some(_) => Err(RemoteError::KeyWithoutUrl),
                None => Ok(None),
            };
        };
        if let Some(file) = config.local_models.first() {
            return Err(RemoteError::LocalModel {
                file: file.display().to_string(),
            });
        }
        if key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            return Err(RemoteError::EmptyKey);
        }
        Ok(Some(Self {
            base: base_url(url)?,
            key,
        }))
    }

    /// Asks the remote for its models (so an unreachable address or a
    /// refused key is an error at start, not at a guest's first request).
    pub async fn check(&self) -> Result<Vec<String>, RemoteError> {
        Ok(UpstreamEngine::new(self.settings())?
            .list_models(CHECK_TIMEOUT)
            .await?)
    }

    fn settings(&self) -> UpstreamSettings {
        UpstreamSettings {
            url: self.base.clone(),
            model: None,
            tool_format: None,
            api_key: self.key.clone(),
            forward_client: true,
        }
    }

    /// `config` served from the remote: its upstream engine, the key, and
    /// the model guests are configured with (`--model NAME`, else the
    /// first the remote lists). The remote already turned its model's text
    /// into clean text and tool calls, so it is not read for a family's
    /// syntax again unless `--tool-format` says so.
    pub fn apply(&self, config: &mut InferenceConfig, remote_models: &[String]) {
        config.upstreams = vec![self.base.clone()];
        config.upstream_api_key = self.key.clone();
        config.upstream_is_clawpen = true;
        config.tool_format.get_or_insert(Family::Plain);
        if config.model.is_none() {
            config.model = remote_models.first().cloned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_gets_v1_only_without_a_path() {
        assert_eq!(
            base_url("http://mac.local:7080").unwrap(),
            "http://mac.local:7080/v1"
        );
        assert_eq!(
            base_url("http://10.0.0.5:7080/").unwrap(),
            "http://10.0.0.5:7080/v1"
        );
        assert_eq!(
            base_url("https://h/inference/v1/").unwrap(),
            "https://h/inference/v1"
        );
        for bad in ["", "mac.local:7080", "ftp://h/", "http://", "unix:/x"] {
            assert!(
                matches!(base_url(bad), Err(RemoteError::BadUrl { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            base_url("http://h/?k=1"),
            Err(RemoteError::Extras { .. })
        ));
    }

    #[test]
    fn arguments_are_checked_before_anything_is_contacted() {
        let plain = InferenceConfig::default();
        assert!(Remote::from_args(None, None, &plain).unwrap().is_none());
        assert!(matches!(
            Remote::from_args(None, Some("k".into()), &plain),
            Err(RemoteError::KeyWithoutUrl)
        ));
        assert!(matches!(
            Remote::from_args(Some("http://h"), Some("".into()), &plain),
            Err(RemoteError::EmptyKey)
        ));
        let local = InferenceConfig {
            local_models: vec!["/m/tiny.gguf".into()],
            ..Default::default()
        };
        let err = Remote::from_args(Some("http://h"), None, &local).unwrap_err();
        assert!(err.is_bad_input());
        assert!(err.to_string().contains("tiny.gguf"), "{err}");
    }

    #[test]
    fn the_remote_becomes_the_upstream_and_names_the_model() {
        let remote = Remote::from_args(
            Some("http://mac:7080"),
            Some("sk".into()),
            &InferenceConfig::default(),
        )
        .unwrap()
        .unwrap();
        let mut config = InferenceConfig::default();
        remote.apply(&mut config, &["qwen".into(), "other".into()]);
        assert_eq!(config.upstreams, ["http://mac:7080/v1"]);
        assert_eq!(config.upstream_api_key.as_deref(), Some("sk"));
        assert!(config.upstream_is_clawpen);
        assert_eq!(config.tool_format, Some(Family::Plain));
        assert_eq!(config.model.as_deref(), Some("qwen"));
        // --model NAME and --tool-format win
        let mut config = InferenceConfig {
            model: Some("mine".into()),
            tool_format: Some(Family::Hermes),
            ..Default::default()
        };
        remote.apply(&mut config, &["qwen".into()]);
        assert_eq!(config.model.as_deref(), Some("mine"));
        assert_eq!(config.tool_format, Some(Family::Hermes));
    }

    #[tokio::test]
    async fn an_unreachable_remote_is_a_clear_error() {
        // a port nothing listens on: bind one, note it, close it
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let remote = Remote::from_args(
            Some(&format!("http://127.0.0.1:{port}")),
            None,
            &InferenceConfig::default(),
        )
        .unwrap()
        .unwrap();
        let err = remote.check().await.unwrap_err();
        assert!(!err.is_bad_input());
        let text = err.to_string();
        assert!(
            text.contains(&format!(
                "cannot reach the inference service at http://127.0.0.1:{port}/v1"
            )),
            "{text}"
        );
    }
}
