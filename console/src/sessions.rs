//! Agent sessions per VM: the inference records of one VM grouped into
//! sessions, each a timeline of turns with the VM's egress in between.
//!
//! The grouping ([`sessions_of`], [`timeline`]) is plain data, tested
//! without a browser; [`SessionsPanel`] renders it.

use std::collections::{HashMap, HashSet};

use clawpen_api::{EgressLogEntry, InferenceRecord};
use leptos::either::Either;
use leptos::prelude::*;

use crate::charts::{chart, per_bucket};

/// One agent session of a VM: its turns in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// The `prompt_cache_key`, else the id of the chain's first response.
    pub key: String,
    pub turns: Vec<InferenceRecord>,
}

impl Session {
    /// When the last turn ended (ms since the epoch).
    fn end_ms(&self) -> u64 {
        self.turns.last().map_or(0, turn_end_ms)
    }
}

/// When a turn ended (ms since the epoch).
fn turn_end_ms(r: &InferenceRecord) -> u64 {
    r.started_at_ms + r.duration_ms.max(0.0) as u64
}

/// The sessions of `vm` among `records` (any order, duplicates by
/// `request_id` counted once), newest session first. A request with a
/// `prompt_cache_key` belongs to that key's session; one without, to the
/// session of the response it continues (`previous_response_id`), else to
/// the conversation its messages continue (found by the inference service:
/// a chat client replaying its history), else it starts its own.
pub fn sessions_of(vm: &str, records: &[InferenceRecord]) -> Vec<Session> {
    let mut mine: Vec<&InferenceRecord> = records.iter().filter(|r| r.client == vm).collect();
    mine.sort_by_key(|r| r.started_at_ms);
    let mut seen = HashSet::new();
    mine.retain(|r| seen.insert(r.request_id.clone()));

    let mut key_of_response: HashMap<&str, String> = HashMap::new();
    let mut sessions: Vec<Session> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for r in mine {
        let key = r
            .session
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                r.previous_response_id
                    .as_deref()
                    .and_then(|p| key_of_response.get(p).cloned())
            })
            .or_else(|| r.previous_response_id.clone())
            .or_else(|| {
                r.conversation.as_deref().map(|c| {
                    key_of_response
                        .get(c)
                        .cloned()
                        .unwrap_or_else(|| c.to_owned())
                })
            })
            .unwrap_or_else(|| r.request_id.clone());
        key_of_response.insert(&r.request_id, key.clone());
        let i = *index.entry(key.clone()).or_insert_with(|| {
            sessions.push(Session {
                key,
                turns: Vec::new(),
            });
            sessions.len() - 1
        });
        sessions[i].turns.push(r.clone());
    }
    sessions.sort_by_key(|s| std::cmp::Reverse(s.end_ms()));
    sessions
}

/// One line of a session's timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Boxed: a record is twice the size of an egress entry.
    Turn(Box<InferenceRecord>),
    Egress(EgressLogEntry),
}

/// The session's turns with the VM's egress entries that fall between its
/// first turn's start and its last turn's end, in time order.
pub fn timeline(session: &Session, egress: &[EgressLogEntry]) -> Vec<Step> {
    let (Some(first), Some(_)) = (session.turns.first(), session.turns.last()) else {
        return Vec::new();
    };
    let (from, to) = (first.started_at_ms, session.end_ms());
    let mut steps: Vec<(u64, u8, Step)> = session
        .turns
        .iter()
        .map(|t| (t.started_at_ms, 0, Step::Turn(Box::new(t.clone()))))
        .collect();
    steps.extend(
        egress
            .iter()
            .filter(|e| (from..=to).contains(&e.time_unix_ms))
            .map(|e| (e.time_unix_ms, 1, Step::Egress(e.clone()))),
    );
    steps.sort_by_key(|(t, order, _)| (*t, *order));
    steps.into_iter().map(|(_, _, s)| s).collect()
}

