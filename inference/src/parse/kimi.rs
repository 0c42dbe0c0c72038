//! Kimi-K2:
//!
//! ```text
//! <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>
//! ```
//!
//! The call id is the model's own `functions.NAME:IDX` (the template
//! expects it back). Kimi-K2-Thinking reasons in `<think>`.

use super::tagged::TagSyntax;
use super::{json_object, valid_name, ParsedCall, ParserOptions};

pub(crate) fn syntax() -> TagSyntax {
    TagSyntax {
        think: Some(("<think>", "</think>")),
        section_begin: &[
            "<|tool_calls_section_begin|>",
            "<|tool_call_section_begin|>",
        ],
        section_end: &["<|tool_calls_section_end|>", "<|tool_call_section_end|>"],
        call_begin: &["<|tool_call_begin|>"],
        call_end: &["<|tool_call_end|>"],
        body: parse_body,
    }
}

fn parse_body(body: &str, _options: &ParserOptions) -> Option<ParsedCall> {
    let (head, args) = body.split_once("<|tool_call_argument_begin|>")?;
    let id = head.trim();
    let name = id.strip_prefix("functions.").unwrap_or(id);
    let name = match name.rsplit_once(':') {
        Some((n, idx)) if !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => name,
    };
    if !valid_name(name) {
        return None;
    }
    Some(ParsedCall {
        id: Some(id.to_owned()),
        name: name.to_owned(),
        arguments: json_object(args)?,
    })
}
