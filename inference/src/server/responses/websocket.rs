//! `GET /v1/responses`, upgraded: the Responses API's WebSocket mode (Open
//! Responses 2026-04-24, "WebSocket Transport").
//!
//! Each `response.create` message is a Responses request body with a
//! `type`; it runs as the same [`Turn`] as `POST /v1/responses` with
//! `stream: true`, and every event the SSE stream would carry is sent as
//! one text message. One socket runs one response at a time: messages that
//! arrive meanwhile wait (a few, each at most `max_body_bytes`; beyond
//! that the socket is not read), so a client cannot make the service hold
//! more than a bounded amount for it. A client that goes away (close, a
//! broken socket) drops the turn's driver, which cancels the generation as
//! a dropped HTTP body does.
//!
//! "WebSocket Continuation": the connection keeps its last response
//! ([`Recent`]), stored or not, so `store: false` turns continue on the
//! same socket; a `previous_response_id` it does not name is looked up in
//! the store; a failed continuation forgets the response it named. A new
//! connection starts with nothing kept. "WebSocket Reconnects": a
//! connection lasts at most [`LIFETIME`]. "WebSocket Errors": every
//! refusal is an `error` message with its status ([`error_event`]); the
//! socket stays open for the next message. When the server stops, an idle
//! session closes at once (1001, going away) and a running turn gets the
//! grace an HTTP request gets ([`crate::SHUTDOWN_GRACE`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};

use super::request::ResponsesRequest;
use super::{prepare, Events, Turn};
use crate::metrics::Endpoint;
use crate::server::auth::Client;
use crate::server::body::{deserialize, parse_object};
use crate::server::{ApiError, AppState};

/// How long one connection may last ("WebSocket connections are limited
/// to 60 minutes"); then `websocket_connection_limit_reached`.
pub const LIFETIME: Duration = Duration::from_secs(60 * 60);

/// "60 minutes", or seconds for a lifetime under a minute.
fn lifetime_text(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 60 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

/// Messages read while a response runs and kept for after it. Each is at
/// most `max_body_bytes`; with this many waiting the socket is not read
/// until the response ends.
const MAX_WAITING: usize = 4;

/// The request fields of HTTP streaming that a WebSocket `response.create`
/// must not carry.
const HTTP_ONLY: [&str; 3] = ["stream", "stream_options", "background"];

/// A connection's last response, kept in its memory: its id and the whole
/// context a continuation of it reads (every item of the chain it
/// continued, its input, its output).
#[derive(Debug, Clone)]
pub struct Recent {
    pub id: String,
    pub items: Vec<Value>,
}

/// The client closed the connection or it broke: the session ends.
struct Gone;

/// `GET /v1/responses` with a WebSocket upgrade (behind the API key like
/// every `/v1` route). Without one: an OpenAI-shaped error.
pub async fn upgrade(
    State(state): State<AppState>,
    Extension(client): Extension<Client>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            return ApiError::new(
                rejection.status(),
                "invalid_request_error",
                format!(
                    "GET /v1/responses is the WebSocket mode: {}",
                    rejection.body_text()
                ),
            )
            .into_response()
        }
    };
    // A frame or message over the limit is refused by its header, before
    // it is read.
    let limit = state.config.max_body_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            // A session past the server's stop gets the grace an HTTP
            // request gets, then is dropped (its generation cancelled).
            let cutoff = {
                let stopped = state.stopped();
                async move {
                    stopped.await;
                    tokio::time::sleep(crate::SHUTDOWN_GRACE).await;
                }
            };
            tokio::select! {
                () = Session::new(state, client).serve(socket) => {}
                () = cutoff => tracing::info!("responses websocket cut off at shutdown"),
            }
        })
}

/// One connection.
struct Session {
    state: AppState,
    client: Client,
    recent: Option<Recent>,
    waiting: VecDeque<Utf8Bytes>,
    tx: Option<SplitSink<WebSocket, Message>>,
}

impl Session {
    fn new(state: AppState, client: Client) -> Self {
        Self {
            state,
            client,
            recent: None,
            waiting: VecDeque::new(),
            tx: None,
        }
    }

