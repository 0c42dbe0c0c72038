//! Mistral `[TOOL_CALLS]`, in both generations:
//!
//! ```text
//! [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "a1b2c3d4e"}]
//! [TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{}
//! [TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"}
//! ```
//!
//! Reasoning (Magistral) is `[THINK]...[/THINK]`. A call ends where its
//! JSON ends (the end-of-sequence token follows). Generated ids are nine
//! alphanumerics, as Mistral templates require.

use super::json_call::parse_json_call;
use super::scan::{after_char, JsonProgress, JsonSpan, Scanned, TagScanner, WsTrim};
use super::{json_object, Emitter, ParseEvent, ParsedCall, ParserOptions, ToolCallParser};

const TOOL_CALLS: &str = "[TOOL_CALLS]";
const ARGS: &str = "[ARGS]";
const CALL_ID: &str = "[CALL_ID]";
const THINK: &str = "[THINK]";
const THINK_END: &str = "[/THINK]";
const MAX_NAME: usize = 256;

#[derive(Debug)]
enum Phase {
    /// Before the first non-space byte.
    Start,
    /// `[...]`: the JSON array from `start`.
    Array { start: usize, span: JsonSpan },
    /// A function name from `start`.
    Name { start: usize },
    /// Expecting `[ARGS]` or `[CALL_ID]` at `at`.
    AfterName {
        name: String,
        id: Option<String>,
        at: usize,
    },
    /// A call id from `start`.
    CallId { name: String, start: usize },
    /// The arguments object from `start`.
    Args {
        name: String,
        id: Option<String>,
        start: usize,
        span: JsonSpan,
    },
}

#[derive(Debug)]
enum State {
    Text,
    Reasoning,
    /// After `[TOOL_CALLS]`: `raw` is everything since, `pos` how much of it
    /// was looked at.
    Calls {
        lead_ws: String,
        raw: String,
        pos: usize,
        phase: Phase,
    },
}

/// What the bytes after `[TOOL_CALLS]` turned out to be.
enum Outcome {
    More,
    /// Calls ending at this offset of `raw`.
    Done(Vec<ParsedCall>, usize),
    /// Not a call: `raw[..at]` is text, the rest is read again.
    Fail(usize),
}

pub struct MistralParser {
    scanner: TagScanner,
    state: State,
    text: WsTrim,
    reasoning: WsTrim,
    out: Emitter,
}

impl MistralParser {
    pub fn new(options: ParserOptions) -> Self {
        let mut reasoning = WsTrim::default();
        let state = if options.starts_in_reasoning {
            reasoning.start();
            State::Reasoning
        } else {
            State::Text
        };
        Self {
            scanner: TagScanner::new(),
            state,
            text: WsTrim::default(),
            reasoning,
            out: Emitter::new(options).with_alnum9_ids(),
        }
    }

    fn run(&mut self) {
        loop {
            if let State::Calls {
                raw, pos, phase, ..
            } = &mut self.state
            {
                raw.push_str(&self.scanner.take());
                match advance(raw, pos, phase) {
                    Outcome::More => return,
                    Outcome::Done(calls, end) => {
                        let rest = raw.split_off(end);
                        self.scanner.unread(&rest);
                        for call in calls {
                            self.out.call(call);
                        }
                        self.text.start();
                        self.state = State::Text;
                    }
                    Outcome::Fail(at) => self.fail(at),
                }
                continue;
            }
            let markers: &[&str] = if matches!(self.state, State::Text) {
                &[TOOL_CALLS, THINK]
            } else {
                &[THINK_END]
            };
            match self.scanner.scan(markers) {
                Scanned::Pending { safe } => {
                    self.on_text(&safe);
                    return;
                }
                Scanned::Found { before, marker } => {
                    self.on_text(&before);
                    self.on_marker(markers[marker]);
                }
            }
        }
    }

    fn fail(&mut self, at: usize) {
        if let State::Calls { lead_ws, raw, .. } = std::mem::replace(&mut self.state, State::Text) {
            self.scanner.unread(&raw[at..]);
            self.out.text(&lead_ws);
            self.out.text(TOOL_CALLS);
            self.out.text(&raw[..at]);
        }
    }

    fn on_text(&mut self, s: &str) {
        match self.state {
            State::Text => {
                let t = self.text.push(s);
                self.out.text(&t);
            }
            State::Reasoning => {
                let t = self.reasoning.push(s);
                self.out.reasoning(&t);
            }
            State::Calls { .. } => {}
        }
    }

    fn on_marker(&mut self, m: &str) {
        match m {
            TOOL_CALLS => {
                self.state = State::Calls {
                    lead_ws: self.text.cut(),
                    raw: String::new(),
                    pos: 0,
                    phase: Phase::Start,
                }
            }
            THINK => {
                self.text.cut();
                self.reasoning.start();
                self.state = State::Reasoning;
            }
            _ => {
                self.reasoning.cut();
                self.text.start();
                self.state = State::Text;
            }
        }
    }
}

