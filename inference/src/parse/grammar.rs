//! Grammars of what a model may write: the local engine decodes under them
//! (llguidance, Lark syntax), so a tool call comes out in its family's
//! syntax with arguments valid against the tool's schema.
//!
//! Each family says how its calls look next to its parser (`grammar()` in
//! `hermes.rs`, `mistral.rs`, ...): a [`FamilyGrammar`] of Lark rules
//! defining `call` (one call) and `calls` (one or more, as the family
//! separates them), and the texts that start a call. From those this module
//! builds what a request asks for ([`OutputGrammar`]):
//!
//! - `tool_choice: "required"` or a named function: the whole output,
//!   from the first token, is calls (`calls`, or one `call` when
//!   `parallel_tool_calls` is false) of the allowed tools;
//! - `"auto"`: lazy, as llama.cpp's lazy grammars: free text until the
//!   output shows one of the family's triggers, then the rest is
//!   constrained from that trigger on;
//! - `"none"`: nothing to constrain (calls stay text, see
//!   [`crate::generation::callable_tools`]);
//! - `response_format` `json_schema` / `json_object`: the whole output is
//!   one JSON value of the schema.
//!
//! Whatever a grammar lets through, the family's parser reads back as the
//! same calls (tested in `parse/tests.rs`).

use serde_json::{json, Value};

use super::{Family, ToolSpec};

/// What the request asked of tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    /// Exactly this function.
    Function(String),
}

/// Why a request's tools or format cannot be made a grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrammarError {
    #[error("tool_choice names the function '{0}', which is not among the request's tools")]
    UnknownFunction(String),
    #[error("tool_choice {0} is not 'none', 'auto', 'required' or a function")]
    BadToolChoice(String),
    #[error("response_format {0}")]
    BadFormat(String),
}

impl ToolChoice {
    /// Reads Chat Completions `tool_choice` (absent: auto).
    pub fn from_wire(choice: Option<&Value>) -> Result<Self, GrammarError> {
        let Some(choice) = choice else {
            return Ok(ToolChoice::Auto);
        };
        match choice {
            Value::Null => Ok(ToolChoice::Auto),
            Value::String(s) => match s.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Required),
                _ => Err(GrammarError::BadToolChoice(choice.to_string())),
            },
            Value::Object(o) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Function(n.to_owned()))
                .ok_or_else(|| GrammarError::BadToolChoice(choice.to_string())),
            _ => Err(GrammarError::BadToolChoice(choice.to_string())),
        }
    }
}

/// A text that starts a call, and the grammar of the output from it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub text: String,
    /// Counts only at the start of the output or of a line (bare and fenced
    /// JSON: in the middle of prose it is prose).
    pub line_start: bool,
    /// Lark grammar whose language starts with `text`.
    pub lark: String,
}

/// How one generation is constrained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputGrammar {
    /// From the first token (Lark).
    Whole(String),
    /// Free until a trigger shows, then that trigger's grammar.
    Lazy(Vec<Trigger>),
}

/// A family's call syntax as Lark rules (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct FamilyGrammar {
    /// Rules defining `call` and `calls` (and their helpers).
    pub rules: String,
    /// Texts that start a call, each with the Lark expression (over the
    /// rules) of the output from that text on.
    pub triggers: Vec<(String, bool, String)>,
}

/// The grammar a request's tools and `tool_choice` call for, or `None`
/// when nothing is constrained.
pub fn tool_grammar(
    family: Family,
    tools: &[ToolSpec],
    choice: &ToolChoice,
    parallel: bool,
) -> Result<Option<OutputGrammar>, GrammarError> {
    let allowed: Vec<ToolSpec> = match choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Function(name) => {
            let tool = tools
                .iter()
                .find(|t| &t.name == name)
                .ok_or_else(|| GrammarError::UnknownFunction(name.clone()))?;
            vec![tool.clone()]
        }
        ToolChoice::Auto | ToolChoice::Required => tools.to_vec(),
    };
    if allowed.is_empty() {
        return Ok(None);
    }
    let g = family.grammar(&allowed);
    Ok(Some(match choice {
        ToolChoice::Auto => OutputGrammar::Lazy(
            g.triggers
                .into_iter()
                .map(|(text, line_start, expr)| Trigger {
                    text,
                    line_start,
                    lark: format!("start: {expr}\n{}", g.rules),
                })
                .collect(),
        ),
        _ => {
            let top = if parallel { "calls" } else { "call" };
            OutputGrammar::Whole(format!("start: {top}\n{}", g.rules))
        }
    }))
}

