//! DeepSeek V3 / R1 (`function` + fenced JSON) and V3.1 (name + JSON):
//!
//! ```text
//! <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
//! ```json
//! {"city": "Paris"}
//! ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>
//!
//! <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>
//! ```
//!
//! The bars are U+FF5C, the spaces U+2581. R1 reasons in `<think>` (its
//! newer templates open the block in the prompt).

use super::tagged::TagSyntax;
use super::{json_object, valid_name, ParsedCall, ParserOptions};

pub(crate) const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
pub(crate) const CALLS_END: &str = "<｜tool▁calls▁end｜>";
pub(crate) const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
pub(crate) const CALL_END: &str = "<｜tool▁call▁end｜>";
pub(crate) const SEP: &str = "<｜tool▁sep｜>";

pub(crate) fn syntax() -> TagSyntax {
    TagSyntax {
        think: Some(("<think>", "</think>")),
        section_begin: &[CALLS_BEGIN, "<｜tool_calls_begin｜>"],
        section_end: &[CALLS_END, "<｜tool_calls_end｜>"],
        call_begin: &[CALL_BEGIN],
        call_end: &[CALL_END],
        body: parse_body,
    }
}

fn parse_body(body: &str, _options: &ParserOptions) -> Option<ParsedCall> {
    let (left, right) = body.split_once(SEP)?;
    let (name, args) = if left.trim() == "function" {
        let right = right.trim_start();
        let (name, rest) = right.split_once('\n').unwrap_or((right, ""));
        (name, unfence(rest))
    } else {
        (left, right)
    };
    let name = name.trim();
    if !valid_name(name) {
        return None;
    }
    Some(ParsedCall {
        id: None,
        name: name.to_owned(),
        arguments: json_object(args)?,
    })
}

/// The JSON inside a ```` ```json ```` fence (or the text when unfenced).
fn unfence(text: &str) -> &str {
    let t = text.trim();
    let Some(inner) = t.strip_prefix("```") else {
        return t;
    };
    let inner = inner.split_once('\n').map_or("", |(_lang, rest)| rest);
    inner.trim_end().strip_suffix("```").unwrap_or(inner)
}

/// The V3 / R1 form: `function<｜tool▁sep｜>NAME` and fenced JSON
/// arguments, inside the calls section.
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{lit, named_json_alternatives, FamilyGrammar};
    let alternatives = named_json_alternatives(tools, &format!("function{SEP}"), "\n```json\n");
    FamilyGrammar {
        rules: format!(
            "call: {begin} one {end}\n\
             calls: {begin} one (\"\\n\" one)* {end}\n\
             one: {call_begin} ({alternatives}) \"\\n```\" {call_end}\n",
            begin = lit(CALLS_BEGIN),
            end = lit(CALLS_END),
            call_begin = lit(CALL_BEGIN),
            call_end = lit(CALL_END),
        ),
        triggers: vec![(CALLS_BEGIN.into(), false, "calls".into())],
    }
}