/// `backlog` then `live`, each record once.
fn merged(backlog: &[InferenceRecord], live: &[InferenceRecord]) -> Vec<InferenceRecord> {
    let mut seen = HashSet::new();
    backlog
        .iter()
        .chain(live)
        .filter(|r| seen.insert(r.request_id.clone()))
        .cloned()
        .collect()
}

/// The sessions of VM `name`: `backlog` (what the supervisor had when the
/// page was rendered) plus the records that came live, and the VM's
/// egress lines between the turns.
#[component]
pub fn SessionsPanel(
    name: String,
    backlog: Vec<InferenceRecord>,
    records: RwSignal<Vec<InferenceRecord>>,
    egress: RwSignal<Vec<EgressLogEntry>>,
) -> impl IntoView {
    let vm = name.clone();
    let all = Memo::new(move |_| {
        let mine: Vec<InferenceRecord> = records
            .with(|live| merged(&backlog, live))
            .into_iter()
            .filter(|r| r.client == vm)
            .collect();
        mine
    });
    let charts = move || {
        all.with(|records| {
            let last: Vec<&InferenceRecord> = records.iter().rev().take(30).rev().collect();
            let ttft: Vec<f64> = last
                .iter()
                .filter_map(|r| r.time_to_first_token_ms)
                .collect();
            let decode: Vec<f64> = last.iter().filter_map(|r| r.decode_tokens_per_s).collect();
            // requests per minute over the recent records
            let starts: Vec<u64> = last.iter().map(|r| r.started_at_ms).collect();
            let per_min = per_bucket(&starts, 60_000, 30);
            view! {
                <p class="charts">
                    {chart("requests", "req/min", per_min, "", 0)}
                    {chart("ttft", "TTFT", ttft, "ms", 0)}
                    {chart("decode", "decode", decode, "tok/s", 0)}
                </p>
            }
        })
    };
    let vm = name.clone();
    let list = move || {
        let sessions = all.with(|records| sessions_of(&vm, records));
        if sessions.is_empty() {
            return Either::Left(view! { <p class="empty">"No sessions yet."</p> });
        }
        let vm_egress: Vec<EgressLogEntry> = egress.with(|log| {
            log.iter()
                .filter(|e| e.vm.as_str() == vm)
                .cloned()
                .collect()
        });
        Either::Right(
            sessions
                .into_iter()
                .map(|s| {
                    let steps = timeline(&s, &vm_egress);
                    let turns = s.turns.len();
                    let tokens: u64 = s.turns.iter().map(|t| t.prompt_tokens + t.output_tokens).sum();
                    view! {
                        <div class="session" data-session=s.key.clone() data-turns=turns.to_string()>
                            <h4>
                                <span class="mono">{s.key.clone()}</span>
                                " · " {turns} " turns · " {tokens} " tokens"
                            </h4>
                            <ol class="timeline">
                                {steps.into_iter().map(step_view).collect_view()}
                            </ol>
                        </div>
                    }
                })
                .collect_view(),
        )
    };
    let heading = format!("Sessions of {name}");
    view! {
        <section class="sessions" data-vm=name>
            <h3>{heading}</h3>
            {charts}
            {list}
        </section>
    }
}