/// The grammar of `response_format` (`json_schema` or `json_object`), or
/// `None` for text.
/// Whether `format` (a Chat Completions `response_format`) asks for JSON:
/// then the answer is data, read verbatim (a `<think>` or `<tool_call>`
/// inside one of its strings is a value, not markup).
pub fn asks_for_json(format: Option<&Value>) -> bool {
    matches!(
        format.and_then(|f| f.get("type")).and_then(Value::as_str),
        Some("json_object" | "json_schema")
    )
}

pub fn format_grammar(format: Option<&Value>) -> Result<Option<OutputGrammar>, GrammarError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let schema = match format.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => json!({"type": "object"}),
        Some("json_schema") => format
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"})),
        _ => return Err(GrammarError::BadFormat(format!("{format} is not a format"))),
    };
    Ok(Some(OutputGrammar::Whole(format!(
        "start: {}",
        json_rule(&schema)
    ))))
}

/// Whitespace a grammar allows between two JSON tokens: a space, or a
/// line break and an indentation (pretty-printed JSON). Bounded: with
/// unbounded whitespace a model that wants to write something the grammar
/// refuses can write whitespace until `max_tokens` instead.
const JSON_WHITESPACE: &str = r"[ ]?|\n[ \t]{0,16}";

/// `%json {schema}`, with the options every grammar here uses: `oneOf` is
/// read as `anyOf` (tool schemas use it where either would do), whitespace
/// as [`JSON_WHITESPACE`].
pub fn json_rule(schema: &Value) -> String {
    let mut schema = match schema {
        Value::Object(_) => schema.clone(),
        // No schema: any object.
        _ => json!({"type": "object"}),
    };
    if let Some(o) = schema.as_object_mut() {
        o.insert(
            "x-guidance".into(),
            json!({"coerce_one_of": true, "whitespace_pattern": JSON_WHITESPACE}),
        );
    }
    format!("%json {schema}")
}

/// Where inside `schema` it fails to compile, as a JSON pointer
/// (`/properties/when`), found by compiling its sub-schemas alone with
/// `compiles`: the deepest one that fails; `""` when only the whole does.
/// A sub-schema that uses `$ref` is not compiled alone (its definitions are
/// the root's), so the path stops above it.
pub fn failing_schema_path(schema: &Value, compiles: &dyn Fn(&Value) -> bool) -> String {
    let Value::Object(o) = schema else {
        return String::new();
    };
    let mut parts: Vec<(String, &Value)> = Vec::new();
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(Value::Object(map)) = o.get(key) {
            parts.extend(
                map.iter()
                    .map(|(k, v)| (format!("/{key}/{}", pointer_escape(k)), v)),
            );
        }
    }
    for key in ["items", "additionalProperties", "not", "if", "then", "else"] {
        if let Some(v @ Value::Object(_)) = o.get(key) {
            parts.push((format!("/{key}"), v));
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(list)) = o.get(key) {
            parts.extend(
                list.iter()
                    .enumerate()
                    .map(|(i, v)| (format!("/{key}/{i}"), v)),
            );
        }
    }
    for (path, sub) in parts {
        if !uses_ref(sub) && !compiles(sub) {
            return path + &failing_schema_path(sub, compiles);
        }
    }
    String::new()
}

fn uses_ref(schema: &Value) -> bool {
    match schema {
        Value::Object(o) => o.contains_key("$ref") || o.values().any(uses_ref),
        Value::Array(list) => list.iter().any(uses_ref),
        _ => false,
    }
}

/// A JSON pointer segment (RFC 6901: `~` → `~0`, `/` → `~1`).
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The schema of a tool's arguments as a grammar enforces it: an object
/// when none was given; with declared `properties` and no word on others,
/// no others (a parameter the tool does not declare is a hallucination the
/// tool would refuse, as OpenAI's strict mode does).
pub fn arguments_schema(tool: &ToolSpec) -> Value {
    match &tool.parameters {
        Value::Object(o) => {
            let mut o = o.clone();
            if o.contains_key("properties") && !o.contains_key("additionalProperties") {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(o)
        }
        _ => json!({"type": "object"}),
    }
}

/// `%json` of one call object `{"name": NAME, ARGS_KEY: {...}}` of any of
/// `tools`, the name first (as models write it).
pub(crate) fn json_call_rule(tools: &[ToolSpec], args_key: &str) -> String {
    let variants: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    args_key: arguments_schema(t),
                },
                "required": ["name", args_key],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = if variants.len() == 1 {
        variants.into_iter().next().unwrap_or_default()
    } else {
        json!({"anyOf": variants})
    };
    json_rule(&schema)
}

