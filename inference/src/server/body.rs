//! Request bodies: size-limited, parsed with the failing field named.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::ApiError;

/// Parses a JSON body. Over the size limit: 413. Not JSON: 400. A field
/// of the wrong type: 400 naming it in `param` (`messages[2].role`).
pub fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::invalid_request(format!("Could not read the request body: {rejection}"))
        }
    })?;
    deserialize(parse_object(&bytes)?)
}

/// A JSON object, syntax checked first, so malformed JSON is reported as
/// such, not as a type error at some path. Shared with the WebSocket
/// mode, whose messages are request bodies with a `type`.
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
        .with_code("invalid_json")
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::invalid_request(
            "The request body must be a JSON object.",
        )),
    }
}

/// A checked JSON object as `T`: a field of the wrong type is a 400
/// naming it in `param` (`messages[2].role`).
pub fn deserialize<T: DeserializeOwned>(object: Map<String, Value>) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| {
        let path = e.path().to_string();
        let message = format!("Invalid value for '{path}': {}", e.inner());
        if path == "." {
            ApiError::invalid_request(e.inner().to_string())
        } else {
            ApiError::invalid_param(path, message).with_code("invalid_type")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct T {
        a: Vec<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        b: u32,
    }

    #[test]
    fn errors_name_what_and_where() {
        let e = parse_json::<T>(Ok(Bytes::from_static(b"{nope")), 10).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code.as_deref(), Some("invalid_json"));
        let e = parse_json::<T>(Ok(Bytes::from_static(br#"{"a":[{"b":1},{"b":"x"}]}"#)), 10)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("a[1].b"));
        let e = parse_json::<T>(Ok(Bytes::from_static(b"[]")), 10).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_json::<T>(Ok(Bytes::from_static(b"{}")), 10).unwrap_err();
        assert!(e.message.contains("missing field"), "{}", e.message);
    }
}
