//! Raw model output through each model family's tool-call and reasoning
//! parser, as it streams, with and without tools declared (with them, the
//! repair of bare and fenced JSON calls runs too): no panic, the same
//! events however the output is split into chunks, and no more visible
//! text than the output held.

use crate::read_size_and_rest;
use clawpen_inference::parse::{
    merge_events, parse_complete, Family, ParseEvent, ParserOptions, ToolSpec,
};

/// One input (the binary `tool_calls` is this function under libFuzzer).
pub fn run(data: &[u8]) {
    let Some((&which, data)) = data.split_first() else {
        return;
    };
    let Some((step, rest)) = read_size_and_rest(data) else {
        return;
    };
    let family = Family::ALL[usize::from(which) % Family::ALL.len()];
    let options = if (usize::from(which) / Family::ALL.len()) % 2 == 1 {
        ParserOptions {
            tools: ["get_weather", "read"]
                .map(|name| ToolSpec {
                    name: name.into(),
                    parameters: serde_json::json!({"type": "object",
                        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}),
                })
                .to_vec(),
            ..ParserOptions::default()
        }
    } else {
        ParserOptions::default()
    };
    let output = String::from_utf8_lossy(rest);
    let whole = parse_complete(&mut *family.parser(options.clone()), &output);

    let mut parser = family.parser(options);
    let mut events = Vec::new();
    let mut at = 0;
    while at < output.len() {
        let mut end = (at + step).min(output.len());
        while !output.is_char_boundary(end) {
            end += 1;
        }
        events.extend(parser.feed(&output[at..end]));
        at = end;
    }
    events.extend(parser.finish());
    let chunked = merge_events(events);
    assert_eq!(whole, chunked, "{family:?} in chunks of {step} bytes");

    let visible: usize = whole
        .iter()
        .map(|e| match e {
            ParseEvent::Text(s) | ParseEvent::Reasoning(s) => s.len(),
            _ => 0,
        })
        .sum();
    assert!(visible <= output.len(), "{family:?}: more text out than in");
}
