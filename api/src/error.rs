//! The JSON body of every 4xx/5xx answer of the supervisor API.

use serde::{Deserialize, Serialize};

/// `{"error": {...}}`: what went wrong, and where (`field`) when one input was at fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_body`, `conflict`.
    pub code: String,
    /// One sentence a person can act on.
    pub message: String,
    /// The input that was rejected (`name`, `body.cold`, ...), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ApiError {
                code: code.into(),
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.error.field = Some(field.into());
        self
    }
}
