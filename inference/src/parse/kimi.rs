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

/// `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX<|tool_call_argument_begin|>{..}<|tool_call_end|>...<|tool_calls_section_end|>`.
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{arguments_schema, json_rule, lit, FamilyGrammar};
    let one: Vec<String> = tools
        .iter()
        .map(|t| {
            format!(
                "({} /[0-9]{{1,3}}/ \"<|tool_call_argument_begin|>\" {})",
                lit(&format!("functions.{}:", t.name)),
                json_rule(&arguments_schema(t))
            )
        })
        .collect();
    FamilyGrammar {
        rules: format!(
            "call: \"<|tool_calls_section_begin|>\" one \"<|tool_calls_section_end|>\"\n\
             calls: \"<|tool_calls_section_begin|>\" one+ \"<|tool_calls_section_end|>\"\n\
             one: \"<|tool_call_begin|>\" ({}) \"<|tool_call_end|>\"\n",
            one.join(" | ")
        ),
        triggers: vec![("<|tool_calls_section_begin|>".into(), false, "calls".into())],
    }
}
