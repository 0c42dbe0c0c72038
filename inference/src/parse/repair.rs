//! Tool calls that real models write outside their family's syntax.
//!
//! Small models trained on one syntax still answer a tool question with a
//! JSON object in a Markdown fence, or a bare one on a line of its own:
//!
//! ```text
//! ```json
//! {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
//! ```
//! ```
//!
//! [`Repairing`] wraps a family's parser and reads the text that parser
//! leaves as text. A JSON object (or an array of them) that starts a line,
//! bare or fenced, becomes calls when every object in it names a tool the
//! request declared (`arguments` or `parameters`, as
//! [`super::json_call::parse_json_call`] reads them). Anything else — prose,
//! code, JSON naming no declared tool, a fence holding something else — is
//! passed on byte for byte. Only the candidate (from a line's `{`, `[` or
//! ```` ``` ```` to its end) is held back, and only until it can be judged.
//!
//! The local engine's lazy grammars (see [`super::grammar`]) let a model
//! start a call in these forms too, so what they generate reads back here.

use super::json_call::parse_json_call;
use super::scan::{JsonProgress, JsonSpan};
use super::{ParseEvent, ParsedCall, ParserOptions, ToolCallParser};

/// Longest candidate held back; a longer one is text.
const MAX_CANDIDATE_BYTES: usize = 256 * 1024;

/// Markdown fence languages a call may be fenced as.
const FENCE_LANGUAGES: [&str; 4] = ["", "json", "tool_call", "tool_calls"];

/// See the module documentation.
pub struct Repairing {
    inner: Box<dyn ToolCallParser>,
    options: ParserOptions,
    /// Text not yet judged: from the first byte that may start a candidate.
    held: String,
    /// The text passed on so far ends a line, or a line's indentation (or
    /// there was none).
    at_line_start: bool,
    /// Calls numbered so far (the inner parser's and the repaired ones).
    next_index: usize,
    /// A repaired call was the last output: whitespace padding it is
    /// dropped.
    after_call: bool,
}

impl Repairing {
    pub fn new(inner: Box<dyn ToolCallParser>, options: ParserOptions) -> Self {
        Self {
            inner,
            options,
            held: String::new(),
            at_line_start: true,
            next_index: 0,
            after_call: false,
        }
    }

    fn on_inner(&mut self, events: Vec<ParseEvent>, end: bool, out: &mut Vec<ParseEvent>) {
        for e in events {
            match e {
                ParseEvent::Text(s) => {
                    self.held.push_str(&s);
                    self.judge(false, out);
                }
                other => {
                    // Anything else ends the text: what is held is judged
                    // as if the output ended here.
                    self.judge(true, out);
                    out.push(self.renumber(other));
                }
            }
        }
        if end {
            self.judge(true, out);
        }
    }

    /// The inner parser numbers its calls from 0; the output numbers all.
    fn renumber(&mut self, e: ParseEvent) -> ParseEvent {
        match e {
            ParseEvent::ToolCallStart { id, name, .. } => ParseEvent::ToolCallStart {
                index: self.next_index,
                id,
                name,
            },
            ParseEvent::ToolCallArgs { delta, .. } => ParseEvent::ToolCallArgs {
                index: self.next_index,
                delta,
            },
            ParseEvent::ToolCallEnd { repaired, .. } => {
                self.next_index += 1;
                ParseEvent::ToolCallEnd {
                    index: self.next_index - 1,
                    repaired,
                }
            }
            other => other,
        }
    }

    /// Passes on what is decided; `end`: no more text follows.
    fn judge(&mut self, end: bool, out: &mut Vec<ParseEvent>) {
        loop {
            if self.after_call {
                let rest = self.held.trim_start_matches([' ', '\t', '\r', '\n']);
                let padding = self.held.len() - rest.len();
                self.held.drain(..padding);
                if self.held.is_empty() {
                    return;
                }
                self.after_call = false;
            }
            let Some(start) = self.candidate_start() else {
                let text = std::mem::take(&mut self.held);
                self.pass_text(&text, out);
                return;
            };
            let before = self.held[..start].to_owned();
            self.pass_text(&before, out);
            self.held.drain(..start);
            match judge_candidate(&self.held, end, &self.options) {
                Verdict::Undecided => return,
                Verdict::Calls { calls, len } => {
                    for call in calls {
                        self.call(call, out);
                    }
                    self.held.drain(..len);
                    self.after_call = true;
                    self.at_line_start = true;
                }
                Verdict::Text => {
                    // Not a call: its first byte is plain text, and the
                    // scan goes on after it.
                    let first = self.held.chars().next().map_or(0, char::len_utf8);
                    let text: String = self.held.drain(..first).collect();
                    self.pass_text(&text, out);
                }
            }
            if self.held.is_empty() && !self.after_call {
                return;
            }
        }
    }