    async fn serve(mut self, socket: WebSocket) {
        let lifetime = self.state.config.websocket_lifetime;
        let deadline = tokio::time::Instant::now() + lifetime;
        let (tx, mut rx) = socket.split();
        self.tx = Some(tx);
        tracing::debug!(client = %self.client.0, "responses websocket opened");
        let stopped = self.state.stopped();
        tokio::pin!(stopped);
        loop {
            if *self.state.stopping.borrow() {
                return self.close(close_code::AWAY, "server shutting down").await;
            }
            let text = match self.waiting.pop_front() {
                Some(text) => text,
                None => {
                    let read = tokio::select! {
                        read = rx.next() => read,
                        () = tokio::time::sleep_until(deadline) => break,
                        () = &mut stopped => continue,
                    };
                    match self.message(read).await {
                        Ok(Some(text)) => text,
                        Ok(None) => continue,
                        Err(Gone) => return,
                    }
                }
            };
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            if self.turn(&text, &mut rx).await.is_err() {
                return;
            }
        }
        let limit = ApiError::invalid_request(format!(
            "WebSocket connections are limited to {}: open a new one.",
            lifetime_text(lifetime)
        ))
        .with_code("websocket_connection_limit_reached");
        if self.send_error(&limit).await.is_ok() {
            self.close(close_code::NORMAL, "websocket_connection_limit_reached")
                .await;
        }
    }

    /// Ends the session with a close frame (best effort: the socket may be
    /// gone already).
    async fn close(&mut self, code: u16, reason: &'static str) {
        let close = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = self.send(Message::Close(Some(close))).await;
    }

