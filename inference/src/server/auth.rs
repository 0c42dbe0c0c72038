//! API-key middleware for `/v1/*`: the key names the client, every
//! handler sees it as the [`Client`] extension. A client allowed to
//! delegate (a VM host's supervisor, see [`crate::keys::Identity`]) may
//! name the VM it relays for in [`ON_BEHALF_OF`]: the request is then
//! `CLIENT/VM`, so fair queueing and the per-client prefix cache keep VMs
//! apart on this host too.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::keys::{delegated_client, KeyError, ON_BEHALF_OF};

/// The client a request came from (the name its API key maps to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client(pub String);

/// Refuses requests without a valid key (when keys are configured).
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.keys.identify(header, state.key_policy) {
        Ok(identity) => {
            let client = match req.headers().get(ON_BEHALF_OF) {
                None => identity.client,
                Some(sub) => {
                    let sub = String::from_utf8_lossy(sub.as_bytes());
                    match delegated_client(&identity, &sub) {
                        Ok(client) => client,
                        Err(e) => {
                            tracing::warn!(path = %req.uri().path(), "refused: {e}");
                            return ApiError::invalid_request(e.to_string()).into_response();
                        }
                    }
                }
            };
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
