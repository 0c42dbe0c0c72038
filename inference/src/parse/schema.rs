//! Tool arguments against the tool's JSON schema: coercion of values a
//! model typed wrongly (`"5"` → `5` for an integer, `"true"` → `true` for a
//! boolean, `5` → `"5"` for a string, `"{..}"` → `{..}` for an object) and
//! a check that names what is wrong and where.
//!
//! Supported schema keywords: `type` (one or a list), `nullable`, `enum`,
//! `const`, `properties`, `required`, `additionalProperties`, `items`,
//! `minItems`/`maxItems`, `minLength`/`maxLength`, `minimum`/`maximum`,
//! `exclusiveMinimum`/`exclusiveMaximum`, `anyOf`/`oneOf`/`allOf`. Others
//! are ignored (accepted). Coercion keeps the model's text, key order
//! included, for every value it does not change.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Number, Value};

/// One thing wrong with a call's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentIssue {
    /// Where: `""` for the arguments object, `city`, `stops[2].name`, ...
    pub path: String,
    pub message: String,
}

impl fmt::Display for ArgumentIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "arguments: {}", self.message)
        } else {
            write!(f, "arguments.{}: {}", self.path, self.message)
        }
    }
}

/// Coerces and checks `args` (a JSON object as text) against `schema`.
/// Returns the (possibly coerced) arguments text, or every issue found.
pub fn check_arguments(args: &str, schema: &Value) -> Result<String, Vec<ArgumentIssue>> {
    let issue = |message: String| {
        vec![ArgumentIssue {
            path: String::new(),
            message,
        }]
    };
    let value: Value =
        serde_json::from_str(args).map_err(|e| issue(format!("not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(issue(format!("expected an object, got {}", kind(&value))));
    }
    let coerced = coerce_arguments(args, schema);
    let value = match &coerced {
        Some(text) => serde_json::from_str(text).unwrap_or(value),
        None => value,
    };
    let issues = validate(&value, schema);
    if issues.is_empty() {
        Ok(coerced.unwrap_or_else(|| args.to_owned()))
    } else {
        Err(issues)
    }
}

/// The arguments with wrongly typed values coerced to `schema`, or `None`
/// when nothing needed (or could be) changed.
pub fn coerce_arguments(args: &str, schema: &Value) -> Option<String> {
    coerce_raw(args.trim(), schema, 0)
}

/// Every way `value` breaks `schema` (empty: it conforms).
pub fn validate(value: &Value, schema: &Value) -> Vec<ArgumentIssue> {
    let mut issues = Vec::new();
    validate_at(value, schema, "", &mut issues, 0);
    issues
}

/// A raw XML-style parameter value as JSON text: a string when the
/// schema says string, otherwise JSON when it reads as a number, boolean,
/// `null`, object or array, otherwise a string.
pub fn xml_value_to_json(raw: &str, schema: Option<&Value>) -> String {
    let types = schema.map(types_of).unwrap_or_default();
    let t = raw.trim();
    if types.contains(&"string") {
        if t == "null" && types.contains(&"null") {
            return "null".into();
        }
        return json_string(raw);
    }
    let looks_json = matches!(t, "true" | "false" | "null")
        || t.starts_with(['{', '[', '-'])
        || t.starts_with(|c: char| c.is_ascii_digit());
    if looks_json && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok() {
        t.to_owned()
    } else {
        json_string(raw)
    }
}

/// `{"k": v, ...}` from keys and JSON value texts, in order.
pub fn object_text(members: &[(String, String)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}: {}", json_string(k), v))
        .collect();
    format!("{{{}}}", body.join(", "))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Deepest nesting coerced or validated.
const MAX_DEPTH: usize = 64;

/// Allowed types of a schema (`type`, plus `null` when `nullable`); an
/// object schema without `type` but with `properties` is an object.
fn types_of(schema: &Value) -> Vec<&str> {
    let mut types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => Vec::new(),
    };
    if schema.get("nullable").and_then(Value::as_bool) == Some(true) && !types.is_empty() {
        types.push("null");
    }
    types
}

fn is_type(value: &Value, t: &str) -> bool {
    match t {
        "string" => value.is_string(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => true,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Object members in document order.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

fn coerce_raw(raw: &str, schema: &Value, depth: usize) -> Option<String> {
    if !schema.is_object() || depth > MAX_DEPTH {
        return None;
    }
    if let Some(branches) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        let value: Value = serde_json::from_str(raw).ok()?;
        if branches.iter().any(|b| validate(&value, b).is_empty()) {
            return None;
        }
        return branches.iter().find_map(|b| {
            let c = coerce_raw(raw, b, depth + 1)?;
            let v: Value = serde_json::from_str(&c).ok()?;
            validate(&v, b).is_empty().then_some(c)
        });
    }
    let types = types_of(schema);
    let wants = |t: &str| types.is_empty() || types.contains(&t);
    match raw.as_bytes().first()? {
        b'{' if wants("object") => coerce_object(raw, schema, depth),
        b'[' if wants("array") => coerce_array(raw, schema, depth),
        b'{' | b'[' if types.contains(&"string") => Some(json_string(raw)),
        _ => {
            let value: Value = serde_json::from_str(raw).ok()?;
            if types.is_empty() || types.iter().any(|t| is_type(&value, t)) {
                return None;
            }
            if let Value::String(s) = &value {
                let inner = s.trim();
                let nested = (inner.starts_with('{') && wants("object"))
                    || (inner.starts_with('[') && wants("array"));
                if nested && serde_json::from_str::<serde::de::IgnoredAny>(inner).is_ok() {
                    return Some(coerce_raw(inner, schema, depth + 1).unwrap_or(inner.to_owned()));
                }
            }
            types
                .iter()
                .find_map(|t| coerce_scalar(&value, raw, t))
                .map(|v| v.to_string())
        }
    }
}

fn coerce_scalar(value: &Value, raw: &str, t: &str) -> Option<Value> {
    match (t, value) {
        ("integer", Value::String(s)) => {
            let s = s.trim();
            s.parse::<i64>().ok().map(Value::from).or_else(|| {
                let f = s.parse::<f64>().ok()?;
                (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15)
                    .then(|| Value::from(f as i64))
            })
        }
        ("number", Value::String(s)) => {
            let s = s.trim();
            s.parse::<i64>().ok().map(Value::from).or_else(|| {
                let f = s.parse::<f64>().ok()?;
                Number::from_f64(f).map(Value::Number)
            })
        }
        ("boolean", Value::String(s)) => match s.trim() {
            "true" | "True" | "TRUE" => Some(Value::Bool(true)),
            "false" | "False" | "FALSE" => Some(Value::Bool(false)),
            _ => None,
        },
        ("null", Value::String(s)) if s.trim() == "null" => Some(Value::Null),
        ("string", Value::Number(_) | Value::Bool(_)) => Some(Value::String(raw.trim().to_owned())),
        _ => None,
    }
}

fn coerce_object(raw: &str, schema: &Value, depth: usize) -> Option<String> {
    let Members(members) = serde_json::from_str(raw).ok()?;
    let props = schema.get("properties");
    let extra = schema.get("additionalProperties").filter(|s| s.is_object());
    let mut changed = false;
    let texts: Vec<(String, String)> = members
        .into_iter()
        .map(|(k, v)| {
            let sub = props.and_then(|p| p.get(&k)).or(extra);
            let text = sub
                .and_then(|s| coerce_raw(v.get().trim(), s, depth + 1))
                .inspect(|_| changed = true)
                .unwrap_or_else(|| v.get().to_owned());
            (k, text)
        })
        .collect();
    changed.then(|| object_text(&texts))
}

fn coerce_array(raw: &str, schema: &Value, depth: usize) -> Option<String> {
    let items = schema.get("items").filter(|s| s.is_object())?;
    let elems: Vec<Box<RawValue>> = serde_json::from_str(raw).ok()?;
    let mut changed = false;
    let texts: Vec<String> = elems
        .iter()
        .map(|e| {
            coerce_raw(e.get().trim(), items, depth + 1)
                .inspect(|_| changed = true)
                .unwrap_or_else(|| e.get().to_owned())
        })
        .collect();
    changed.then(|| format!("[{}]", texts.join(", ")))
}

fn validate_at(
    value: &Value,
    schema: &Value,
    path: &str,
    issues: &mut Vec<ArgumentIssue>,
    depth: usize,
) {
    if !schema.is_object() || depth > MAX_DEPTH {
        return;
    }
    let mut issue = |message: String| {
        issues.push(ArgumentIssue {
            path: path.to_owned(),
            message,
        })
    };
    if let Some(branches) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        if !branches.iter().any(|b| validate(value, b).is_empty()) {
            issue("matches none of the allowed schemas".into());
            return;
        }
    }
    let types = types_of(schema);
    if !types.is_empty() && !types.iter().any(|t| is_type(value, t)) {
        issue(format!(
            "expected {}, got {}",
            types.join(" or "),
            kind(value)
        ));
        return;
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            issue(format!("must be one of {}", list.join(", ")));
        }
    }
    if let Some(c) = schema.get("const") {
        if c != value {
            issue(format!("must be {c}"));
        }
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    let len = |k: &str| schema.get(k).and_then(Value::as_u64);
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if num("minimum").is_some_and(|m| x < m) {
                issue(format!("must be at least {}", schema["minimum"]));
            }
            if num("maximum").is_some_and(|m| x > m) {
                issue(format!("must be at most {}", schema["maximum"]));
            }
            if num("exclusiveMinimum").is_some_and(|m| x <= m) {
                issue(format!("must be more than {}", schema["exclusiveMinimum"]));
            }
            if num("exclusiveMaximum").is_some_and(|m| x >= m) {
                issue(format!("must be less than {}", schema["exclusiveMaximum"]));
            }
        }
        Value::String(s) => {
            let n = s.chars().count() as u64;
            if len("minLength").is_some_and(|m| n < m) {
                issue(format!(
                    "must be at least {} characters",
                    schema["minLength"]
                ));
            }
            if len("maxLength").is_some_and(|m| n > m) {
                issue(format!(
                    "must be at most {} characters",
                    schema["maxLength"]
                ));
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if len("minItems").is_some_and(|m| n < m) {
                issue(format!("must have at least {} items", schema["minItems"]));
            }
            if len("maxItems").is_some_and(|m| n > m) {
                issue(format!("must have at most {} items", schema["maxItems"]));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_at(
                        item,
                        item_schema,
                        &format!("{path}[{i}]"),
                        issues,
                        depth + 1,
                    );
                }
            }
        }
        Value::Object(map) => {
            let child = |k: &str| {
                if path.is_empty() {
                    k.to_owned()
                } else {
                    format!("{path}.{k}")
                }
            };
            if let Some(Value::Array(required)) = schema.get("required") {
                for k in required.iter().filter_map(Value::as_str) {
                    if !map.contains_key(k) {
                        issues.push(ArgumentIssue {
                            path: child(k),
                            message: "is required".into(),
                        });
                    }
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            for (k, v) in map {
                match (props.and_then(|p| p.get(k)), extra) {
                    (Some(s), _) => validate_at(v, s, &child(k), issues, depth + 1),
                    (None, Some(Value::Bool(false))) => issues.push(ArgumentIssue {
                        path: child(k),
                        message: "is not a known parameter".into(),
                    }),
                    (None, Some(s)) if s.is_object() => {
                        validate_at(v, s, &child(k), issues, depth + 1)
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if let Some(Value::Array(all)) = schema.get("allOf") {
        for s in all {
            validate_at(value, s, path, issues, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1},
                "metric": {"type": "boolean"},
                "temp": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "integer"}},
                "opts": {"type": "object", "properties": {"n": {"type": "integer"}}},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "maybe": {"anyOf": [{"type": "integer"}, {"type": "null"}]}
            },
            "required": ["city"],
            "additionalProperties": false
        })
    }

    #[test]
    fn coerces_strings_to_declared_types_keeping_order() {
        let args = r#"{"metric": "true", "city": 12, "days": "5", "temp": "2.5", "tags": ["1", 2], "opts": "{\"n\": \"3\"}", "maybe": "7"}"#;
        assert_eq!(
            coerce_arguments(args, &schema()).unwrap(),
            r#"{"metric": true, "city": "12", "days": 5, "temp": 2.5, "tags": [1, 2], "opts": {"n": 3}, "maybe": 7}"#
        );
    }

    #[test]
    fn unchanged_arguments_are_not_rewritten() {
        let args = r#"{"city":"Paris","days":3}"#;
        assert_eq!(coerce_arguments(args, &schema()), None);
        assert_eq!(check_arguments(args, &schema()).unwrap(), args);
        assert_eq!(coerce_arguments("{}", &Value::Null), None);
    }

    #[test]
    fn check_reports_what_and_where() {
        let err = check_arguments(
            r#"{"days": "many", "unit": "k", "tags": [1, "x"], "extra": 1}"#,
            &schema(),
        )
        .unwrap_err();
        let shown: Vec<String> = err.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "arguments.city: is required",
                "arguments.days: expected integer, got string",
                "arguments.unit: must be one of \"c\", \"f\"",
                "arguments.tags[1]: expected integer, got string",
                "arguments.extra: is not a known parameter",
            ]
        );
        assert!(check_arguments("[1]", &schema()).is_err());
        assert!(check_arguments("{", &schema()).is_err());
        assert_eq!(
            check_arguments(r#"{"city": "x", "days": 0}"#, &schema()).unwrap_err()[0].to_string(),
            "arguments.days: must be at least 1"
        );
    }

    #[test]
    fn check_coerces_then_validates() {
        assert_eq!(
            check_arguments(r#"{"city": "Oslo", "days": "2"}"#, &schema()).unwrap(),
            r#"{"city": "Oslo", "days": 2}"#
        );
    }

    #[test]
    fn xml_values() {
        let s = json!({"type": "string"});
        let i = json!({"type": "integer"});
        assert_eq!(xml_value_to_json("42", Some(&s)), "\"42\"");
        assert_eq!(xml_value_to_json("42", Some(&i)), "42");
        assert_eq!(xml_value_to_json("42", None), "42");
        assert_eq!(xml_value_to_json("Paris", None), "\"Paris\"");
        assert_eq!(xml_value_to_json("{\"a\": 1}", None), "{\"a\": 1}");
        assert_eq!(xml_value_to_json("\"quoted\"", None), "\"\\\"quoted\\\"\"");
        assert_eq!(xml_value_to_json("007", None), "\"007\"");
        assert_eq!(
            xml_value_to_json("null", Some(&json!({"type": ["string", "null"]}))),
            "null"
        );
    }

    #[test]
    fn deep_or_odd_input_does_not_panic() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let _ = coerce_arguments(&deep, &json!({"type": "array", "items": {"type": "array"}}));
        let _ = check_arguments(&format!("{{\"a\": {deep}}}"), &schema());
        assert_eq!(coerce_arguments("", &schema()), None);
        assert_eq!(coerce_arguments("nonsense", &schema()), None);
    }
}
