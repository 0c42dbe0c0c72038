//! Builds a Responses answer from clean output, as the official API does:
//! the response object and, for streams, every event in the official
//! order, each with its `sequence_number`.
//!
//! Text opens a `message` item (`output_item.added`, `content_part.added`,
//! `output_text.delta`...), a refusal a `message` item with a `refusal`
//! part (`response.refusal.delta`...), reasoning a `reasoning` item with
//! summary text (`reasoning_summary_part.added`,
//! `reasoning_summary_text.delta`...), each tool call a `function_call` item. A change of kind closes the open
//! item (`...done` events, `output_item.done`). Non-streamed answers run
//! the same machine and keep only the final object.

use serde_json::{json, Map, Value};

use crate::engine::{FinishReason, Usage};
use crate::generation::{GenEvent, Outcome, ToolCallOut};
use crate::ids::new_id;

/// What the response object echoes of its request.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    pub instructions: Value,
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub max_output_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub reasoning_effort: Option<String>,
    pub reasoning_summary: Option<String>,
    pub text_format: Value,
    pub store: bool,
    pub previous_response_id: Option<String>,
    pub prompt_cache_key: Option<String>,
    pub metadata: Map<String, Value>,
    pub user: Option<String>,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
    /// Function calls past this many are left out of the output.
    pub max_tool_calls: Option<u64>,
    pub safety_identifier: Option<String>,
    pub truncation: super::request::Truncation,
}

