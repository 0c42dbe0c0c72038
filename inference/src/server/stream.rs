//! Drives one generation into an HTTP body, for both wire formats.
//!
//! A [`Driver`] owns the engine's stream, the output [`Generation`], the
//! [`Protocol`] that renders it and the request's [`Recorder`]. The HTTP
//! body polls the driver; nothing is spawned. So:
//!
//! - response headers go out as soon as the handler returns, before any
//!   token (the engine may still be prefilling);
//! - whenever nothing was sent for `keepalive` (prefill, a stalled
//!   engine), the protocol's keep-alive is sent (`response.in_progress`,
//!   `: keep-alive`, a space before a JSON body), so undici's 300 s
//!   headers/body timeouts never fire;
//! - a client that goes away drops the body, which drops the driver, the
//!   engine stream and the upstream request: the generation is cancelled and
//!   the live-generations gauge goes back down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::engine::{EngineError, EngineStream, FinishReason};
use crate::generation::{GenEvent, Generation, Outcome, OutputOptions, Step};
use crate::metrics::{Recorder, RequestStatus};

/// The last frame of a streamed answer on either API: OpenAI's Chat
/// Completions sentinel, which Open Responses makes the terminal event of a
/// Responses stream too ("The terminal event MUST be the literal string
/// `[DONE]`"); the official SDKs stop reading at it.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Renders a generation in one wire format.
#[async_trait]
pub trait Protocol: Send + 'static {
    /// `Content-Type` of the body.
    fn content_type(&self) -> &'static str;
    /// Sent at once, before the engine produced anything; `queued`: the
    /// engine has already put the request in line behind others.
    fn start(&mut self, queued: bool) -> Vec<Bytes>;
    /// One piece of output.
    fn event(&mut self, event: GenEvent) -> Vec<Bytes>;
    /// Nothing was sent for a keep-alive interval.
    fn keepalive(&mut self) -> Bytes;
    /// The generation ended. Async because results are stored before they
    /// are announced.
    async fn done(&mut self, outcome: &Outcome) -> Vec<Bytes>;
    /// The generation failed.
    fn failed(&mut self, error: &EngineError) -> Vec<Bytes>;
    /// The status a body-complete answer gets (used when the whole body was
    /// ready before the headers were committed).
    fn status(&self) -> StatusCode;
}

enum Phase {
    /// The engine has not accepted the request yet.
    Starting(BoxFuture<'static, Result<EngineStream, EngineError>>),
    Running(Box<Generation>),
    Finished,
}

/// See the module documentation.
pub struct Driver<P: Protocol> {
    phase: Phase,
    output: Option<OutputOptions>,
    protocol: P,
    pending: VecDeque<Bytes>,
    keepalive: Duration,
    last_sent: Instant,
    started_at: Instant,
    recorder: Option<Recorder>,
    opened: bool,
}

/// What one wait on the engine gave.
enum Polled {
    Timeout,
    Accepted(EngineStream),
    Step(Step),
    Failed(EngineError),
}

impl<P: Protocol> Driver<P> {
    pub fn new(
        start: BoxFuture<'static, Result<EngineStream, EngineError>>,
        output: OutputOptions,
        protocol: P,
        recorder: Recorder,
        keepalive: Duration,
        started_at: Instant,
    ) -> Self {
        Self {
            phase: Phase::Starting(start),
            output: Some(output),
            protocol,
            pending: VecDeque::new(),
            keepalive,
            last_sent: Instant::now(),
            started_at,
            recorder: Some(recorder),
            opened: false,
        }
    }

