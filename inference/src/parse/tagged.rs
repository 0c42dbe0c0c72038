//! The machine shared by the families whose calls sit between markers
//! (Hermes, Qwen3-Coder, GLM, Kimi-K2, DeepSeek): text, an optional
//! reasoning block, an optional section around the calls, and calls whose
//! body a family function turns into a [`ParsedCall`].

use super::scan::{Scanned, TagScanner, WsTrim};
use super::{Emitter, ParseEvent, ParsedCall, ParserOptions, ToolCallParser};

/// Parses the text between a call's begin and end markers.
pub(crate) type BodyFn = fn(&str, &ParserOptions) -> Option<ParsedCall>;

/// A family's markers.
#[derive(Clone, Copy)]
pub(crate) struct TagSyntax {
    /// Reasoning open/close tags.
    pub think: Option<(&'static str, &'static str)>,
    /// Markers opening / closing a block of calls (empty: no sections).
    pub section_begin: &'static [&'static str],
    pub section_end: &'static [&'static str],
    /// Markers around one call.
    pub call_begin: &'static [&'static str],
    pub call_end: &'static [&'static str],
    pub body: BodyFn,
}

/// `<think>` reasoning, no tool calls.
pub(crate) fn plain_syntax() -> TagSyntax {
    TagSyntax {
        think: Some(("<think>", "</think>")),
        section_begin: &[],
        section_end: &[],
        call_begin: &[],
        call_end: &[],
        body: |_, _| None,
    }
}

#[derive(Debug, Default)]
struct Section {
    /// Whitespace before the section marker (kept in case it fails).
    lead_ws: String,
    /// Everything since the section marker, while no call in it succeeded.
    raw: String,
    /// A call of this section succeeded.
    ok: bool,
}

#[derive(Debug)]
enum State {
    Text,
    Reasoning {
        seen_text: bool,
    },
    Section(Section),
    Call {
        section: Option<Section>,
        lead_ws: String,
        begin: &'static str,
        body: String,
    },
}

pub(crate) struct TaggedParser {
    syntax: TagSyntax,
    scanner: TagScanner,
    state: State,
    text: WsTrim,
    reasoning: WsTrim,
    out: Emitter,
}

impl TaggedParser {
    pub fn new(syntax: TagSyntax, options: ParserOptions) -> Self {
        let mut reasoning = WsTrim::default();
        let state = if options.starts_in_reasoning && syntax.think.is_some() {
            reasoning.start();
            State::Reasoning { seen_text: false }
        } else {
            State::Text
        };
        Self {
            syntax,
            scanner: TagScanner::new(),
            state,
            text: WsTrim::default(),
            reasoning,
            out: Emitter::new(options),
        }
    }