/// A Lark string literal of `s`.
pub(crate) fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// `NAME args` alternatives, one per tool: `(lit(prefix+name+infix) ARGS_i)`
/// joined by `|`, where each tool's arguments are its own `%json`.
pub(crate) fn named_json_alternatives(tools: &[ToolSpec], before: &str, after: &str) -> String {
    tools
        .iter()
        .map(|t| {
            format!(
                "({} {})",
                lit(&format!("{before}{}{after}", t.name)),
                json_rule(&arguments_schema(t))
            )
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Calls as JSON objects `{"name", "arguments"}` on lines of their own,
/// bare or fenced: what [`super::repair`] reads for every family, and the
/// whole syntax of [`Family::Plain`].
pub(crate) fn json_lines_grammar(tools: &[ToolSpec]) -> FamilyGrammar {
    FamilyGrammar {
        rules: format!(
            "call: json_call\ncalls: json_call (\"\\n\" json_call)*\njson_call: {}\n",
            json_call_rule(tools, "arguments")
        ),
        triggers: json_line_triggers(),
    }
}

/// The fenced and bare openings real models use for a JSON call (rules
/// `json_call` must exist).
pub(crate) fn json_line_triggers() -> Vec<(String, bool, String)> {
    vec![
        (
            "```json".into(),
            true,
            r#""```json\n" json_call "\n```""#.into(),
        ),
        ("{\"name\"".into(), true, "json_call".into()),
    ]
}

/// How an XML-style family writes one call's parameters (Qwen3-Coder,
/// GLM): string values raw, ended by `close`, others as JSON.
pub(crate) struct XmlCall<'a> {
    /// Prefix of this family's rule names.
    pub rule: &'a str,
    /// Text before the parameters, given the tool's name.
    pub head: &'a dyn Fn(&str) -> String,
    /// Text before a value, given the parameter's name.
    pub open: &'a dyn Fn(&str) -> String,
    /// Text after a value.
    pub close: &'a str,
    /// Text after the parameters.
    pub tail: &'a str,
}

/// The Lark expression of one raw XML parameter value (and its rules,
/// added to `rules`): a string is its raw text (at most `maxLength`
/// characters) up to `close`, an enum of strings one of its values, any
/// other type JSON.
fn xml_value(name: &str, schema: &Value, close: &str, rules: &mut String) -> String {
    let ty = schema.get("type").and_then(Value::as_str);
    let strings: Option<Vec<&str>> = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|e| e.iter().map(Value::as_str).collect());
    match (ty, strings) {
        (Some("string") | None, Some(values)) if !values.is_empty() => {
            let alternatives: Vec<String> = values.iter().map(|v| lit(v)).collect();
            format!("({}) {}", alternatives.join(" | "), lit(close))
        }
        (Some("string"), _) | (None, None) if schema.get("const").is_none() => {
            let repeat = match schema.get("maxLength").and_then(Value::as_u64) {
                Some(n) => format!("{{0,{n}}}"),
                None => "*".into(),
            };
            rules.push_str(&format!(
                "{name}_v[suffix={}]: /(?s:.{repeat})/\n",
                lit(close)
            ));
            format!("{name}_v")
        }
        _ => format!("{} {}", json_rule(schema), lit(close)),
    }
}

impl XmlCall<'_> {
    /// Rules `{rule}N` (one per tool, N its index) and the expression that
    /// picks one of them. Parameters come in the schema's order; the
    /// required ones must be there, the others may.
    pub fn rules(&self, tools: &[ToolSpec]) -> (String, String) {
        let mut rules = String::new();
        let mut names = Vec::new();
        for (i, tool) in tools.iter().enumerate() {
            let schema = arguments_schema(tool);
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut body = vec![lit(&(self.head)(&tool.name))];
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (j, (param, param_schema)) in props.iter().enumerate() {
                    let name = format!("{}{i}_{j}", self.rule);
                    let value = xml_value(&name, param_schema, self.close, &mut rules);
                    rules.push_str(&format!("{name}: {} {value}\n", lit(&(self.open)(param))));
                    let optional = if required.contains(&param.as_str()) {
                        ""
                    } else {
                        "?"
                    };
                    body.push(format!("{name}{optional}"));
                }
            }
            body.push(lit(self.tail));
            rules.push_str(&format!("{}{i}: {}\n", self.rule, body.join(" ")));
            names.push(format!("{}{i}", self.rule));
        }
        (rules, names.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::constrain::testing::{accepts, byte_vocabulary, sample};
    use crate::parse::{merge_events, schema, ParseEvent, ParserOptions};

    fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "get_weather".into(),
                parameters: json!({"type": "object", "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "days": {"type": "integer", "minimum": 1, "maximum": 14},
                    "unit": {"type": "string", "enum": ["c", "f"]}},
                    "required": ["city", "days"]}),
            },
            ToolSpec {
                name: "write".into(),
                parameters: json!({"type": "object", "properties": {
                    "path": {"type": "string", "maxLength": 12},
                    "options": {"type": "object", "properties": {"append": {"type": "boolean"}},
                                "required": ["append"], "additionalProperties": false},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2}},
                    "required": ["path", "options"]}),
            },
        ]
    }

    fn calls_of(family: Family, output: &str) -> (Vec<(String, String)>, String) {
        let mut p = family.parser(ParserOptions {
            tools: tools(),
            ..ParserOptions::default()
        });
        let mut events = p.feed(output);
        events.extend(p.finish());
        let mut calls = Vec::new();
        let mut text = String::new();
        let mut name = String::new();
        for e in merge_events(events) {
            match e {
                ParseEvent::ToolCallStart { name: n, .. } => name = n,
                ParseEvent::ToolCallArgs { delta, .. } => calls.push((name.clone(), delta)),
                ParseEvent::Text(t) => text.push_str(&t),
                _ => {}
            }
        }
        (calls, text)
    }

    /// Every call is of a declared tool, with arguments its schema accepts.
    fn assert_valid(family: Family, output: &str, calls: &[(String, String)]) {
        assert!(!calls.is_empty(), "{family:?}: no call in {output:?}");
        for (name, args) in calls {
            let tool = tools().into_iter().find(|t| &t.name == name);
            let tool =
                tool.unwrap_or_else(|| panic!("{family:?}: undeclared {name} in {output:?}"));
            if let Err(issues) = schema::check_arguments(args, &tool.parameters) {
                panic!(
                    "{family:?}: {name} {args} breaks its schema: {issues:?} (output {output:?})"
                );
            }
        }
    }

    /// What the grammar of each family generates, its parser reads back
    /// as calls of declared tools with schema-valid arguments and no text.
    #[test]
    fn every_family_reads_back_what_its_grammar_generates() {
        let v = byte_vocabulary();
        for family in Family::ALL {
            let whole = tool_grammar(family, &tools(), &ToolChoice::Required, true).unwrap();
            let Some(OutputGrammar::Whole(lark)) = whole else {
                panic!("{family:?}: required gives a whole grammar");
            };
            v.matcher(&lark)
                .unwrap_or_else(|e| panic!("{family:?}: {e}\n{lark}"));
            let mut seen = 0;
            for seed in 1..40 {
                let Some(out) = sample(&v, &lark, "", seed, 1500) else {
                    continue;
                };
                seen += 1;
                let (calls, text) = calls_of(family, &out);
                assert_valid(family, &out, &calls);
                assert_eq!(text.trim(), "", "{family:?}: text left in {out:?}");
            }
            assert!(seen >= 10, "{family:?}: only {seen} samples ended in time");
            let lazy = tool_grammar(family, &tools(), &ToolChoice::Auto, true).unwrap();
            let Some(OutputGrammar::Lazy(triggers)) = lazy else {
                panic!("{family:?}: auto gives a lazy grammar");
            };
            assert!(!triggers.is_empty());
            for t in triggers {
                for seed in 1..15 {
                    let Some(out) = sample(&v, &t.lark, &t.text, seed, 1500) else {
                        continue;
                    };
                    let (calls, _) = calls_of(family, &format!("Let me look.\n{out}"));
                    assert_valid(family, &out, &calls);
                }
            }
        }
    }

    /// The families' documented call syntax (the golden form) is in their
    /// grammar's language; a call of an undeclared tool or with bad
    /// arguments is not.
    #[test]
    fn golden_calls_are_accepted_and_bad_ones_refused() {
        let v = byte_vocabulary();
        let golden: [(Family, &str); 9] = [
            (Family::Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n</tool_call>"),
            (Family::Plain, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}"),
            (Family::Llama3Json, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"days\": 3}}"),
            (Family::Mistral, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}]"),
            (Family::Qwen3Coder, "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"),
            (Family::Glm45, "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>"),
            (Family::KimiK2, "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"Paris\", \"days\": 3}<|tool_call_end|><|tool_calls_section_end|>"),
            (Family::DeepSeek, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"city\": \"Paris\", \"days\": 3}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
            (Family::Harmony, "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\", \"days\": 3}"),
        ];
        for (family, call) in golden {
            let Ok(Some(OutputGrammar::Whole(lark))) =
                tool_grammar(family, &tools(), &ToolChoice::Required, true)
            else {
                panic!("{family:?}");
            };
            assert_eq!(accepts(&v, &lark, call), Ok(true), "{family:?}: {call}");
            let (calls, _) = calls_of(family, call);
            assert_eq!(calls.len(), 1, "{family:?}");
            // Only the named tool: the same call of another tool is refused.
            let Ok(Some(OutputGrammar::Whole(only_write))) = tool_grammar(
                family,
                &tools(),
                &ToolChoice::Function("write".into()),
                true,
            ) else {
                panic!("{family:?}");
            };
            assert_eq!(accepts(&v, &only_write, call), Ok(false), "{family:?}");
            // A call of an undeclared tool is refused.
            let undeclared = call.replace("get_weather", "get_wether");
            assert_eq!(accepts(&v, &lark, &undeclared), Ok(false), "{family:?}");
            // So are arguments of the wrong type.
            let wrong = call.replace('3', "\"3\"x");
            assert_eq!(accepts(&v, &lark, &wrong), Ok(false), "{family:?}: {wrong}");
        }
    }

    #[test]
    fn choices_and_formats() {
        assert_eq!(ToolChoice::from_wire(None), Ok(ToolChoice::Auto));
        assert_eq!(
            ToolChoice::from_wire(Some(
                &json!({"type": "function", "function": {"name": "f"}})
            )),
            Ok(ToolChoice::Function("f".into()))
        );
        assert!(ToolChoice::from_wire(Some(&json!("always"))).is_err());
        assert_eq!(
            tool_grammar(
                Family::Hermes,
                &tools(),
                &ToolChoice::Function("nope".into()),
                true
            ),
            Err(GrammarError::UnknownFunction("nope".into()))
        );
        assert_eq!(
            tool_grammar(Family::Hermes, &tools(), &ToolChoice::None, true),
            Ok(None)
        );
        assert_eq!(
            tool_grammar(Family::Hermes, &[], &ToolChoice::Required, true),
            Ok(None)
        );
        let v = byte_vocabulary();
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
                       "additionalProperties": false}}});
        let Ok(Some(OutputGrammar::Whole(lark))) = format_grammar(Some(&format)) else {
            panic!()
        };
        assert_eq!(accepts(&v, &lark, "{\"n\": 5}"), Ok(true));
        assert_eq!(accepts(&v, &lark, "{\"n\": \"5\"}"), Ok(false));
        assert_eq!(accepts(&v, &lark, "{}"), Ok(false));
        for seed in 1..10 {
            let out = sample(&v, &lark, "", seed, 500).unwrap();
            let value: Value = serde_json::from_str(&out).unwrap();
            assert!(value["n"].is_i64(), "{out}");
        }
        assert_eq!(format_grammar(Some(&json!({"type": "text"}))), Ok(None));
        assert!(format_grammar(Some(&json!({"type": "yaml"}))).is_err());
    }
}