    /// Waits up to `grace` for the engine to accept the request, so that
    /// a refusal can still get an error status. `Err` when it refused (the
    /// request is then recorded as failed).
    pub async fn accept(&mut self, grace: Duration) -> Result<(), EngineError> {
        if let Phase::Starting(start) = &mut self.phase {
            match tokio::time::timeout(grace, start).await {
                Err(_) => {}
                Ok(Ok(stream)) => self.run(stream),
                Ok(Err(e)) => {
                    self.phase = Phase::Finished;
                    if let Some(r) = self.recorder.take() {
                        r.fail(&e.to_string());
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The whole answer was produced: nothing pending, nothing to come.
    pub fn finished(&self) -> bool {
        matches!(self.phase, Phase::Finished) && self.pending.is_empty()
    }

    pub fn status(&self) -> StatusCode {
        self.protocol.status()
    }

    /// The protocol, once the driver is done with it: what it kept of the
    /// answer (a WebSocket keeps its last response for the next turn).
    pub fn into_protocol(self) -> P {
        self.protocol
    }

    fn run(&mut self, stream: EngineStream) {
        if let Some(output) = self.output.take() {
            self.phase = Phase::Running(Box::new(Generation::new(stream, output, self.started_at)));
        }
    }

    /// The next piece of the body; `None` at its end.
    pub async fn next(&mut self) -> Option<Bytes> {
        let mut early = None;
        if !self.opened {
            self.opened = true;
            // What the engine has ready at once (cancel-safe to ask): a
            // request it already put in line starts out `queued`.
            if let Phase::Running(generation) = &mut self.phase {
                early = generation.next().now_or_never().map(|r| match r {
                    Ok(step) => Polled::Step(step),
                    Err(e) => Polled::Failed(e),
                });
            }
            let queued = matches!(early, Some(Polled::Step(Step::Event(GenEvent::Queued))));
            let start = self.protocol.start(queued);
            self.pending.extend(start);
        }
        loop {
            if let Some(b) = self.pending.pop_front() {
                self.last_sent = Instant::now();
                return Some(b);
            }
            let deadline = tokio::time::Instant::from_std(self.last_sent + self.keepalive);
            let polled = match (early.take(), &mut self.phase) {
                (Some(polled), _) => polled,
                (None, phase) => match phase {
                    Phase::Finished => return None,
                    Phase::Starting(start) => {
                        match tokio::time::timeout_at(deadline, start).await {
                            Err(_) => Polled::Timeout,
                            Ok(Ok(stream)) => Polled::Accepted(stream),
                            Ok(Err(e)) => Polled::Failed(e),
                        }
                    }
                    Phase::Running(generation) => {
                        match tokio::time::timeout_at(deadline, generation.next()).await {
                            Err(_) => Polled::Timeout,
                            Ok(Ok(step)) => Polled::Step(step),
                            Ok(Err(e)) => Polled::Failed(e),
                        }
                    }
                },
            };
            match polled {
                Polled::Timeout => {
                    let k = self.protocol.keepalive();
                    self.pending.push_back(k);
                }
                Polled::Accepted(stream) => self.run(stream),
                Polled::Step(Step::Event(e)) => {
                    let out = self.protocol.event(e);
                    self.pending.extend(out);
                }
                Polled::Step(Step::Done(outcome)) => {
                    let out = self.protocol.done(&outcome).await;
                    self.pending.extend(out);
                    self.phase = Phase::Finished;
                    if let Some(r) = self.recorder.take() {
                        let status = if outcome.finish == FinishReason::Length {
                            RequestStatus::Incomplete
                        } else {
                            RequestStatus::Completed
                        };
                        r.complete(&outcome, status);
                    }
                }
                Polled::Failed(e) => {
                    tracing::warn!("generation failed: {e}");
                    let out = self.protocol.failed(&e);
                    self.pending.extend(out);
                    self.phase = Phase::Finished;
                    if let Some(r) = self.recorder.take() {
                        r.fail(&e.to_string());
                    }
                }
            }
        }
    }

    fn into_body(self) -> Body {
        Body::from_stream(futures::stream::unfold(self, |mut d| async move {
            d.next().await.map(|b| (Ok::<_, Infallible>(b), d))
        }))
    }
}

/// What a whole (unstreamed) JSON answer gathers from its generation.
#[async_trait]
pub trait Gather: Send + 'static {
    /// One piece of output.
    fn event(&mut self, event: GenEvent);
    /// The answer, once the generation ended. Async because results are
    /// stored before they are announced.
    async fn done(&mut self, outcome: &Outcome) -> serde_json::Value;
}

/// The [`Protocol`] of a whole JSON answer: spaces while nothing is ready
/// (valid before JSON), then the object a [`Gather`] built, or the error
/// body of a failed generation (with its status, when the headers are not
/// out yet).
pub struct WholeJson<G> {
    gather: G,
    status: StatusCode,
}

impl<G: Gather> WholeJson<G> {
    pub fn new(gather: G) -> Self {
        Self {
            gather,
            status: StatusCode::OK,
        }
    }
}

#[async_trait]
impl<G: Gather> Protocol for WholeJson<G> {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn start(&mut self, _queued: bool) -> Vec<Bytes> {
        Vec::new()
    }

    fn event(&mut self, event: GenEvent) -> Vec<Bytes> {
        self.gather.event(event);
        Vec::new()
    }

    fn keepalive(&mut self) -> Bytes {
        Bytes::from_static(b" ")
    }

    async fn done(&mut self, outcome: &Outcome) -> Vec<Bytes> {
        vec![Bytes::from(self.gather.done(outcome).await.to_string())]
    }

    fn failed(&mut self, error: &EngineError) -> Vec<Bytes> {
        let e = super::ApiError::from_engine(error);
        self.status = e.status;
        vec![Bytes::from(serde_json::json!(e.body()).to_string())]
    }

    fn status(&self) -> StatusCode {
        self.status
    }
}

/// A streamed (SSE) answer: headers now, events as they come.
pub fn sse_response<P: Protocol>(driver: Driver<P>) -> Response {
    let content_type = driver.protocol.content_type();
    response(StatusCode::OK, content_type, driver.into_body())
}

/// A whole-JSON answer. When the driver finishes within its first
/// keep-alive interval the answer gets its real status; otherwise the
/// headers (200) go out and spaces keep the connection alive until the
/// JSON follows (leading whitespace is valid JSON).
pub async fn json_response<P: Protocol>(mut driver: Driver<P>) -> Response {
    let content_type = driver.protocol.content_type();
    let first = driver.next().await.unwrap_or_default();
    if driver.finished() {
        return response(driver.status(), content_type, Body::from(first));
    }
    let rest = futures::stream::once(async move { first })
        .chain(futures::stream::unfold(driver, |mut d| async move {
            d.next().await.map(|b| (b, d))
        }))
        .map(Ok::<_, Infallible>);
    response(StatusCode::OK, content_type, Body::from_stream(rest))
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells proxies (nginx) not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
