//! Hermes / Qwen2.5 / Qwen3 / QwQ:
//!
//! ```text
//! <think>
//! reasoning
//! </think>
//!
//! text<tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! The JSON object may say `parameters` instead of `arguments`, and
//! `arguments` may be a JSON string holding the object. A body in the
//! Qwen3-Coder XML form is accepted too (Qwen models mix them).

use super::json_call::parse_json_call;
use super::qwen3_coder;
use super::tagged::TagSyntax;

pub(crate) fn syntax() -> TagSyntax {
    TagSyntax {
        think: Some(("<think>", "</think>")),
        section_begin: &[],
        section_end: &[],
        call_begin: &["<tool_call>"],
        call_end: &["</tool_call>"],
        body: |body, options| {
            parse_json_call(body).or_else(|| qwen3_coder::parse_function(body, options))
        },
    }
}

/// `<tool_call>\n{"name": .., "arguments": {..}}\n</tool_call>`, one per
/// line; also the bare and fenced JSON Qwen models write (read by
/// [`super::repair`]).
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{json_call_rule, json_line_triggers, FamilyGrammar};
    let mut triggers = vec![("<tool_call>".to_owned(), false, "calls".to_owned())];
    triggers.extend(json_line_triggers());
    FamilyGrammar {
        rules: format!(
            "call: \"<tool_call>\" \"\\n\"? json_call \"\\n\"? \"</tool_call>\"\n\
             calls: call (\"\\n\" call)*\n\
             json_call: {}\n",
            json_call_rule(tools, "arguments")
        ),
        triggers,
    }
}
