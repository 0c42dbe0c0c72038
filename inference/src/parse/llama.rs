//! Llama 3.x JSON calls (3.1 / 3.2 / 3.3 with custom tools):
//!
//! ```text
//! {"name": "get_weather", "parameters": {"city": "Paris"}}
//! <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}
//! ```
//!
//! A call is a JSON object with `name` and `parameters` (or `arguments`)
//! that starts the output (after whitespace) or follows `<|python_tag|>`;
//! several calls may follow one another, separated by `;` or whitespace.
//! A JSON object in the middle of prose is text. No reasoning syntax.

use serde_json::Value;

use super::json_call::parse_json_call;
use super::scan::{after_char, JsonProgress, JsonSpan, Scanned, TagScanner, WsTrim};
use super::{Emitter, ParseEvent, ParsedCall, ParserOptions, ToolCallParser};

const PYTHON_TAG: &str = "<|python_tag|>";

#[derive(Debug)]
enum State {
    /// Only whitespace so far (after a call: whitespace and `;`).
    Lead {
        after_call: bool,
    },
    Text,
    /// A JSON value; `raw` holds it from its first byte (or from after
    /// `prefix`), `pos` is how much of it the span has seen.
    Json {
        lead_ws: String,
        prefix: &'static str,
        raw: String,
        pos: usize,
        span: JsonSpan,
    },
}

pub struct LlamaParser {
    scanner: TagScanner,
    state: State,
    text: WsTrim,
    out: Emitter,
}

impl LlamaParser {
    pub fn new(options: ParserOptions) -> Self {
        Self {
            scanner: TagScanner::new(),
            state: State::Lead { after_call: false },
            text: WsTrim::default(),
            out: Emitter::new(options),
        }
    }

    fn run(&mut self) {
        loop {
            if let State::Json { raw, pos, span, .. } = &mut self.state {
                raw.push_str(&self.scanner.take());
                match span.feed(&raw[*pos..]) {
                    JsonProgress::More => {
                        *pos = raw.len();
                        return;
                    }
                    JsonProgress::Invalid(i) => {
                        let at = after_char(raw, *pos + i);
                        self.fail(at);
                    }
                    JsonProgress::Complete(i) => {
                        let end = *pos + i;
                        match parse_calls(&raw[..end]) {
                            Some(calls) => {
                                let rest = raw.split_off(end);
                                self.scanner.unread(&rest);
                                for call in calls {
                                    self.out.call(call);
                                }
                                self.text.start();
                                self.state = State::Lead { after_call: true };
                            }
                            None => self.fail(end),
                        }
                    }
                }
                continue;
            }
            let markers: &[&str] = match self.state {
                State::Text => &[PYTHON_TAG],
                _ => &[PYTHON_TAG, "{", "["],
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

    fn on_text(&mut self, s: &str) {
        let mut s = s;
        if let State::Lead { after_call } = self.state {
            let skip = |c: char| c.is_whitespace() || (after_call && c == ';');
            let trimmed = s.trim_start_matches(skip);
            let lead = &s[..s.len() - trimmed.len()];
            if !after_call {
                // Whitespace before a call is held (dropped if a call follows).
                let t = self.text.push(lead);
                self.out.text(&t);
            }
            if trimmed.is_empty() {
                return;
            }
            self.state = State::Text;
            s = trimmed;
        }
        if matches!(self.state, State::Text) {
            let t = self.text.push(s);
            self.out.text(&t);
        }
    }

    fn on_marker(&mut self, m: &'static str) {
        if m == PYTHON_TAG {
            self.state = State::Json {
                lead_ws: self.text.cut(),
                prefix: PYTHON_TAG,
                raw: String::new(),
                pos: 0,
                span: JsonSpan::new(),
            };
        } else if matches!(self.state, State::Lead { .. }) {
            self.state = State::Json {
                lead_ws: self.text.cut(),
                prefix: "",
                raw: m.to_owned(),
                pos: 0,
                span: JsonSpan::new(),
            };
        } else {
            // `{` / `[` after text: plain text.
            let t = self.text.push(m);
            self.out.text(&t);
        }
    }

    /// The JSON is not a call: `raw[..at]` is text, the rest is read again.
    fn fail(&mut self, at: usize) {
        if let State::Json {
            lead_ws,
            prefix,
            raw,
            ..
        } = std::mem::replace(&mut self.state, State::Text)
        {
            self.scanner.unread(&raw[at..]);
            self.out.text(&lead_ws);
            self.out.text(prefix);
            self.out.text(&raw[..at]);
        }
    }
}

/// One call object, or an array of them. A call needs `name` and
/// `parameters` or `arguments`.
fn parse_calls(text: &str) -> Option<Vec<ParsedCall>> {
    let value: Value = serde_json::from_str(text).ok()?;
    let is_call = |v: &Value| {
        v.get("name").is_some_and(Value::is_string)
            && (v.get("parameters").is_some() || v.get("arguments").is_some())
    };
    match &value {
        Value::Object(_) if is_call(&value) => Some(vec![parse_json_call(text)?]),
        Value::Array(items) if !items.is_empty() && items.iter().all(is_call) => {
            let raws: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(text).ok()?;
            raws.iter().map(|r| parse_json_call(r.get())).collect()
        }
        _ => None,
    }
}

impl ToolCallParser for LlamaParser {
    fn feed(&mut self, chunk: &str) -> Vec<ParseEvent> {
        self.scanner.push(chunk);
        self.run();
        self.out.drain()
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        self.run();
        if let State::Json { raw, .. } = &self.state {
            let at = raw.len();
            self.fail(at);
            self.run();
        }
        let tail = self.scanner.take();
        self.on_text(&tail);
        let t = self.text.flush();
        self.out.text(&t);
        self.out.drain()
    }
}

/// `{"name": .., "parameters": {..}}`, several separated by `; `,
/// optionally after `<|python_tag|>`.
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{json_call_rule, lit, FamilyGrammar};
    FamilyGrammar {
        rules: format!(
            "call: json_call\ncalls: json_call (\"; \" json_call)*\njson_call: {}\n",
            json_call_rule(tools, "parameters")
        ),
        triggers: vec![
            (
                PYTHON_TAG.into(),
                false,
                format!("{} calls", lit(PYTHON_TAG)),
            ),
            ("{\"name\"".into(), true, "calls".into()),
        ],
    }
}