    fn markers(&self) -> Vec<&'static str> {
        let s = &self.syntax;
        let mut m = Vec::new();
        match self.state {
            State::Text => {
                m.extend(s.think.map(|t| t.0));
                m.extend_from_slice(s.section_begin);
                m.extend_from_slice(s.call_begin);
            }
            State::Reasoning { .. } => {
                if let Some((open, close)) = s.think {
                    m.extend([close, open]);
                }
            }
            State::Section(_) => {
                m.extend_from_slice(s.call_begin);
                m.extend_from_slice(s.section_end);
            }
            State::Call { .. } => m.extend_from_slice(s.call_end),
        }
        m
    }

    fn run(&mut self) {
        loop {
            let markers = self.markers();
            match self.scanner.scan(&markers) {
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
        if s.is_empty() {
            return;
        }
        match &mut self.state {
            State::Text => {
                let t = self.text.push(s);
                self.out.text(&t);
            }
            State::Reasoning { seen_text } => {
                *seen_text |= !s.trim().is_empty();
                let t = self.reasoning.push(s);
                self.out.reasoning(&t);
            }
            State::Section(sec) if sec.ok => {
                let t = self.text.push(s);
                self.out.text(&t);
            }
            State::Section(sec) => sec.raw.push_str(s),
            State::Call { body, .. } => body.push_str(s),
        }
    }

    fn on_marker(&mut self, m: &'static str) {
        let syn = self.syntax;
        let is = |list: &[&str]| list.contains(&m);
        match std::mem::replace(&mut self.state, State::Text) {
            State::Text => {
                let lead_ws = self.text.cut();
                if syn.think.is_some_and(|t| t.0 == m) {
                    self.reasoning.start();
                    self.state = State::Reasoning { seen_text: false };
                } else if is(syn.section_begin) {
                    self.state = State::Section(Section {
                        lead_ws,
                        raw: m.to_owned(),
                        ok: false,
                    });
                } else {
                    self.state = State::Call {
                        section: None,
                        lead_ws,
                        begin: m,
                        body: String::new(),
                    };
                }
            }
            State::Reasoning { seen_text } => {
                if syn.think.is_some_and(|t| t.1 == m) {
                    self.reasoning.cut();
                    self.text.start();
                } else {
                    // A second opening tag: swallowed at the start of the
                    // block (the model repeated the prompt's tag), kept after.
                    if seen_text {
                        let t = self.reasoning.push(m);
                        self.out.reasoning(&t);
                    }
                    self.state = State::Reasoning { seen_text };
                }
            }
            State::Section(mut sec) => {
                if is(syn.call_begin) {
                    let lead_ws = if sec.ok {
                        self.text.cut()
                    } else {
                        String::new()
                    };
                    self.state = State::Call {
                        section: Some(sec),
                        lead_ws,
                        begin: m,
                        body: String::new(),
                    };
                } else if sec.ok {
                    self.text.cut();
                    self.text.start();
                } else {
                    sec.raw.push_str(m);
                    self.out.text(&sec.lead_ws);
                    self.out.text(&sec.raw);
                }
            }
            State::Call {
                section,
                lead_ws,
                begin,
                body,
            } => {
                let parsed = (syn.body)(&body, &self.out.options);
                self.end_call(section, lead_ws, begin, body, Some(m), parsed);
            }
        }
    }

    /// A call's end marker (or the end of output) was reached.
    fn end_call(
        &mut self,
        section: Option<Section>,
        lead_ws: String,
        begin: &str,
        body: String,
        end: Option<&str>,
        parsed: Option<ParsedCall>,
    ) {
        let raw = || format!("{begin}{body}{}", end.unwrap_or(""));
        match (section, parsed) {
            (None, Some(call)) => {
                self.out.call(call);
                self.text.start();
            }
            (None, None) => {
                self.out.text(&lead_ws);
                self.out.text(&raw());
            }
            (Some(mut sec), Some(call)) => {
                if !sec.ok {
                    // Whatever sat between the section marker and this first
                    // good call (a failed call, say) stays visible.
                    let junk = sec.raw.trim();
                    let junk = self
                        .syntax
                        .section_begin
                        .iter()
                        .find_map(|b| junk.strip_prefix(b))
                        .unwrap_or(junk)
                        .trim()
                        .to_owned();
                    self.out.text(&junk);
                    sec.ok = true;
                    sec.raw.clear();
                }
                self.out.call(call);
                self.text.start();
                self.state = State::Section(sec);
            }
            (Some(mut sec), None) => {
                if sec.ok {
                    self.out.text(&lead_ws);
                    self.out.text(&raw());
                } else {
                    sec.raw.push_str(&raw());
                }
                self.state = State::Section(sec);
            }
        }
    }

    fn finish_all(&mut self) {
        self.run();
        let tail = self.scanner.take();
        self.on_text(&tail);
        match std::mem::replace(&mut self.state, State::Text) {
            State::Text => {
                let t = self.text.flush();
                self.out.text(&t);
            }
            State::Reasoning { .. } => {
                let t = self.reasoning.flush();
                self.out.reasoning(&t);
            }
            State::Section(sec) => self.finish_section(sec),
            State::Call {
                section,
                lead_ws,
                begin,
                body,
            } => {
                self.end_call(section, lead_ws, begin, body, None, None);
                if let State::Section(sec) = std::mem::replace(&mut self.state, State::Text) {
                    self.finish_section(sec);
                }
            }
        }
    }

    fn finish_section(&mut self, sec: Section) {
        if sec.ok {
            let t = self.text.flush();
            self.out.text(&t);
        } else {
            self.out.text(&sec.lead_ws);
            self.out.text(&sec.raw);
        }
    }
}

impl ToolCallParser for TaggedParser {
    fn feed(&mut self, chunk: &str) -> Vec<ParseEvent> {
        self.scanner.push(chunk);
        self.run();
        self.out.drain()
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        self.finish_all();
        self.out.drain()
    }
}