/// Open Responses' `Usage` object of an engine's counts.
pub fn usage(u: &Usage) -> Value {
    json!({
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

/// Seconds since the epoch, for `completed_at`.
fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What kind of item text is being written into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A `message` with an `output_text` part.
    Message,
    /// A `message` with a `refusal` part.
    Refusal,
    /// A `reasoning` item with a `summary_text` part.
    Reasoning,
}

impl Kind {
    /// The name of its delta event.
    fn delta_event(self) -> &'static str {
        match self {
            Kind::Message => "response.output_text.delta",
            Kind::Refusal => "response.refusal.delta",
            Kind::Reasoning => "response.reasoning_summary_text.delta",
        }
    }

    /// The part in its state so far (`text` empty when just added).
    fn part(self, text: &str) -> Value {
        match self {
            Kind::Message => {
                json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
            }
            Kind::Refusal => json!({"type": "refusal", "refusal": text}),
            Kind::Reasoning => json!({"type": "summary_text", "text": text}),
        }
    }
}

/// The item text is being written into.
#[derive(Debug)]
struct Open {
    kind: Kind,
    id: String,
    text: String,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ResponseBuilder {
    pub id: String,
    created_at: u64,
    model: String,
    echo: Echo,
    seq: u64,
    output: Vec<Value>,
    open: Option<Open>,
    /// Function calls in `output` so far.
    calls: u64,
    /// The engine said the request waits, and its turn has not come.
    queued: bool,
}

impl ResponseBuilder {
    pub fn new(id: String, created_at: u64, model: String, echo: Echo) -> Self {
        Self {
            id,
            created_at,
            model,
            echo,
            seq: 0,
            output: Vec::new(),
            open: None,
            calls: 0,
            queued: false,
        }
    }

    /// The finished output items.
    pub fn output(&self) -> &[Value] {
        &self.output
    }

    /// The response object in `status`.
    pub fn response(
        &self,
        status: &str,
        usage: Option<Value>,
        extra: Option<(&str, Value)>,
    ) -> Value {
        let e = &self.echo;
        let mut r = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "completed_at": (status == "completed").then(now_unix),
            "error": null,
            "incomplete_details": null,
            "instructions": e.instructions,
            "max_output_tokens": e.max_output_tokens,
            "max_tool_calls": e.max_tool_calls,
            "presence_penalty": e.presence_penalty,
            "frequency_penalty": e.frequency_penalty,
            "top_logprobs": 0,
            "safety_identifier": e.safety_identifier,
            "model": self.model,
            "output": self.output,
            "parallel_tool_calls": e.parallel_tool_calls,
            "previous_response_id": e.previous_response_id,
            "prompt_cache_key": e.prompt_cache_key,
            "reasoning": {"effort": e.reasoning_effort, "summary": e.reasoning_summary},
            "service_tier": "default",
            "store": e.store,
            "temperature": e.temperature.unwrap_or(1.0),
            "text": {"format": e.text_format},
            "tool_choice": e.tool_choice,
            "tools": e.tools,
            "top_p": e.top_p.unwrap_or(1.0),
            "truncation": e.truncation,
            "usage": usage,
            "user": e.user,
            "metadata": e.metadata,
        });
        if let Some((k, v)) = extra {
            r[k] = v;
        }
        r
    }

    fn event(&mut self, kind: &str, mut fields: Value) -> Value {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.seq);
        self.seq += 1;
        fields
    }

    /// `response.created`, then `response.in_progress`, or
    /// `response.queued` for a request the engine put in line (`queued`).
    pub fn start(&mut self, queued: bool) -> Vec<Value> {
        self.queued = queued;
        let status = if queued { "queued" } else { "in_progress" };
        let created = self.response(status, None, None);
        vec![
            self.event("response.created", json!({"response": created})),
            self.state_event(),
        ]
    }

    /// A keep-alive: the current state's event again (`response.queued`
    /// while the request waits, `response.in_progress` after).
    pub fn keepalive(&mut self) -> Value {
        self.state_event()
    }

    /// `response.queued` or `response.in_progress`, whichever holds now.
    fn state_event(&mut self) -> Value {
        let status = if self.queued { "queued" } else { "in_progress" };
        let r = self.response(status, None, None);
        self.event(&format!("response.{status}"), json!({"response": r}))
    }

    /// The events of one piece of output.
    pub fn push(&mut self, e: GenEvent) -> Vec<Value> {
        let mut out = Vec::new();
        match e {
            // The spec's state machine: queued, then in_progress when the
            // request leaves the queue. `start` announced a wait the engine
            // had reported at once; one reported later is announced here.
            GenEvent::Queued if !self.queued => {
                self.queued = true;
                out.push(self.state_event());
            }
            GenEvent::Queued => {}
            GenEvent::Dequeued => {
                self.queued = false;
                out.push(self.state_event());
            }
            GenEvent::Text(delta) => self.append(Kind::Message, &delta, &mut out),
            GenEvent::Reasoning(delta) => self.append(Kind::Reasoning, &delta, &mut out),
            GenEvent::Refusal(delta) => self.append(Kind::Refusal, &delta, &mut out),
            GenEvent::ToolCall(call) => {
                if self
                    .echo
                    .max_tool_calls
                    .is_some_and(|max| self.calls >= max)
                {
                    tracing::debug!(name = %call.name, "call past max_tool_calls left out");
                    return out;
                }
                self.calls += 1;
                self.close(&mut out, "completed");
                self.function_call(call, &mut out);
            }
        }
        out
    }

    /// Writes `delta` into an item of `kind`, opening one (and closing
    /// the item of another kind) first.
    fn append(&mut self, kind: Kind, delta: &str, out: &mut Vec<Value>) {
        if self.open.as_ref().map(|o| o.kind) != Some(kind) {
            self.close(out, "completed");
            self.open_item(kind, out);
        }
        let index = self.output.len();
        let Some(open) = self.open.as_mut() else {
            return;
        };
        open.text.push_str(delta);
        let mut fields = json!({"item_id": open.id, "output_index": index, "delta": delta});
        match kind {
            Kind::Message => {
                fields["content_index"] = json!(0);
                fields["logprobs"] = json!([]);
            }
            Kind::Refusal => fields["content_index"] = json!(0),
            Kind::Reasoning => fields["summary_index"] = json!(0),
        }
        out.push(self.event(kind.delta_event(), fields));
    }

    /// `output_item.added` and the part's `...part.added`.
    fn open_item(&mut self, kind: Kind, out: &mut Vec<Value>) {
        let index = self.output.len();
        let (id, item, part_event, index_field) = match kind {
            Kind::Message | Kind::Refusal => {
                let id = new_id("msg_");
                let item = json!({"id": id, "type": "message", "status": "in_progress",
                                  "role": "assistant", "content": []});
                (id, item, "response.content_part.added", "content_index")
            }
            Kind::Reasoning => {
                let id = new_id("rs_");
                let item = json!({"id": id, "type": "reasoning", "summary": []});
                (
                    id,
                    item,
                    "response.reasoning_summary_part.added",
                    "summary_index",
                )
            }
        };
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        ));
        let mut fields = json!({"item_id": id, "output_index": index, "part": kind.part("")});
        fields[index_field] = json!(0);
        out.push(self.event(part_event, fields));
        self.open = Some(Open {
            kind,
            id,
            text: String::new(),
        });
    }

    fn function_call(&mut self, call: ToolCallOut, out: &mut Vec<Value>) {
        let id = new_id("fc_");
        let index = self.output.len();
        out.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": {"id": id, "type": "function_call",
                   "status": "in_progress", "call_id": call.id, "name": call.name,
                   "arguments": ""}}),
        ));
        out.push(self.event(
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index, "delta": call.arguments}),
        ));
        out.push(self.event(
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": index, "name": call.name,
                   "arguments": call.arguments}),
        ));
        let item = json!({"id": id, "type": "function_call", "status": "completed",
                          "call_id": call.id, "name": call.name, "arguments": call.arguments});
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
    }

    /// Closes the open item with its `...done` events. `status`: a message's
    /// (`completed`, or `incomplete` when the response was cut off while
    /// writing it). Reasoning items carry no status in the spec's schema.
    fn close(&mut self, out: &mut Vec<Value>, status: &str) {
        let index = self.output.len();
        let Some(Open { kind, id, text }) = self.open.take() else {
            return;
        };
        let part = kind.part(&text);
        let (done_event, mut done) = match kind {
            Kind::Message => (
                "response.output_text.done",
                json!({"text": text, "logprobs": []}),
            ),
            Kind::Refusal => ("response.refusal.done", json!({"refusal": text})),
            Kind::Reasoning => (
                "response.reasoning_summary_text.done",
                json!({"text": text}),
            ),
        };
        let (part_done, index_field, item) = match kind {
            Kind::Message | Kind::Refusal => (
                "response.content_part.done",
                "content_index",
                json!({"id": id, "type": "message", "status": status,
                       "role": "assistant", "content": [part]}),
            ),
            Kind::Reasoning => (
                "response.reasoning_summary_part.done",
                "summary_index",
                json!({"id": id, "type": "reasoning", "summary": [part]}),
            ),
        };
        done["item_id"] = json!(id);
        done["output_index"] = json!(index);
        done[index_field] = json!(0);
        out.push(self.event(done_event, done));
        let mut fields = json!({"item_id": id, "output_index": index, "part": part});
        fields[index_field] = json!(0);
        out.push(self.event(part_done, fields));
        out.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        ));
        self.output.push(item);
    }

    /// Closes the output; returns the closing events and the final
    /// response object (`completed`, or `incomplete` when the token limit
    /// stopped it).
    pub fn finish(&mut self, outcome: &Outcome) -> (Vec<Value>, Value) {
        let mut out = Vec::new();
        let cut_off = outcome.finish == FinishReason::Length;
        // The item being written when the limit stopped it is incomplete.
        self.close(&mut out, if cut_off { "incomplete" } else { "completed" });
        let usage = usage(&outcome.usage);
        let response = if cut_off {
            self.response(
                "incomplete",
                Some(usage),
                Some(("incomplete_details", json!({"reason": "max_output_tokens"}))),
            )
        } else {
            self.response("completed", Some(usage), None)
        };
        (out, response)
    }

    /// The terminal event for `response` (as [`Self::finish`] built it).
    pub fn terminal(&mut self, response: Value) -> Value {
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(kind, json!({"response": response}))
    }

    /// An `error` event, then `response.failed`: Open Responses has every
    /// error while streaming reported as an `error` event that
    /// `response.failed` follows. Open items are closed first, as
    /// `incomplete`: what was generated is not lost, and is not passed off
    /// as finished.
    /// `kind` is the error's Open Responses type (`server_error`,
    /// `model_error`), also its code.
    pub fn failed(&mut self, kind: &str, message: &str) -> Vec<Value> {
        let mut out = Vec::new();
        self.close(&mut out, "incomplete");
        out.push(self.event(
            "error",
            json!({"error": {"type": kind, "code": kind,
                             "message": message, "param": null}}),
        ));
        let r = self.response(
            "failed",
            None,
            Some(("error", json!({"code": kind, "message": message}))),
        );
        out.push(self.event("response.failed", json!({"response": r})));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Timing;
    use std::time::Duration;

    #[test]
    fn events_follow_the_official_order() {
        let mut b = ResponseBuilder::new("resp_1".into(), 1, "m".into(), Echo::default());
        let mut events = b.start(false);
        events.extend(b.push(GenEvent::Reasoning("think".into())));
        events.extend(b.push(GenEvent::Text("Hel".into())));
        events.extend(b.push(GenEvent::Text("lo".into())));
        events.extend(b.push(GenEvent::ToolCall(ToolCallOut {
            id: "call_1".into(),
            name: "f".into(),
            arguments: "{}".into(),
        })));
        let outcome = Outcome {
            finish: FinishReason::ToolCalls,
            usage: Usage {
                prompt_tokens: 5,
                cached_tokens: 2,
                completion_tokens: 3,
                reasoning_tokens: 0,
            },
            usage_estimated: false,
            timing: Timing {
                queue_wait: None,
                time_to_first_token: None,
                decode: Duration::ZERO,
                total: Duration::ZERO,
            },
            tool_calls: vec![],
            repaired_calls: 0,
            calls: vec![],
            text: String::new(),
        };
        let (closing, response) = b.finish(&outcome);
        events.extend(closing);
        events.push(b.terminal(response.clone()));
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        assert_eq!(response["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(response["output"][2]["call_id"], "call_1");
        assert_eq!(
            response["usage"]["input_tokens_details"]["cached_tokens"],
            2
        );
        assert_eq!(events[12]["output_index"], 1);
    }

    /// The spec's state machine: a request in line is `queued` from
    /// `response.created` on, keep-alives repeat `response.queued`, and
    /// `response.in_progress` comes when its turn does; a wait reported
    /// after the start is announced when it comes.
    #[test]
    fn a_queued_request_moves_from_queued_to_in_progress() {
        let mut b = ResponseBuilder::new("resp_1".into(), 1, "m".into(), Echo::default());
        let mut events = b.start(true);
        events.extend(b.push(GenEvent::Queued));
        events.push(b.keepalive());
        events.extend(b.push(GenEvent::Dequeued));
        events.push(b.keepalive());
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.queued",
                "response.queued",
                "response.in_progress",
                "response.in_progress",
            ]
        );
        let statuses: Vec<&str> = events
            .iter()
            .map(|e| e["response"]["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["queued", "queued", "queued", "in_progress", "in_progress"]
        );

        let mut b = ResponseBuilder::new("resp_2".into(), 1, "m".into(), Echo::default());
        let mut events = b.start(false);
        events.extend(b.push(GenEvent::Queued));
        events.extend(b.push(GenEvent::Dequeued));
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.queued",
                "response.in_progress",
            ]
        );
    }

    /// A refusal is a message of one `refusal` part, streamed with the
    /// spec's `response.refusal.delta` / `.done`; text after it is a
    /// message of its own.
    #[test]
    fn a_refusal_is_a_message_with_a_refusal_part() {
        let mut b = ResponseBuilder::new("resp_1".into(), 1, "m".into(), Echo::default());
        let mut events = b.start(false);
        events.extend(b.push(GenEvent::Refusal("I can't".into())));
        events.extend(b.push(GenEvent::Refusal(" help.".into())));
        events.extend(b.push(GenEvent::Text("Ask me else.".into())));
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds[2..10],
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.refusal.delta",
                "response.refusal.delta",
                "response.refusal.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
            ]
        );
        assert_eq!(events[3]["part"], json!({"type": "refusal", "refusal": ""}));
        assert_eq!(events[6]["refusal"], "I can't help.");
        assert_eq!(events[6]["content_index"], 0);
        let item = &b.output()[0];
        assert_eq!(item["type"], "message");
        assert_eq!(item["status"], "completed");
        assert_eq!(
            item["content"],
            json!([{"type": "refusal", "refusal": "I can't help."}])
        );
    }

    #[test]
    fn a_failure_is_an_error_event_then_response_failed() {
        let mut b = ResponseBuilder::new("resp_1".into(), 1, "m".into(), Echo::default());
        let mut events = b.start(false);
        events.extend(b.push(GenEvent::Text("Hel".into())));
        events.extend(b.failed("server_error", "upstream went away"));
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds[kinds.len() - 3..],
            ["response.output_item.done", "error", "response.failed"]
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i as u64);
        }
        let error = &events[events.len() - 2]["error"];
        assert_eq!(
            *error,
            json!({"type": "server_error", "code": "server_error",
                   "message": "upstream went away", "param": null})
        );
        let done = &events[events.len() - 3]["item"];
        assert_eq!(done["status"], "incomplete");
        assert_eq!(events[events.len() - 1]["response"]["status"], "failed");
    }
}