    /// Where in `held` the next candidate may start: a `{`, `[` or a
    /// backtick at the start of a line (after spaces or tabs).
    fn candidate_start(&self) -> Option<usize> {
        let mut line_start = self.at_line_start;
        let mut indent = true;
        for (i, c) in self.held.char_indices() {
            if line_start && indent && matches!(c, '{' | '[' | '`') {
                return Some(i);
            }
            match c {
                '\n' => {
                    line_start = true;
                    indent = true;
                }
                ' ' | '\t' => {}
                _ => indent = false,
            }
        }
        None
    }

    fn pass_text(&mut self, text: &str, out: &mut Vec<ParseEvent>) {
        if text.is_empty() {
            return;
        }
        // Indentation keeps a line's start.
        let blank = |t: &str| t.chars().all(|c| c == ' ' || c == '\t');
        self.at_line_start = match text.rfind('\n') {
            Some(i) => blank(&text[i + 1..]),
            None => self.at_line_start && blank(text),
        };
        if let Some(ParseEvent::Text(t)) = out.last_mut() {
            t.push_str(text);
        } else {
            out.push(ParseEvent::Text(text.to_owned()));
        }
    }

    fn call(&mut self, call: ParsedCall, out: &mut Vec<ParseEvent>) {
        // The inner parser's emitter coerces its calls; these go through
        // one of their own so both are treated alike.
        let mut emitter = super::Emitter::new(ParserOptions {
            id_prefix: format!("{}r", self.options.id_prefix),
            ..self.options.clone()
        });
        emitter.skip_to(self.next_index);
        emitter.call(call);
        out.extend(emitter.drain().into_iter().map(|e| match e {
            ParseEvent::ToolCallEnd { index, .. } => ParseEvent::ToolCallEnd {
                index,
                repaired: true,
            },
            other => other,
        }));
        self.next_index += 1;
    }
}

enum Verdict {
    /// More text is needed.
    Undecided,
    /// Not a call.
    Text,
    /// Calls taking the first `len` bytes.
    Calls { calls: Vec<ParsedCall>, len: usize },
}

/// Judges the candidate at the start of `text`.
fn judge_candidate(text: &str, end: bool, options: &ParserOptions) -> Verdict {
    let trimmed = text.trim_start_matches([' ', '\t']);
    let indent = text.len() - trimmed.len();
    let verdict = if trimmed.starts_with('`') {
        judge_fence(trimmed, end, options)
    } else {
        judge_bare(trimmed, end, options)
    };
    match verdict {
        Verdict::Calls { calls, len } => Verdict::Calls {
            calls,
            len: len + indent,
        },
        Verdict::Undecided if text.len() > MAX_CANDIDATE_BYTES => Verdict::Text,
        v => v,
    }
}

fn judge_bare(text: &str, end: bool, options: &ParserOptions) -> Verdict {
    match JsonSpan::new().feed(text) {
        JsonProgress::More if end => Verdict::Text,
        JsonProgress::More => Verdict::Undecided,
        JsonProgress::Invalid(_) => Verdict::Text,
        JsonProgress::Complete(len) => match declared_calls(&text[..len], options) {
            Some(calls) => Verdict::Calls { calls, len },
            None => Verdict::Text,
        },
    }
}

