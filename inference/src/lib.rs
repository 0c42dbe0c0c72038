//! clawpen's OpenAI-compatible inference service.
//!
//! - [`models`] finds GGUF files where users already keep them (Ollama's
//!   store, LM Studio's folders, the Hugging Face cache, extra folders).
//! - [`server`] is the axum HTTP layer: Responses and Chat Completions,
//!   streamed with keep-alives, API keys, `/metrics`.
//! - [`engine`] is what generates: [`engine::upstream`] proxies any
//!   OpenAI-compatible server, [`engine::local`] runs GGUF models itself.
//! - [`generation`] turns an engine's raw output into clean text,
//!   reasoning and checked tool calls, using [`parse`].
//! - [`parse`] turns raw model output into text, reasoning and tool calls,
//!   one incremental parser per model family.
//! - [`store`] keeps responses for `previous_response_id`; [`metrics`]
//!   records every request per client and feeds them live.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::sync::broadcast;

pub mod constrain;
pub mod conversations;
pub mod engine;
pub mod generation;
pub mod guest_link;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod models;
pub mod parse;
pub mod server;
pub mod store;

pub use metrics::{Metrics, RequestMetrics};
pub use models::{ModelInfo, ModelLocations, ModelSource};
pub use parse::Family;

/// Configuration of the inference service.
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// Extra folders scanned (recursively, bounded) for `*.gguf` files, on
    /// top of [`InferenceConfig::locations`].
    pub model_dirs: Vec<PathBuf>,
    /// The standard places models are looked for (Ollama, LM Studio, the
    /// Hugging Face cache). [`ModelLocations::none`] turns them off.
    pub locations: ModelLocations,
    /// How long a model scan is reused before the folders are scanned again.
    pub models_cache_ttl: Duration,
    /// OpenAI-compatible servers to generate with, base URLs including
    /// their API prefix (`http://127.0.0.1:8080/v1`), besides the local
    /// models; a request's `model` picks the engine
    /// ([`engine::front_door`]). No engine at all: generation requests
    /// answer 503.
    pub upstreams: Vec<String>,
    /// `(model, engine)`: which engine serves a model several serve
    /// (`--route MODEL=ENGINE`; the engine is `local` or an upstream URL).
    pub routes: Vec<(String, String)>,
    /// The model used when a request names none (and offered in
    /// `/v1/models` even if the upstream does not list it).
    pub model: Option<String>,
    /// GGUF files the local (candle) engine loads and serves, each under
    /// its file name without `.gguf` (`--model PATH.gguf`, repeatable).
    /// Non-empty: the local engine serves requests (`upstream` must then
    /// be `None`). A file that fails to load is logged and left out.
    pub local_models: Vec<PathBuf>,
    /// Memory for each local model's KV prefix cache, in bytes; `None`:
    /// [`engine::local::DEFAULT_PREFIX_CACHE_BYTES`], 0: off.
    pub prefix_cache_bytes: Option<u64>,
    /// The local prefix cache's disk tier (`None`: memory only).
    pub prefix_cache_disk: Option<engine::local::disk_cache::DiskTierConfig>,
    /// Sampling of the local engine for requests that leave it unset.
    pub sampling: engine::local::SamplingDefaults,
    /// The model family whose tool-call / reasoning syntax the upstream's
    /// text is repaired with; `None`: guessed from the model name.
    pub tool_format: Option<Family>,
    /// Sent to the upstream as `Authorization: Bearer`.
    pub upstream_api_key: Option<String>,
    /// The upstream is another clawpen: each request names its client (the
    /// VM) there, see [`engine::upstream::UpstreamSettings::forward_client`].
    pub upstream_is_clawpen: bool,
    /// API key → client name. Empty: no authentication, every request is
    /// from client `anonymous`.
    pub api_keys: HashMap<String, String>,
    /// A stream that sent nothing for this long sends a keep-alive
    /// (`response.in_progress` / `: keep-alive`). Must stay well under
    /// undici's 300 s body timeout.
    pub keepalive_interval: Duration,
    /// SQLite file for stored responses (`previous_response_id`); `None`:
    /// kept in memory, lost at exit.
    pub store_path: Option<PathBuf>,
    /// How long stored responses are kept (30 days, as OpenAI does).
    pub store_retention: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// How long one Responses WebSocket connection may last (the spec's
    /// 60 minutes); then `websocket_connection_limit_reached`.
    pub websocket_lifetime: Duration,
}

