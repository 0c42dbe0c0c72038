//! Qwen3-Coder (and Qwen3.5) XML calls:
//!
//! ```text
//! <tool_call>
//! <function=get_weather>
//! <parameter=city>
//! Paris
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! Values are raw text (one newline of padding on each side is removed);
//! a value is JSON-typed from the tool's schema when known, else numbers,
//! booleans, `null`, objects and arrays are read as JSON and the rest is a
//! string. A missing `</parameter>` or `</function>` is tolerated.

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
        body: |body, options| parse_function(body, options).or_else(|| parse_json_call(body)),
    }
}

/// `<function=NAME><parameter=K>V</parameter>...</function>`.
pub(crate) fn parse_function(body: &str, options: &ParserOptions) -> Option<ParsedCall> {
    let rest = body.trim_start().strip_prefix("<function=")?;
    let (name, mut rest) = rest.split_once('>')?;
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
        if let Some(after) = rest.strip_prefix("</function>") {
            if !after.trim().is_empty() {
                return None;
            }
            break;
        }
        let r = rest.strip_prefix("<parameter=")?;
        let (key, r) = r.split_once('>')?;
        let end = ["</parameter>", "<parameter=", "</function>"]
            .iter()
            .filter_map(|m| r.find(m))
            .min()
            .unwrap_or(r.len());
        let value = &r[..end];
        rest = r[end..].strip_prefix("</parameter>").unwrap_or(&r[end..]);
        let value = value.strip_prefix('\n').unwrap_or(value);
        let value = value.strip_suffix('\n').unwrap_or(value);
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

/// `<tool_call>\n<function=NAME>\n<parameter=P>\nV\n</parameter>\n</function>\n</tool_call>`.
pub(crate) fn grammar(tools: &[super::ToolSpec]) -> super::grammar::FamilyGrammar {
    use super::grammar::{FamilyGrammar, XmlCall};
    let (rules, pick) = XmlCall {
        rule: "fn",
        head: &|name| format!("<function={name}>\n"),
        open: &|param| format!("<parameter={param}>\n"),
        close: "\n</parameter>\n",
        tail: "</function>",
    }
    .rules(tools);
    FamilyGrammar {
        rules: format!(
            "call: \"<tool_call>\\n\" ({pick}) \"\\n</tool_call>\"\n\
             calls: call (\"\\n\" call)*\n{rules}"
        ),
        triggers: vec![("<tool_call>".into(), false, "calls".into())],
    }
}
