//! GLM-4.5 / 4.6 / 4.7:
//!
//! ```text
//! <think>reasoning</think>
//! text<tool_call>get_weather
//! <arg_key>city</arg_key>
//! <arg_value>Paris</arg_value>
//! </tool_call>
//! ```
//!
//! (GLM-4.7 drops the newlines.) String values are raw, others are JSON;
//! values are typed as in [`super::qwen3_coder`].

use super::json_call::parse_json_call;
use super::tagged::TagSyntax;
use super::{schema, valid_name, ParsedCall, ParserOptions};

pub(crate) fn syntax() -> TagSyntax {
    TagSyntax {
        think: Some(("<think>", "</think>")),
        section_begin: &[],
        section_end: &[],
        call_begin: &["<tool_call>"],
        call_end: &["</tool_call>"],
        body: |body, options| parse_body(body, options).or_else(|| parse_json_call(body)),
    }
}

fn parse_body(body: &str, options: &ParserOptions) -> Option<ParsedCall> {
    let (name, mut rest) = match body.find("<arg_key>") {
        Some(i) => (&body[..i], &body[i..]),
        None => (body, ""),
    };
    let name = name.trim();
    if !valid_name(name) {
        return None;
    }
    let mut members = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let (key, r) = rest.strip_prefix("<arg_key>")?.split_once("</arg_key>")?;
        let r = r.trim_start().strip_prefix("<arg_value>")?;
        let (value, r) = r.split_once("</arg_value>").unwrap_or((r, ""));
        rest = r;
        let key = key.trim();
        if key.is_empty() {
            return None;
        }
        let typed = schema::xml_value_to_json(value, options.param_schema(name, key));
        members.push((key.to_owned(), typed));
    }
    Some(ParsedCall {
        id: None,
        name: name.to_owned(),
        arguments: schema::object_text(&members),
    })
}

/// `<tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>\n</tool_call>`.
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{FamilyGrammar, XmlCall};
    let (rules, pick) = XmlCall {
        rule: "fn",
        head: &|name| format!("<tool_call>{name}\n"),
        open: &|param| format!("<arg_key>{param}</arg_key>\n<arg_value>"),
        close: "</arg_value>\n",
        tail: "</tool_call>",
    }
    .rules(tools);
    FamilyGrammar {
        rules: format!("call: {pick}\ncalls: call (\"\\n\" call)*\n{rules}"),
        triggers: vec![("<tool_call>".into(), false, "calls".into())],
    }
}