#[cfg(test)]
mod schema_path_tests {
    use super::*;
    use crate::constrain::testing::byte_vocabulary;

    fn path(schema: Value) -> String {
        let v = byte_vocabulary();
        failing_schema_path(&schema, &|sub| {
            v.matcher(&format!("start: {}", json_rule(sub))).is_ok()
        })
    }

    #[test]
    fn the_path_names_the_deepest_sub_schema_that_fails() {
        let lookbehind = json!({"type": "string", "pattern": "(?<=a)b"});
        assert_eq!(
            path(json!({"type": "object", "properties": {
                "city": {"type": "string"},
                "when": {"type": "object", "properties": {"at": lookbehind}}}})),
            "/properties/when/properties/at"
        );
        assert_eq!(
            path(json!({"type": "object", "properties": {"x": {"anyOf": [
                {"type": "integer"}, {"type": "string", "format": "no-such-format"}]}}})),
            "/properties/x/anyOf/1"
        );
        assert_eq!(
            path(json!({"type": "array", "items": {"type": "object",
                "properties": {"a/b": {"type": "nonsense"}}}})),
            "/items/properties/a~1b"
        );
        // a $ref is not compiled alone; the definition it names is
        assert_eq!(
            path(json!({"$defs": {"d": {"type": "nonsense"}},
                "type": "object", "properties": {"a": {"$ref": "#/$defs/d"}}})),
            "/$defs/d"
        );
        // only the whole fails: no path
        assert_eq!(path(json!({"type": "nonsense"})), "");
    }
}
