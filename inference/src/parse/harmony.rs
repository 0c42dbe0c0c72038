//! gpt-oss harmony. The prompt ends with `<|start|>assistant`; the model
//! writes messages, each a header, `<|message|>`, content and an end token:
//!
//! ```text
//! <|channel|>analysis<|message|>reasoning<|end|>
//! <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>
//! <|start|>assistant<|channel|>final<|message|>answer<|return|>
//! ```
//!
//! `analysis` is reasoning; `final`, and `commentary` without a recipient
//! (a preamble), are text; a message with a recipient `to=functions.NAME`
//! (in the header before or after the channel) is a tool call whose content
//! is the JSON arguments. `<|call|>` and `<|return|>` are usually stop
//! tokens, so a call still open at the end of output is completed when its
//! content is a JSON object.

use super::scan::{Scanned, TagScanner};
use super::ToolCallParser;
use super::{json_object, valid_name, Emitter, ParseEvent, ParsedCall, ParserOptions};

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const END: &str = "<|end|>";
const RETURN: &str = "<|return|>";
const CALL: &str = "<|call|>";

/// Longest header read before the output is taken for plain text.
const MAX_HEADER: usize = 512;

const HEADER_MARKERS: &[&str] = &[MESSAGE, END, RETURN, CALL, START];
const CONTENT_MARKERS: &[&str] = &[END, RETURN, CALL, START, CHANNEL];
const BETWEEN_MARKERS: &[&str] = &[START, CHANNEL];

#[derive(Debug)]
enum Content {
    Reasoning,
    Text,
    Call {
        header: String,
        name: String,
        body: String,
    },
}

#[derive(Debug)]
enum State {
    /// Reading a header (its raw text so far, markers included).
    Header(String),
    Content(Content),
    /// After an end token, before the next header.
    Between,
}

pub struct HarmonyParser {
    scanner: TagScanner,
    state: State,
    out: Emitter,
}

impl HarmonyParser {
    pub fn new(options: ParserOptions) -> Self {
        Self {
            scanner: TagScanner::new(),
            state: State::Header(String::new()),
            out: Emitter::new(options),
        }
    }

    fn run(&mut self) {
        loop {
            let markers = match self.state {
                State::Header(_) => HEADER_MARKERS,
                State::Content(_) => CONTENT_MARKERS,
                State::Between => BETWEEN_MARKERS,
            };
            match self.scanner.scan(markers) {
                Scanned::Pending { safe } => match self.on_text(&safe) {
                    Some(again) => self.scanner.unread(&again),
                    None => return,
                },
                Scanned::Found { before, marker } => match self.on_text(&before) {
                    Some(again) => {
                        self.scanner.unread(markers[marker]);
                        self.scanner.unread(&again);
                    }
                    None => self.on_marker(markers[marker]),
                },
            }
        }
    }

    /// Handles text; returns text to read again when the state changed
    /// (a header that turned out to be plain text).
    fn on_text(&mut self, s: &str) -> Option<String> {
        match &mut self.state {
            State::Header(h) => {
                h.push_str(s);
                // Not harmony after all: a header has no newline and is
                // short. The header so far is text, the rest is read again.
                let cut = h
                    .find('\n')
                    .or_else(|| (h.len() > MAX_HEADER).then(|| floor_boundary(h, MAX_HEADER)))?;
                let again = h.split_off(cut);
                let h = std::mem::take(h);
                self.out.text(&h);
                self.state = State::Content(Content::Text);
                Some(again)
            }
            State::Content(Content::Reasoning) => {
                self.out.reasoning(s);
                None
            }
            State::Content(Content::Text) | State::Between => {
                self.out.text(s);
                None
            }
            State::Content(Content::Call { body, .. }) => {
                body.push_str(s);
                None
            }
        }
    }

    fn on_marker(&mut self, m: &'static str) {
        match std::mem::replace(&mut self.state, State::Between) {
            State::Header(h) => {
                if m == MESSAGE {
                    self.state = State::Content(match read_header(&h) {
                        Some(c) => c,
                        None => {
                            self.out.text(&h);
                            self.out.text(m);
                            Content::Text
                        }
                    });
                } else {
                    // A header cut short by another token: its text is
                    // text, and the token is read again as content.
                    self.out.text(&h);
                    self.scanner.unread(m);
                    self.state = State::Content(Content::Text);
                }
            }
            State::Content(content) => {
                if let Content::Call { header, name, body } = content {
                    let end = matches!(m, END | RETURN | CALL).then_some(m);
                    self.end_call(header, name, body, end);
                }
                if m == START || m == CHANNEL {
                    self.state = State::Header(m.to_owned());
                }
            }
            State::Between => self.state = State::Header(m.to_owned()),
        }
    }

    fn end_call(&mut self, header: String, name: String, body: String, end: Option<&str>) {
        match json_object(&body) {
            Some(arguments) => self.out.call(ParsedCall {
                id: None,
                name,
                arguments,
            }),
            None => {
                self.out.text(&header);
                self.out.text(MESSAGE);
                self.out.text(&body);
                self.out.text(end.unwrap_or(""));
            }
        }
    }
}

/// What a header says the content is; `None` when it is not a header.
fn read_header(h: &str) -> Option<Content> {
    if h.contains('\n') || h.len() > MAX_HEADER {
        return None;
    }
    let after = |key: &str| -> Option<&str> {
        let i = h.find(key)?;
        let rest = &h[i + key.len()..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '<')
            .unwrap_or(rest.len());
        Some(&rest[..end])
    };
    let channel = after(CHANNEL);
    let recipient = h
        .match_indices("to=")
        .find(|(i, _)| *i == 0 || h[..*i].ends_with([' ', '>']))
        .and_then(|(i, _)| after_at(h, i + 3));
    if let Some(r) = recipient {
        let name = r.strip_prefix("functions.").unwrap_or(r);
        if !valid_name(name) {
            return None;
        }
        return Some(Content::Call {
            header: h.to_owned(),
            name: name.to_owned(),
            body: String::new(),
        });
    }
    Some(match channel {
        Some("analysis") => Content::Reasoning,
        _ => Content::Text,
    })
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn after_at(h: &str, i: usize) -> Option<&str> {
    let rest = &h[i..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '<')
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

impl ToolCallParser for HarmonyParser {
    fn feed(&mut self, chunk: &str) -> Vec<ParseEvent> {
        self.scanner.push(chunk);
        self.run();
        self.out.drain()
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        loop {
            self.run();
            let tail = self.scanner.take();
            match self.on_text(&tail) {
                Some(again) => self.scanner.push(&again),
                None => break,
            }
        }
        match std::mem::replace(&mut self.state, State::Between) {
            State::Header(h) => self.out.text(&h),
            State::Content(Content::Call { header, name, body }) => {
                self.end_call(header, name, body, None)
            }
            _ => {}
        }
        self.out.drain()
    }
}

/// `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{..}`;
/// the model then ends the message with `<|call|>`, an end-of-generation
/// token (the parser completes a call open at the end). One call per turn.
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{named_json_alternatives, FamilyGrammar};
    let head = format!("{CHANNEL}commentary to=functions.");
    let alternatives = named_json_alternatives(tools, "", &format!(" <|constrain|>json{MESSAGE}"));
    FamilyGrammar {
        rules: format!(
            "call: {} ({alternatives})\ncalls: call\n",
            super::grammar::lit(&head)
        ),
        triggers: vec![(head, false, "calls".into())],
    }
}
