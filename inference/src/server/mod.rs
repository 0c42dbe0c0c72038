//! The HTTP layer: OpenAI wire formats on axum.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, Uri};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::models::ModelCatalog;
use crate::{InferenceConfig, InferenceError};

pub mod error;

pub use error::ApiError;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<InferenceConfig>,
    pub models: ModelCatalog,
}

/// The service's routes: `GET /healthz`, `GET /v1/models`; every other
/// URL answers an OpenAI-shaped 404 (405 for a wrong method).
pub fn router(config: InferenceConfig) -> Router {
    let state = AppState {
        models: ModelCatalog::from_config(&config),
        config: Arc::new(config),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/models", get(list_models))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: InferenceConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), InferenceError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "inference service listening");
    }
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
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

async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
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