impl Default for InferenceConfig {
    /// No extra folders, the standard locations of the current user
    /// (honouring `OLLAMA_MODELS`, `HF_HUB_CACHE`, `HF_HOME`), a 5 s scan
    /// cache, no upstream, no keys, 15 s keep-alives, an in-memory store,
    /// 8 MiB bodies (a long agent session with a few images fits).
    fn default() -> Self {
        Self {
            model_dirs: Vec::new(),
            locations: ModelLocations::standard(),
            models_cache_ttl: Duration::from_secs(5),
            upstreams: Vec::new(),
            routes: Vec::new(),
            model: None,
            local_models: Vec::new(),
            prefix_cache_bytes: None,
            prefix_cache_disk: None,
            sampling: Default::default(),
            tool_format: None,
            upstream_api_key: None,
            upstream_is_clawpen: false,
            api_keys: HashMap::new(),
            keepalive_interval: Duration::from_secs(15),
            store_path: None,
            store_retention: Duration::from_secs(30 * 86_400),
            max_body_bytes: 8 << 20,
            websocket_lifetime: server::responses::websocket::LIFETIME,
        }
    }
}

/// Errors of the inference service as a whole (not per request: those are
/// [`server::error::ApiError`]).
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("inference server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("inference upstream: {0}")]
    Upstream(#[from] engine::upstream::UpstreamError),
    #[error("inference store: {0}")]
    Store(#[from] store::StoreError),
    #[error("inference configuration: {0}")]
    Config(String),
    #[error("inference engines: {0}")]
    Engines(#[from] engine::front_door::FrontDoorError),
}

/// The inference service, built from its configuration: routes, engine,
/// store and metrics. Keep it to reach the live metrics feed.
#[derive(Debug, Clone)]
pub struct Inference {
    state: server::AppState,
}

impl Inference {
    /// Checks the configuration and opens what it names (the store file,
    /// the upstream client). Nothing is contacted yet; local models start
    /// loading in the background (requests wait for them).
    pub fn new(config: InferenceConfig) -> Result<Self, InferenceError> {
        if config.keepalive_interval.is_zero() {
            return Err(InferenceError::Config(
                "keepalive_interval must be more than zero".into(),
            ));
        }
        let metrics = Arc::new(Metrics::new());
        let mut engines: Vec<(String, Arc<dyn engine::Engine>)> = Vec::new();
        if !config.local_models.is_empty() {
            engines.push((
                engine::front_door::LOCAL.to_owned(),
                Arc::new(engine::local::LocalEngine::start(
                    &config.local_models,
                    engine::local::LocalOptions {
                        default_model: config.model.clone(),
                        tool_format: config.tool_format,
                        on_load: None,
                        observer: Some(metrics.clone()),
                        prefix_cache_bytes: config.prefix_cache_bytes,
                        prefix_cache_disk: config.prefix_cache_disk.clone(),
                        sampling: config.sampling,
                    },
                )),
            ));
        }
        // With one engine, `--model NAME` is that upstream's model (listed
        // even when the upstream does not); among several it only picks
        // the default.
        let alone = config.local_models.is_empty() && config.upstreams.len() == 1;
        for url in &config.upstreams {
            engines.push((
                url.clone(),
                Arc::new(engine::upstream::UpstreamEngine::new(
                    engine::upstream::UpstreamSettings {
                        url: url.clone(),
                        model: config.model.clone().filter(|_| alone),
                        tool_format: config.tool_format,
                        api_key: config.upstream_api_key.clone(),
                        forward_client: config.upstream_is_clawpen,
                    },
                )?),
            ));
        }
        let engine = if engines.is_empty() {
            None
        } else {
            Some(Arc::new(engine::front_door::FrontDoor::new(
                engines,
                &config.routes,
                config.model.clone(),
            )?))
        };
        let store =
            store::ResponseStore::open(config.store_path.as_deref(), config.store_retention)?;
        let state = server::AppState {
            models: models::ModelCatalog::from_config(&config),
            keys: keys::ApiKeys::new(&config.api_keys),
            key_policy: keys::KeyPolicy::IfConfigured,
            config: Arc::new(config),
            engine,
            store,
            metrics,
            stopping: tokio::sync::watch::channel(false).1,
        };
        Ok(Self { state })
    }

    /// The service's metrics (totals, live-generations gauge).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.state.metrics)
    }

    /// The key table, to add and remove per-VM keys while serving.
    pub fn keys(&self) -> keys::ApiKeys {
        self.state.keys.clone()
    }

    /// Checks keys against `keys`, a table the caller keeps adding to (the
    /// supervisor's per-VM keys); configured keys are carried over.
    pub fn with_keys(mut self, keys: keys::ApiKeys) -> Self {
        keys.adopt_configured(&self.state.keys);
        self.state.keys = keys;
        self
    }

    /// The same service for a listener that only guests reach: every
    /// request must carry a key from [`Inference::keys`], so each one is
    /// attributed to the VM that sent it.
    pub fn for_guests(&self) -> Self {
        let mut state = self.state.clone();
        state.key_policy = keys::KeyPolicy::Required;
        Self { state }
    }

    /// The live feed of finished requests, for the supervisor to relay.
    pub fn subscribe(&self) -> broadcast::Receiver<RequestMetrics> {
        self.state.metrics.subscribe()
    }

    /// The models the engine serves: those that loaded (local engine; waits
    /// for loading to end) or those the upstream lists (else its configured
    /// model). Empty without an engine.
    pub async fn served_models(&self) -> Vec<String> {
        match &self.state.engine {
            Some(door) => door.models().await.into_iter().map(|s| s.model).collect(),
            None => Vec::new(),
        }
    }

    /// Asks every engine for its models once: a model that two engines
    /// serve with no `--route` for it is an error naming both (call before
    /// serving). An engine that does not answer is not an error: it is
    /// served once it answers.
    pub async fn check_engines(&self) -> Result<(), InferenceError> {
        match &self.state.engine {
            Some(door) => Ok(door.check().await?),
            None => Ok(()),
        }
    }

    /// Follows the number of requests waiting for a turn (local engine).
    pub fn watch_queued(&self) -> tokio::sync::watch::Receiver<usize> {
        self.state.metrics.watch_queued()
    }

    /// The routes, ready to serve.
    pub fn router(&self) -> Router {
        server::routes(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes; then in-flight
    /// requests get [`SHUTDOWN_GRACE`] to finish before they are cut off
    /// (a long generation must not hold a shutdown hostage). A service made
    /// by [`Inference::for_guests`] reads each connection's VM line first
    /// ([`guest_link`]): only gateways dial it.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), InferenceError> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, upstreams = ?self.state.config.upstreams, "inference service listening");
        }
        if let Some(door) = &self.state.engine {
            door.watch();
        }
        if self.state.key_policy == keys::KeyPolicy::Required {
            let guests = guest_link::GuestListener::new(listener)?;
            self.serve_on(guests, shutdown).await
        } else {
            self.serve_on(listener, shutdown).await
        }
    }

    async fn serve_on<L>(
        self,
        listener: L,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), InferenceError>
    where
        L: axum::serve::Listener<Io = tokio::net::TcpStream>,
        L::Addr: Clone + Sync + std::fmt::Debug + 'static,
    {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let signal = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let mut graceful_rx = stop_rx.clone();
        // Small SSE frames must leave at once: without TCP_NODELAY, Nagle
        // holds each frame until the client's delayed ACK (~40 ms a token).
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        });
        let state = server::AppState {
            stopping: stop_rx.clone(),
            ..self.state.clone()
        };
        let server = axum::serve(
            listener,
            server::routes(state).into_make_service_with_connect_info::<L::Addr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = graceful_rx.wait_for(|s| *s).await;
        })
        .into_future();
        let mut cutoff_rx = stop_rx;
        let cutoff = async move {
            if cutoff_rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let result = tokio::select! {
            r = server => r.map_err(InferenceError::from),
            () = cutoff => {
                tracing::warn!("inference service stopped with requests still running");
                Ok(())
            }
        };
        signal.abort();
        result
    }
}

/// How long in-flight requests may run on after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The service's routes for `config` (see [`Inference::router`]).
pub fn router(config: InferenceConfig) -> Result<Router, InferenceError> {
    Ok(Inference::new(config)?.router())
}

/// Serves `config` on `listener` until `shutdown` (see [`Inference::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: InferenceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), InferenceError> {
    let service = Inference::new(config)?;
    service.check_engines().await?;
    service.serve(listener, shutdown).await
}