/// ```` ```json\n{...}\n``` ````: the fence's language is one of
/// [`FENCE_LANGUAGES`]; an unclosed fence at the end of output counts.
fn judge_fence(text: &str, end: bool, options: &ParserOptions) -> Verdict {
    let fence = "```";
    if text.len() < fence.len() {
        return if end || !fence.starts_with(text) {
            Verdict::Text
        } else {
            Verdict::Undecided
        };
    }
    if !text.starts_with(fence) {
        return Verdict::Text;
    }
    let Some(line_end) = text.find('\n') else {
        let lang = text[fence.len()..].trim();
        let lang = lang.to_ascii_lowercase();
        let could_be = FENCE_LANGUAGES.iter().any(|l| l.starts_with(lang.as_str()));
        return if end || !could_be {
            Verdict::Text
        } else {
            Verdict::Undecided
        };
    };
    let lang = text[fence.len()..line_end].trim().to_ascii_lowercase();
    if !FENCE_LANGUAGES.contains(&lang.as_str()) {
        return Verdict::Text;
    }
    let body_start = line_end + 1;
    let (body, len) = match text[body_start..].find(fence) {
        Some(close) => (
            &text[body_start..body_start + close],
            body_start + close + fence.len(),
        ),
        None if end => (&text[body_start..], text.len()),
        None => {
            // Judge early when the body cannot be a call anyway.
            let body = text[body_start..].trim_start();
            if !body.is_empty() && !body.starts_with(['{', '[']) {
                return Verdict::Text;
            }
            return Verdict::Undecided;
        }
    };
    match declared_calls(body.trim(), options) {
        Some(calls) => Verdict::Calls { calls, len },
        None => Verdict::Text,
    }
}

/// The calls in `json` (one call object, or a non-empty array of them),
/// when every one names a declared tool.
fn declared_calls(json: &str, options: &ParserOptions) -> Option<Vec<ParsedCall>> {
    let declared = |c: &ParsedCall| options.tools.iter().any(|t| t.name == c.name);
    let json = json.trim();
    if json.starts_with('[') {
        let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_str(json).ok()?;
        if items.is_empty() {
            return None;
        }
        items
            .iter()
            .map(|raw| parse_json_call(raw.get()).filter(declared))
            .collect()
    } else {
        parse_json_call(json).filter(declared).map(|c| vec![c])
    }
}

impl ToolCallParser for Repairing {
    fn feed(&mut self, chunk: &str) -> Vec<ParseEvent> {
        let events = self.inner.feed(chunk);
        let mut out = Vec::new();
        self.on_inner(events, false, &mut out);
        out
    }

