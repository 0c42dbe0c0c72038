//! The OpenAI error body, used for every 4xx/5xx the service answers:
//! `{"error":{"message":..,"type":..,"param":..,"code":..}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// An error answered to a client in OpenAI's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `not_found_error`,
    /// `server_error`, ...
    pub kind: &'static str,
    /// The request field at fault, e.g. `model` or `messages[2].content`.
    pub param: Option<String>,
    /// A machine-readable code, e.g. `model_not_found`.
    pub code: Option<String>,
}

/// The JSON body of an [`ApiError`].
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 `invalid_request_error` about one request field.
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid_request(message).with_param(param)
    }

    /// 404 for a URL no route serves.
    pub fn unknown_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Invalid URL ({method} {path})"),
        )
        .with_code("unknown_url")
    }

    /// 405 for a known URL called with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("Method {method} is not allowed on {path}"),
        )
        .with_code("method_not_allowed")
    }

    /// 404 for a `model` that names no model found.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    /// 413 for a body over the configured limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than the {limit} bytes allowed."),
        )
        .with_code("request_too_large")
    }

    /// 401 for a missing or unknown API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 400 for a `previous_response_id` that is not stored (for this client).
    pub fn previous_response_not_found(id: &str) -> Self {
        Self::invalid_param(
            "previous_response_id",
            format!("Previous response with id '{id}' not found."),
        )
        .with_code("previous_response_not_found")
    }

    /// 404 for a stored response that does not exist (for this client).
    pub fn response_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Response with id '{id}' not found."),
        )
        .with_code("response_not_found")
    }

    /// 502 for an engine (upstream) that failed.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "server_error", message).with_code("upstream_error")
    }

    /// 503 when no engine can serve.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .with_code("engine_unavailable")
    }

    /// The answer for an engine error: an upstream's 400/404/413/422/429
    /// keeps its status (the request was bad for that model, or must wait);
    /// a local model's failure is a 500 `model_error`;
    /// everything else, an upstream 401 included (that is clawpen's key, not
    /// the client's), is the gateway's fault (502) or a missing engine (503).
    pub fn from_engine(e: &crate::engine::EngineError) -> Self {
        use crate::engine::EngineError;
        match e {
            EngineError::NotConfigured => Self::unavailable(e.to_string()),
            EngineError::Refused { status, .. }
                if matches!(status, 400 | 404 | 413 | 422 | 429) =>
            {
                // Open Responses' error types by status.
                let kind = match status {
                    404 => "not_found",
                    429 => "too_many_requests",
                    _ => "invalid_request_error",
                };
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
                Self::new(status, kind, e.to_string()).with_code("upstream_refused")
            }
            EngineError::Model(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "model_error",
                e.to_string(),
            ),
            EngineError::Rejected { status, message } => {
                let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST);
                Self::new(status, "invalid_request_error", message.clone())
            }
            _ => Self::bad_gateway(e.to_string()),
        }
    }

    /// 500 `server_error`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let v = serde_json::to_value(ApiError::unknown_route("GET", "/v1/nope").body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "message": "Invalid URL (GET /v1/nope)",
                "type": "invalid_request_error",
                "param": null,
                "code": "unknown_url"
            }})
        );
        let v = serde_json::to_value(ApiError::model_not_found("x").body()).unwrap();
        assert_eq!(v["error"]["param"], "model");
    }

    #[test]
    fn engine_failures_take_open_responses_error_types() {
        use crate::engine::EngineError;
        let refused = |status| EngineError::Refused {
            status,
            message: "no".into(),
        };
        let cases = [
            (
                EngineError::Model("forward pass".into()),
                500,
                "model_error",
            ),
            (refused(429), 429, "too_many_requests"),
            (refused(404), 404, "not_found"),
            (refused(422), 422, "invalid_request_error"),
            (refused(500), 502, "server_error"),
            (EngineError::Failed("cut off".into()), 502, "server_error"),
        ];
        for (error, status, kind) in cases {
            let api = ApiError::from_engine(&error);
            assert_eq!(api.status.as_u16(), status, "{error}");
            assert_eq!(api.body().error.kind, kind, "{error}");
        }
        assert_eq!(EngineError::Model("x".into()).error_type(), "model_error");
        assert_eq!(EngineError::Failed("x".into()).error_type(), "server_error");
    }
}
