//! The HTTP layer: OpenAI wire formats on axum.
//!
//! Open routes: `GET /healthz`, `GET /metrics` (Prometheus text; not on
//! the guests' listener). Behind
//! the API key ([`auth`]): `GET /v1/models`, `POST /v1/chat/completions`
//! ([`chat`]), `POST /v1/responses`, `POST /v1/responses/compact`,
//! `GET`/`DELETE /v1/responses/{id}` ([`responses`]). Handlers translate; generation lives in
//! [`crate::generation`] and the engines.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use serde::Serialize;

use crate::engine::Engine;
use crate::keys::{ApiKeys, KeyPolicy};
use crate::metrics::Metrics;
use crate::models::ModelCatalog;
use crate::store::ResponseStore;
use crate::InferenceConfig;

pub mod auth;
pub mod body;
pub mod chat;
pub mod error;
pub mod responses;
pub mod stream;

pub use error::ApiError;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<InferenceConfig>,
    pub models: ModelCatalog,
    /// `None`: no engine configured; generation requests answer 503.
    pub engine: Option<Arc<dyn Engine>>,
    pub store: ResponseStore,
    pub metrics: Arc<Metrics>,
    pub keys: ApiKeys,
    /// Whether this listener's requests must carry a key in `keys`.
    pub key_policy: KeyPolicy,
}

impl AppState {
    /// The engine and the model a request's `model` picks: the name given,
    /// else the engine's default, else the engine's only model. A name the
    /// engine does not list is refused (when it lists any).
    pub async fn resolve_model(
        &self,
        requested: Option<&str>,
    ) -> Result<(Arc<dyn Engine>, String), ApiError> {
        let engine = self.engine.clone().ok_or_else(|| {
            ApiError::unavailable(crate::engine::EngineError::NotConfigured.to_string())
        })?;
        let listed = engine.models().await;
        let requested = requested.map(str::trim).filter(|m| !m.is_empty());
        let model = match requested {
            Some(m) => m.to_owned(),
            None => engine
                .default_model()
                .or_else(|| match listed.as_deref() {
                    Some([only]) => Some(only.clone()),
                    _ => None,
                })
                .ok_or_else(|| ApiError::invalid_param("model", "'model' is required."))?,
        };
        if let Some(list) = listed.filter(|l| !l.is_empty()) {
            // Ollama lists `NAME:latest` and serves it as `NAME` too.
            let latest = format!("{model}:latest");
            if !list.iter().any(|m| *m == model || *m == latest) {
                return Err(ApiError::model_not_found(&model));
            }
        }
        Ok((engine, model))
    }

    /// How long a request waits for the engine to accept it before the
    /// response headers are committed: long enough for a refusal to come
    /// back as an error status, short enough to count as "at once".
    pub fn accept_grace(&self) -> Duration {
        self.config
            .keepalive_interval
            .min(Duration::from_millis(1500))
    }
}

/// The service's routes over `state`; every other URL answers an
/// OpenAI-shaped 404 (405 for a wrong method).
pub fn routes(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/compact", post(responses::compact::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    let open = Router::new().route("/healthz", get(healthz));
    // Metrics name every client (every VM) and what it does: the host's
    // listener has them, the guests' listener does not.
    let open = if state.key_policy == KeyPolicy::Required {
        open
    } else {
        open.route("/metrics", get(metrics))
    };
    open.merge(v1)
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.prometheus(),
    )
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// The body of `GET /v1/models`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

/// What `engine` serves: the models it lists, else its default model.
pub(crate) async fn served_models(engine: &dyn Engine) -> Vec<String> {
    match engine.models().await {
        Some(ids) => ids,
        None => engine.default_model().into_iter().collect(),
    }
}

/// With an engine: the models it serves. Without: the GGUF files found.
async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    if let Some(engine) = &state.engine {
        let ids = served_models(engine.as_ref()).await;
        return Json(ModelList {
            object: "list".into(),
            data: ids
                .into_iter()
                .map(|id| ModelObject {
                    id,
                    object: "model".into(),
                    created: 0,
                    owned_by: engine.kind().into(),
                })
                .collect(),
        });
    }
    let models = state.models.list().await;
    Json(ModelList {
        object: "list".into(),
        data: models
            .iter()
            .map(|m| ModelObject {
                id: m.id.clone(),
                object: "model".into(),
                created: m.created,
                owned_by: m.source.as_str().into(),
            })
            .collect(),
    })
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::unknown_route(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