/// Looks at `raw[*pos..]`, moving `phase` on.
fn advance(raw: &str, pos: &mut usize, phase: &mut Phase) -> Outcome {
    loop {
        let rest = &raw[*pos..];
        match phase {
            Phase::Start => {
                let Some(c) = rest.chars().next() else {
                    return Outcome::More;
                };
                if c.is_whitespace() {
                    *pos += c.len_utf8();
                } else if c == '[' {
                    *phase = Phase::Array {
                        start: *pos,
                        span: JsonSpan::new(),
                    };
                } else {
                    *phase = Phase::Name { start: *pos };
                }
            }
            Phase::Array { start, span } => match span.feed(rest) {
                JsonProgress::More => {
                    *pos = raw.len();
                    return Outcome::More;
                }
                JsonProgress::Invalid(i) => return Outcome::Fail(after_char(raw, *pos + i)),
                JsonProgress::Complete(i) => {
                    let end = *pos + i;
                    return match parse_array(&raw[*start..end]) {
                        Some(calls) => Outcome::Done(calls, end),
                        None => Outcome::Fail(end),
                    };
                }
            },
            Phase::Name { start } => {
                let Some(c) = rest.chars().next() else {
                    return Outcome::More;
                };
                if c == '[' {
                    let name = raw[*start..*pos].to_owned();
                    *phase = Phase::AfterName {
                        name,
                        id: None,
                        at: *pos,
                    };
                } else if c.is_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    *pos += c.len_utf8();
                    if *pos - *start > MAX_NAME {
                        return Outcome::Fail(*pos);
                    }
                } else {
                    return Outcome::Fail(*pos + c.len_utf8());
                }
            }
            Phase::AfterName { name, id, at } => {
                let rest = &raw[*at..];
                if rest.starts_with(ARGS) {
                    *pos = *at + ARGS.len();
                    *phase = Phase::Args {
                        name: std::mem::take(name),
                        id: id.take(),
                        start: *pos,
                        span: JsonSpan::new(),
                    };
                } else if id.is_none() && rest.starts_with(CALL_ID) {
                    *pos = *at + CALL_ID.len();
                    *phase = Phase::CallId {
                        name: std::mem::take(name),
                        start: *pos,
                    };
                } else if ARGS.starts_with(rest) || (id.is_none() && CALL_ID.starts_with(rest)) {
                    *pos = raw.len();
                    return Outcome::More;
                } else {
                    return Outcome::Fail(*at + 1);
                }
            }
            Phase::CallId { name, start } => {
                let Some(c) = rest.chars().next() else {
                    return Outcome::More;
                };
                if c == '[' {
                    *phase = Phase::AfterName {
                        name: std::mem::take(name),
                        id: Some(raw[*start..*pos].to_owned()),
                        at: *pos,
                    };
                } else if c.is_ascii_alphanumeric() && *pos - *start < MAX_NAME {
                    *pos += 1;
                } else {
                    return Outcome::Fail(*pos + c.len_utf8());
                }
            }
            Phase::Args {
                name,
                id,
                start,
                span,
            } => match span.feed(rest) {
                JsonProgress::More => {
                    *pos = raw.len();
                    return Outcome::More;
                }
                JsonProgress::Invalid(i) => return Outcome::Fail(after_char(raw, *pos + i)),
                JsonProgress::Complete(i) => {
                    let end = *pos + i;
                    if name.is_empty() {
                        return Outcome::Fail(end);
                    }
                    return match json_object(&raw[*start..end]) {
                        Some(arguments) => Outcome::Done(
                            vec![ParsedCall {
                                id: id.take().filter(|i| !i.is_empty()),
                                name: std::mem::take(name),
                                arguments,
                            }],
                            end,
                        ),
                        None => Outcome::Fail(end),
                    };
                }
            },
        }
    }
}

fn parse_array(text: &str) -> Option<Vec<ParsedCall>> {
    let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(text).ok()?;
    if items.is_empty() {
        return None;
    }
    items.iter().map(|i| parse_json_call(i.get())).collect()
}

/// Nine alphanumerics derived from the request's id prefix and the call
/// index (FNV-1a), as Mistral's templates require of call ids.
pub(crate) fn alnum9_id(prefix: &str, index: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prefix.bytes().chain(index.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (0..9)
        .map(|_| {
            let c = ALPHABET[(h % 62) as usize] as char;
            h /= 62;
            c
        })
        .collect()
}

impl ToolCallParser for MistralParser {
    fn feed(&mut self, chunk: &str) -> Vec<ParseEvent> {
        self.scanner.push(chunk);
        self.run();
        self.out.drain()
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        self.run();
        if let State::Calls { raw, .. } = &self.state {
            let at = raw.len();
            self.fail(at);
            self.run();
        }
        let tail = self.scanner.take();
        self.on_text(&tail);
        let t = self.text.flush();
        self.out.text(&t);
        let r = self.reasoning.flush();
        self.out.reasoning(&r);
        self.out.drain()
    }
}

/// `[TOOL_CALLS][{"name": .., "arguments": {..}}, ...]` (the array form
/// every Mistral template reads back).
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{json_call_rule, lit, FamilyGrammar};
    let open = lit(&format!("{TOOL_CALLS}["));
    FamilyGrammar {
        rules: format!(
            "call: {open} json_call \"]\"\n\
             calls: {open} json_call (\", \" json_call)* \"]\"\n\
             json_call: {}\n",
            json_call_rule(tools, "arguments")
        ),
        triggers: vec![(TOOL_CALLS.into(), false, "calls".into())],
    }
}