    fn finish(&mut self) -> Vec<ParseEvent> {
        let events = self.inner.finish();
        let mut out = Vec::new();
        self.on_inner(events, true, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{merge_events, Family, ParseEvent, ParserOptions, ToolSpec};
    use serde_json::json;

    fn options() -> ParserOptions {
        ParserOptions {
            tools: vec![
                ToolSpec {
                    name: "get_weather".into(),
                    parameters: json!({"type": "object", "properties": {
                        "city": {"type": "string"}, "days": {"type": "integer"}}}),
                },
                ToolSpec {
                    name: "read".into(),
                    parameters: json!({"type": "object"}),
                },
            ],
            ..ParserOptions::default()
        }
    }

    /// Every way of cutting `output` into chunks gives the same events:
    /// whole, char by char, and pseudo-random chunks.
    fn parse(family: Family, output: &str) -> Vec<ParseEvent> {
        let run = |chunks: Vec<&str>| {
            let mut p = family.parser(options());
            let mut events = Vec::new();
            for c in chunks {
                events.extend(p.feed(c));
            }
            events.extend(p.finish());
            merge_events(events)
        };
        let whole = run(vec![output]);
        let chars: Vec<&str> = output
            .char_indices()
            .map(|(i, c)| &output[i..i + c.len_utf8()])
            .collect();
        assert_eq!(run(chars), whole, "char by char: {output:?}");
        for seed in 1..6u64 {
            let mut cuts = Vec::new();
            let mut at = 0;
            let mut x = seed;
            while at < output.len() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let mut next = (at + 1 + (x >> 33) as usize % 7).min(output.len());
                while !output.is_char_boundary(next) {
                    next += 1;
                }
                cuts.push(&output[at..next]);
                at = next;
            }
            assert_eq!(run(cuts), whole, "chunks (seed {seed}): {output:?}");
        }
        whole
    }

    fn calls(events: &[ParseEvent]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut name = String::new();
        for e in events {
            match e {
                ParseEvent::ToolCallStart { name: n, .. } => name = n.clone(),
                ParseEvent::ToolCallArgs { delta, .. } => out.push((name.clone(), delta.clone())),
                _ => {}
            }
        }
        out
    }

    fn text(events: &[ParseEvent]) -> String {
        events
            .iter()
            .filter_map(|e| match e {
                ParseEvent::Text(t) => Some(t.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn what_real_models_write_becomes_calls() {
        let weather = (
            "get_weather".to_owned(),
            r#"{"city": "Paris", "days": 3}"#.to_owned(),
        );
        // Qwen2.5-Coder's answer, seen on both real models.
        let fenced = "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n```";
        for family in [
            Family::Hermes,
            Family::Plain,
            Family::Mistral,
            Family::Qwen3Coder,
        ] {
            let e = parse(family, fenced);
            assert_eq!(calls(&e), vec![weather.clone()], "{family:?}");
            assert_eq!(text(&e), "");
        }
        let cases = [
            // bare, `parameters` instead of `arguments`, days as a string
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": \"3\"}}",
            // a call followed by prose
            "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n```\nThis will fetch it.",
            // prose, then a fenced call without a language, unclosed at the end
            "Let me check.\n```\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n",
            // an unclosed tag at the end of the stream
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}",
            // indented
            "  {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}",
        ];
        for case in cases {
            let e = parse(Family::Hermes, case);
            assert_eq!(calls(&e), vec![weather.clone()], "{case:?}");
        }
        assert_eq!(
            text(&parse(Family::Hermes, cases[1])),
            "This will fetch it."
        );
        assert_eq!(text(&parse(Family::Hermes, cases[2])), "Let me check.\n");
        // an array of calls
        let e = parse(
            Family::Hermes,
            "[{\"name\": \"read\", \"arguments\": {\"path\": \"a\"}}, {\"name\": \"read\", \"arguments\": {\"path\": \"b\"}}]",
        );
        assert_eq!(calls(&e).len(), 2);
        let ids: Vec<&str> = e
            .iter()
            .filter_map(|e| match e {
                ParseEvent::ToolCallStart { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(ids, ["call_r0", "call_r1"]);
    }

    #[test]
    fn anything_else_stays_text_byte_for_byte() {
        let cases = [
            // JSON naming no declared tool
            "{\"name\": \"rm_rf\", \"arguments\": {}}",
            "```json\n{\"city\": \"Paris\"}\n```",
            // code
            "```rust\nfn main() { println!(\"{}\", 1); }\n```",
            "function f() {\n  return {a: 1};\n}",
            "{ not json",
            "[1, 2, 3]",
            "[]",
            // a call in the middle of a line is prose
            "I would call {\"name\": \"get_weather\", \"arguments\": {}} now.",
            "`code` and ``` inline",
            "```",
            "``",
            "é{\n[\n`",
        ];
        for case in cases {
            let e = parse(Family::Hermes, case);
            assert_eq!(e, vec![ParseEvent::Text(case.into())], "{case:?}");
        }
        // Without tools there is no repair at all.
        let call = "{\"name\": \"get_weather\", \"arguments\": {}}";
        let mut p = Family::Hermes.parser(ParserOptions::default());
        let mut e = p.feed(call);
        e.extend(p.finish());
        assert_eq!(merge_events(e), vec![ParseEvent::Text(call.into())]);
    }

    #[test]
    fn native_and_repaired_calls_are_numbered_together() {
        let out = "<tool_call>\n{\"name\": \"read\", \"arguments\": {\"path\": \"a\"}}\n</tool_call>\n{\"name\": \"read\", \"arguments\": {\"path\": \"b\"}}";
        let e = parse(Family::Hermes, out);
        let starts: Vec<(usize, &str)> = e
            .iter()
            .filter_map(|e| match e {
                ParseEvent::ToolCallStart { index, id, .. } => Some((*index, id.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(0, "call_0"), (1, "call_r1")]);
    }

    /// Outputs stitched from the pieces real models write (fences, calls,
    /// prose, broken JSON, multi-byte text): any chunking gives the same
    /// events, and no visible text appears that was not in the output.
    #[test]
    fn random_outputs_parse_alike_however_chunked() {
        const PIECES: [&str; 16] = [
            "```json\n",
            "```",
            "\n",
            "  ",
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            "{\"name\": \"read\"",
            "[",
            "]",
            ", ",
            "{",
            "}",
            "Sure, here it is.",
            "é✓",
            "<tool_call>",
            "</tool_call>",
            "`",
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..400 {
            let len = 1 + next(10);
            let output: String = (0..len).map(|_| PIECES[next(PIECES.len())]).collect();
            for family in [Family::Hermes, Family::Plain, Family::Llama3Json] {
                let events = parse(family, &output);
                let shown = text(&events);
                assert!(
                    shown.len() <= output.len(),
                    "{family:?}: more text than output in {output:?}"
                );
            }
        }
    }
}
