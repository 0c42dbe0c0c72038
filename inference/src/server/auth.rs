//! API-key middleware for `/v1/*`: the key names the client, every
//! handler sees it as the [`Client`] extension.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::keys::KeyError;

/// The client a request came from (the name its API key maps to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client(pub String);

/// Refuses requests without a valid key (when keys are configured).
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.keys.client(header, state.key_policy) {
        Ok(client) => {
            req.extensions_mut().insert(Client(client));
            next.run(req).await
        }
        Err(e) => {
            tracing::warn!(path = %req.uri().path(), "refused: {e}");
            let message = match e {
                KeyError::Missing => {
                    "You didn't provide an API key. Send it as `Authorization: Bearer KEY`."
                }
                KeyError::Invalid => "Incorrect API key provided.",
            };
            ApiError::unauthorized(message).into_response()
        }
    }
}