fn step_view(step: Step) -> impl IntoView {
    match step {
        Step::Egress(e) => {
            let dest = format!(
                "{}{}",
                e.name.clone().or(e.addr.clone()).unwrap_or_default(),
                e.port.map(|p| format!(":{p}")).unwrap_or_default()
            );
            Either::Left(view! {
                <li class="egress-line" data-decision=e.decision.as_str()>
                    <span class="time">{crate::app::clock(e.time_unix_ms)}</span>
                    " " {e.proto.as_str()} " " <span class="mono">{dest}</span>
                    " " <b class="decision">{e.decision.as_str()}</b>
                </li>
            })
        }
        Step::Turn(t) => {
            let results = t
                .tool_results
                .iter()
                .map(|r| {
                    view! {
                        <div class="tool-result" data-call=r.call_id.clone() data-bytes=r.bytes.to_string()>
                            <span class="label">
                                "tool result " <span class="mono">{r.call_id.clone()}</span>
                                " · " {crate::app::bytes(r.bytes)}
                            </span>
                            <pre>{r.output.clone()}</pre>
                        </div>
                    }
                })
                .collect_view();
            let calls = t
                .calls
                .iter()
                .map(|c| {
                    view! {
                        <div class="tool-call" data-name=c.name.clone() data-call=c.id.clone()>
                            <span class="label">"calls " <b class="mono">{c.name.clone()}</b></span>
                            <pre>{c.arguments.clone()}</pre>
                        </div>
                    }
                })
                .collect_view();
            let error = t.error.clone().map(|e| view! { <p class="error">{e}</p> });
            let repaired = (t.repaired_tool_calls > 0).then(|| {
                let n = t.repaired_tool_calls;
                view! {
                    <p class="repaired" data-count=n.to_string()>
                        {format!("{n} of these calls came as text and were repaired by clawpen")}
                    </p>
                }
            });
            let text_class = if t.output_text.is_empty() {
                "model-text empty"
            } else {
                "model-text"
            };
            Either::Right(view! {
                <li class="turn" data-request=t.request_id.clone() data-status=t.status.clone()>
                    <div class="turn-head">
                        <span class="time">{crate::app::clock(t.started_at_ms)}</span>
                        " " <span class="status">{t.status.clone()}</span>
                        " · " {t.prompt_tokens} " in (" {t.cached_tokens} " cached) · "
                        {t.output_tokens} " out · TTFT "
                        {crate::app::decimals(t.time_to_first_token_ms, 0)} " ms · "
                        {crate::app::decimals(t.decode_tokens_per_s, 1)} " tok/s"
                    </div>
                    {results}
                    <pre class=text_class>{t.output_text.clone()}</pre>
                    {calls}
                    {repaired}
                    {error}
                </li>
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawpen_api::{EgressAction, EgressLogProto, ToolCallRecord, ToolResultRecord, VmName};

    fn rec(
        id: &str,
        vm: &str,
        session: Option<&str>,
        prev: Option<&str>,
        at: u64,
    ) -> InferenceRecord {
        InferenceRecord {
            request_id: id.into(),
            client: vm.into(),
            endpoint: "responses".into(),
            model: "m".into(),
            engine: "local".into(),
            session: session.map(str::to_string),
            previous_response_id: prev.map(str::to_string),
            status: "completed".into(),
            prompt_tokens: 10,
            output_tokens: 5,
            time_to_first_token_ms: Some(20.0),
            decode_tokens_per_s: Some(30.0),
            duration_ms: 100.0,
            started_at_ms: at,
            ..Default::default()
        }
    }

    fn egress(id: u64, vm: &str, at: u64) -> EgressLogEntry {
        EgressLogEntry {
            id,
            vm: VmName::parse(vm).unwrap(),
            time_unix_ms: at,
            proto: EgressLogProto::Tcp,
            name: Some("example.com".into()),
            addr: None,
            port: Some(443),
            decision: EgressAction::Allow,
            rule: None,
            reason: String::new(),
            bytes_up: None,
            bytes_down: None,
            ended_unix_ms: None,
        }
    }

    #[test]
    fn sessions_group_by_cache_key_then_by_response_chain() {
        let records = vec![
            rec("r3", "demo", Some("k"), None, 3000),
            rec("r1", "demo", Some("k"), None, 1000),
            rec("c1", "demo", None, None, 1500),
            rec("c2", "demo", None, Some("c1"), 2500),
            rec("c3", "demo", None, Some("c2"), 3500),
            rec("x", "other", Some("k"), None, 2000),
            rec("r1", "demo", Some("k"), None, 1000),
        ];
        let sessions = sessions_of("demo", &records);
        assert_eq!(sessions.len(), 2);
        // A chat client that sends neither: grouped by the conversation the
        // service found (a turn starts its own; the next names it).
        let mut chat = records.clone();
        for (id, at) in [("h1", 100), ("h2", 200), ("h3", 300)] {
            let mut r = rec(id, "demo", None, None, at);
            r.conversation = Some("h1".into());
            chat.push(r);
        }
        let mut alone = rec("solo", "demo", None, None, 400);
        alone.conversation = Some("solo".into());
        chat.push(alone);
        let with_chat = sessions_of("demo", &chat);
        assert_eq!(with_chat.len(), 4, "{with_chat:#?}");
        let h = with_chat.iter().find(|s| s.key == "h1").unwrap();
        assert_eq!(h.turns.len(), 3);
        // newest session first: the chain ends at 3600
        assert_eq!(sessions[0].key, "c1");
        let ids: Vec<&str> = sessions[0]
            .turns
            .iter()
            .map(|t| t.request_id.as_str())
            .collect();
        assert_eq!(ids, ["c1", "c2", "c3"]);
        assert_eq!(sessions[1].key, "k");
        let ids: Vec<&str> = sessions[1]
            .turns
            .iter()
            .map(|t| t.request_id.as_str())
            .collect();
        assert_eq!(ids, ["r1", "r3"], "in time order, duplicates once");
    }

    #[test]
    fn egress_falls_between_the_turns() {
        let session = Session {
            key: "k".into(),
            turns: vec![
                rec("a", "demo", Some("k"), None, 1000),
                rec("b", "demo", Some("k"), None, 2000),
            ],
        };
        let log = vec![
            egress(1, "demo", 500),
            egress(2, "demo", 1500),
            egress(3, "demo", 2050),
            egress(4, "demo", 9000),
        ];
        let steps = timeline(&session, &log);
        let kinds: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Turn(t) => t.request_id.clone(),
                Step::Egress(e) => format!("e{}", e.id),
            })
            .collect();
        assert_eq!(kinds, ["a", "e2", "b", "e3"]);
    }

    #[test]
    fn a_turn_says_when_its_calls_were_repaired_from_text() {
        let mut t = rec("resp_1", "demo", Some("k"), None, 1000);
        t.calls = vec![ToolCallRecord {
            id: "call_r0".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }];
        let plain = step_view(Step::Turn(Box::new(t.clone()))).to_html();
        assert!(!plain.contains(r#"class="repaired""#), "{plain}");
        t.repaired_tool_calls = 1;
        let html = step_view(Step::Turn(Box::new(t))).to_html();
        assert!(html.contains(r#"class="repaired""#), "{html}");
        assert!(html.contains(r#"data-count="1""#), "{html}");
    }

    #[test]
    fn a_turn_renders_its_results_text_and_calls() {
        let mut t = rec("resp_1", "demo", Some("k"), None, 1000);
        t.output_text = "Let me look.".into();
        t.tool_results = vec![ToolResultRecord {
            call_id: "call_0".into(),
            output: "sunny, 21C".into(),
            bytes: 12_345,
        }];
        t.calls = vec![ToolCallRecord {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        }];
        let html = step_view(Step::Turn(Box::new(t))).to_html();
        assert!(html.contains(r#"class="turn""#), "{html}");
        assert!(html.contains(r#"data-name="get_weather""#), "{html}");
        assert!(html.contains(r#"class="tool-call""#), "{html}");
        assert!(
            html.contains("{&quot;city&quot;:&quot;Paris&quot;}")
                || html.contains(r#"{"city":"Paris"}"#),
            "{html}"
        );
        assert!(
            html.contains(r#"class="tool-result""#) && html.contains("sunny, 21C"),
            "{html}"
        );
        assert!(html.contains(r#"data-bytes="12345""#), "{html}");
        assert!(html.contains("12.1 KiB"), "the result's size: {html}");
        assert!(html.contains("Let me look."), "{html}");
        let line = step_view(Step::Egress(egress(7, "demo", 0))).to_html();
        assert!(
            line.contains(r#"class="egress-line""#) && line.contains("example.com:443"),
            "{line}"
        );
    }
}
