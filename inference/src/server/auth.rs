//! API-key middleware for `/v1/*`: the key names the client, every
//! handler sees it as the [`Client`] extension. A client allowed to
//! delegate (a VM host's supervisor, see [`crate::keys::Identity`]) may
//! name the VM it relays for in [`ON_BEHALF_OF`]: the request is then
//! `CLIENT/VM`, so fair queueing and the per-client prefix cache keep VMs
//! apart on this host too.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::guest_link::GuestPeer;
use crate::keys::{delegated_client, KeyError, KeyPolicy, ON_BEHALF_OF};

/// The client a request came from (the name its API key maps to).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client(pub String);

/// On the guests' listener, whether the key's client is the VM whose
/// gateway carried the connection ([`crate::guest_link`]); a key that
/// leaked from one guest to another is refused (and logged) there.
/// Always true on the host's listener.
fn from_its_own_vm(req: &Request, state: &AppState, client: &str) -> bool {
    if state.key_policy != KeyPolicy::Required {
        return true;
    }
    let carried_for = req
        .extensions()
        .get::<ConnectInfo<GuestPeer>>()
        .map(|ConnectInfo(peer)| peer.vm.as_str());
    if carried_for == Some(client) {
        return true;
    }
    tracing::warn!(
        key_of = client,
        connection_from = ?carried_for,
        path = %req.uri().path(),
        "refused: a VM presented another VM's inference key"
    );
    false
}

/// Refuses requests without a valid key (when keys are configured).
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match state.keys.identify(header, state.key_policy) {
        Ok(identity) if !from_its_own_vm(&req, &state, &identity.client) => {
            ApiError::unauthorized("This API key belongs to another VM.").into_response()
        }
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
