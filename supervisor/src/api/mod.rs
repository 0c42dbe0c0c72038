//! The supervisor's HTTP surface: `/api/v1/...` (JSON + SSE), `/login`, and the
//! console at `/`. Handlers only translate: they send the VM task a command and
//! map its answer to a status code.

mod auth;
mod egress;
mod error;
mod events;
mod forwards;
mod shares;
mod vms;

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::auth::Token;
use crate::egress::Egress;
use crate::events::EventBus;
use crate::vm::VmManager;
pub use auth::Sessions;
pub use error::HttpError;

#[derive(Clone, FromRef)]
pub struct AppState {
    pub vms: Arc<VmManager>,
    pub events: EventBus,
    pub token: Arc<Token>,
    /// The console's browser sessions (shared by every listener).
    pub sessions: auth::Sessions,
    pub egress: Arc<Egress>,
    /// The last finished inference requests (the console's backlog).
    pub recent_inference: crate::inference_relay::RecentInference,
}

/// `GET /inference/recent`: the last finished inference requests, oldest
/// first, so a page opened later still shows the sessions before it.
async fn recent_inference(
    State(recent): State<crate::inference_relay::RecentInference>,
) -> axum::Json<Vec<clawpen_api::InferenceRecord>> {
    axum::Json(recent.list())
}

async fn api_not_found(uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no API route {}", uri.path()),
    )
}

/// The whole app: login (open), API and console (token or session
/// required). `secure_cookies`: the listener is TLS, so the session cookie
/// is marked `Secure`.
pub fn router(state: AppState, console: Router, secure_cookies: bool) -> Router {
    let credentials = auth::Credentials {
        token: state.token.clone(),
        sessions: state.sessions.clone(),
    };
    let api = Router::new()
        .route("/vms", get(vms::list).post(vms::create))
        .route("/vms/{name}", get(vms::get).delete(vms::delete))
        .route("/vms/{name}/logs", get(vms::logs))
        .route("/vms/{name}/inference", get(vms::inference))
        .route(
            "/vms/{name}/forwards",
            get(forwards::list).post(forwards::open),
        )
        .route("/vms/{name}/shares", get(shares::list).post(shares::add))
        .route("/vms/{name}/shares/{tag}", delete(shares::remove))
        .route(
            "/vms/{name}/snapshots",
            get(vms::snapshots).post(vms::take_snapshot),
        )
        .route(
            "/vms/{name}/snapshots/{snapshot}",
            delete(vms::delete_snapshot),
        )
        .route(
            "/vms/{name}/snapshots/{snapshot}/restore",
            post(vms::restore_snapshot),
        )
        .route("/vms/{name}/start", post(vms::start))
        .route("/vms/{name}/stop", post(vms::stop))
        .route("/vms/{name}/reset", post(vms::reset))
        .route(
            "/vms/{name}/egress/rules",
            get(egress::rules).post(egress::add_rule),
        )
        .route("/vms/{name}/egress/rules/{id}", delete(egress::delete_rule))
        .route("/vms/{name}/egress/log", get(egress::log))
        .route("/events", get(events::stream))
        .route("/inference/recent", get(recent_inference))
        .fallback(api_not_found)
        .with_state(state.clone());
    let protected = Router::new()
        .nest(clawpen_api::API_PREFIX, api)
        .merge(console)
        .layer(from_fn_with_state(credentials.clone(), auth::require_token))
        .layer(axum::middleware::from_fn(auth::same_origin));
    Router::new()
        .route("/login", get(auth::login))
        .with_state(auth::Login {
            credentials,
            secure: secure_cookies,
        })
        .merge(protected)
}