    /// What one read gave: a request's text, nothing to act on (a ping, a
    /// binary message, answered with an error), or the end.
    async fn message(
        &mut self,
        read: Option<Result<Message, axum::Error>>,
    ) -> Result<Option<Utf8Bytes>, Gone> {
        match read {
            None | Some(Ok(Message::Close(_))) => Err(Gone),
            Some(Err(e)) => {
                // A message over the limit, a protocol violation: said if
                // the socket still takes it, then the session ends.
                tracing::info!(client = %self.client.0, "responses websocket read failed: {e}");
                let _ = self
                    .send_error(&ApiError::invalid_request(format!(
                        "Could not read the message: {e}"
                    )))
                    .await;
                Err(Gone)
            }
            Some(Ok(Message::Text(text))) => Ok(Some(text)),
            Some(Ok(Message::Binary(_))) => {
                self.send_error(&ApiError::invalid_request(
                    "Send each event as a JSON text message.",
                ))
                .await?;
                Ok(None)
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(None),
        }
    }

    /// Runs one `response.create`: its events, or its `error`.
    async fn turn(&mut self, text: &str, rx: &mut SplitStream<WebSocket>) -> Result<(), Gone> {
        let started = Instant::now();
        let request = match parse_create(text) {
            Ok(r) => r,
            Err(e) => return self.refuse(&e, None).await,
        };
        let previous = request.previous_response_id.clone();
        let prepared = prepare(&self.state, &self.client, request, self.recent.as_ref()).await;
        let p = match prepared {
            Ok(p) => p,
            Err(e) => return self.refuse(&e, previous.as_deref()).await,
        };
        let turn = Turn::begin(&self.state, self.client.clone(), p, true);
        let mut driver = turn.drive(&self.state, Events::websocket, started);
        if let Err(e) = driver.accept(self.state.accept_grace()).await {
            self.forget(previous.as_deref());
            return self.send_error(&ApiError::from_engine(&e)).await;
        }
        loop {
            let piece = {
                let next = driver.next();
                tokio::pin!(next);
                loop {
                    // The driver's future is polled to its end, never
                    // dropped half way (it may be storing the response);
                    // reads in between only queue requests or end it all.
                    tokio::select! {
                        biased;
                        piece = &mut next => break piece,
                        read = rx.next(), if self.waiting.len() < MAX_WAITING => {
                            if let Some(text) = self.message(read).await? {
                                self.waiting.push_back(text);
                            }
                        }
                    }
                }
            };
            let Some(bytes) = piece else { break };
            let text = Utf8Bytes::try_from(bytes).map_err(|e| {
                tracing::error!("a response event is not UTF-8: {e}");
                Gone
            })?;
            self.send(Message::Text(text)).await?;
        }
        // A completed (or incomplete) response is kept for the next turn;
        // a failed one leaves nothing, and the one it continued is
        // forgotten.
        match driver.into_protocol().saver.recent {
            Some(recent) => self.recent = Some(recent),
            None => self.forget(previous.as_deref()),
        }
        Ok(())
    }

    /// A request refused before it ran: recorded as for HTTP, answered
    /// with an `error` message; a continuation's response is forgotten.
    async fn refuse(&mut self, e: &ApiError, previous: Option<&str>) -> Result<(), Gone> {
        tracing::info!(client = %self.client.0, "responses websocket request refused: {e}");
        self.state
            .metrics
            .rejected(&self.client.0, Endpoint::Responses);
        self.forget(previous);
        self.send_error(e).await
    }

    /// "If a continuation turn fails with a 4xx or 5xx error, the server
    /// MUST evict the referenced `previous_response_id`."
    fn forget(&mut self, previous: Option<&str>) {
        if previous.is_some() && self.recent.as_ref().map(|r| r.id.as_str()) == previous {
            self.recent = None;
        }
    }

    async fn send_error(&mut self, e: &ApiError) -> Result<(), Gone> {
        let event = error_event(e).to_string();
        self.send(Message::Text(event.into())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), Gone> {
        let tx = self.tx.as_mut().ok_or(Gone)?;
        tx.send(message).await.map_err(|_| Gone)
    }
}

/// A `response.create` message as a Responses request: a JSON object of
/// that `type`, without HTTP streaming's fields, otherwise read exactly as
/// a `POST /v1/responses` body.
fn parse_create(text: &str) -> Result<ResponsesRequest, ApiError> {
    let mut object = parse_object(text.as_bytes())?;
    match object.remove("type") {
        Some(Value::String(t)) if t == "response.create" => {}
        Some(Value::String(t)) => {
            return Err(ApiError::invalid_param(
                "type",
                format!("Unknown event type '{t}': send 'response.create'."),
            )
            .with_code("unknown_event_type"))
        }
        _ => {
            return Err(ApiError::invalid_param(
                "type",
                "Each message needs 'type': 'response.create'.",
            ))
        }
    }
    if let Some(field) = HTTP_ONLY.iter().find(|f| object.contains_key(**f)) {
        return Err(ApiError::invalid_param(
            *field,
            format!("'{field}' is an HTTP field: do not send it on a WebSocket."),
        ));
    }
    deserialize(object)
}

/// The spec's WebSocket `error` message (`WebSocketErrorEvent`): the
/// HTTP status and the OpenAI error, whose `code` is required (its `type`
/// stands in when the error has none).
pub fn error_event(e: &ApiError) -> Value {
    json!({
        "type": "error",
        "status": e.status.as_u16(),
        "error": {
            "type": e.kind,
            "code": e.code.as_deref().unwrap_or(e.kind),
            "message": e.message,
            "param": e.param,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_messages_are_request_bodies_with_a_type() {
        let r = parse_create(r#"{"type":"response.create","model":"m","input":"hi"}"#).unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        let e = parse_create(r#"{"type":"response.cancel"}"#).unwrap_err();
        assert_eq!(e.code.as_deref(), Some("unknown_event_type"));
        let e = parse_create(r#"{"model":"m"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("type"));
        for field in HTTP_ONLY {
            let e = parse_create(&format!(r#"{{"type":"response.create","{field}":true}}"#))
                .unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field));
        }
        let e = parse_create("nope").unwrap_err();
        assert_eq!(e.code.as_deref(), Some("invalid_json"));
        let e = parse_create(r#"{"type":"response.create","input":7}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
    }

    #[test]
    fn errors_have_the_spec_envelope() {
        let v = error_event(&ApiError::previous_response_not_found("resp_abc"));
        assert_eq!(v["type"], "error");
        assert_eq!(v["status"], 400);
        assert_eq!(v["error"]["code"], "previous_response_not_found");
        assert_eq!(v["error"]["param"], "previous_response_id");
        let v = error_event(&ApiError::internal("boom"));
        assert_eq!(v["status"], 500);
        assert!(v["error"]["code"].is_string(), "{v}");
    }
}
