//! The HTTP layer: OpenAI wire formats on axum.
//!
//! Open routes: `GET /healthz`, `GET /metrics` (Prometheus text; not on
//! the guests' listener). Behind
//! the API key ([`auth`]): `GET /v1/models`, `POST /v1/chat/completions`
//! ([`chat`]), `POST /v1/responses` (and `GET`, its WebSocket mode),
//! `POST /v1/responses/compact`,
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

use crate::engine::front_door::{FrontDoor, FrontDoorError, Routed};
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
    /// The engines behind one door; `None`: no engine configured,
    /// generation requests answer 503.
    pub engine: Option<Arc<FrontDoor>>,
    pub store: ResponseStore,
    pub metrics: Arc<Metrics>,
    pub keys: ApiKeys,
    /// Whether this listener's requests must carry a key in `keys`.
    pub key_policy: KeyPolicy,
    /// Turns `true` when the server serving these routes is asked to stop:
    /// sessions that outlive a request (WebSockets) end then too. Never
    /// changes for routes not served by [`crate::Inference::serve`].
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    /// The engine and the model a request's `model` picks (see
    /// [`crate::engine::front_door`]): 503 when no engine is configured or
    /// the one serving the model is not answering, 404 for a model no
    /// engine serves.
    pub async fn resolve_model(&self, requested: Option<&str>) -> Result<Routed, ApiError> {
        let door = self.engine.as_ref().ok_or_else(|| {
            ApiError::unavailable(crate::engine::EngineError::NotConfigured.to_string())
        })?;
        door.route(requested).await.map_err(|e| match e {
            FrontDoorError::NotFound(model) => ApiError::model_not_found(&model),
            FrontDoorError::NoModel => ApiError::invalid_param("model", "'model' is required."),
            other => ApiError::unavailable(other.to_string()),
        })
    }

    /// How long a request waits for the engine to accept it before the
    /// response headers are committed: long enough for a refusal to come
    /// back as an error status, short enough to count as "at once".
    /// Resolves once the server is asked to stop; never for routes served
    /// some other way.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            if stopping.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

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
        .route(
            "/v1/responses",
            post(responses::create).get(responses::websocket::upgrade),
        )
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
    /// The engine serving it (`local` or the upstream's URL): with several
    /// engines behind clawpen, where a request for it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Context length, reasoning, tools, vision and a note on base models,
    /// where the engine knows them (the local engine).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub card: Option<crate::engine::ModelCard>,
}

/// The body of `GET /v1/models`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

/// With engines: the models they serve, each with the engine serving it.
/// Without: the GGUF files found.
async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    if let Some(door) = &state.engine {
        return Json(ModelList {
            object: "list".into(),
            data: door
                .models()
                .await
                .into_iter()
                .map(|s| ModelObject {
                    id: s.model,
                    object: "model".into(),
                    created: 0,
                    owned_by: s.kind.into(),
                    served_by: Some(s.engine),
                    card: s.card,
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
                served_by: None,
                card: None,
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
