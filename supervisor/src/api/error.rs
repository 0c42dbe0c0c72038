//! Maps errors to HTTP answers: a status code and an [`ErrorBody`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use clawpen_api::ErrorBody;

use crate::vm::VmError;

/// An HTTP error answer. Handlers return `Result<_, HttpError>`.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.body = self.body.with_field(field);
        self
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token: open the login URL printed by `clawpen up`, \
             or send `Authorization: Bearer <token>`",
        )
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<VmError> for HttpError {
    fn from(error: VmError) -> Self {
        Self::from(&error)
    }
}

/// By reference, so that a [`VmError::Shared`] maps as the error it shares.
impl From<&VmError> for HttpError {
    fn from(error: &VmError) -> Self {
        let message = error.to_string();
        match error {
            VmError::Shared(shared) => Self::from(&**shared),
            VmError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "not_found", message).field("name")
            }
            VmError::Conflict { .. } => Self::new(StatusCode::CONFLICT, "conflict", message),
            VmError::Exists(_) => Self::new(StatusCode::CONFLICT, "exists", message).field("name"),
            VmError::NoImage { .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "no_image", message).field("image")
            }
            VmError::NoSnapshot { .. } => {
                Self::new(StatusCode::NOT_FOUND, "no_snapshot", message).field("snapshot")
            }
            VmError::Invalid { field, .. } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
                    .field(format!("body.{field}"))
            }
            VmError::Share(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "share_refused", message)
                    .field("body.host_path")
            }
            VmError::NoShare { .. } => {
                Self::new(StatusCode::NOT_FOUND, "no_share", message).field("tag")
            }
            VmError::ShareExists { .. } => {
                Self::new(StatusCode::CONFLICT, "share_exists", message).field("body.tag")
            }
            VmError::ShareChanged { .. } => {
                Self::new(StatusCode::CONFLICT, "share_changed", message).field("tag")
            }
            VmError::Agent(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "guest_agent", message)
            }
            VmError::TaskGone(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            VmError::Boot { .. } | VmError::Backend { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "vm_failed", message)
            }
            VmError::Image(_) | VmError::Store(_) | VmError::Dir(_) | VmError::GuestConfig(_) => {
                tracing::error!(error = %message, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::StatusCode;
    use clawpen_api::{VmName, VmState};

    use super::HttpError;
    use crate::vm::VmError;

    fn name() -> VmName {
        VmName::parse("box").expect("valid name")
    }

    #[test]
    fn shared_error_maps_as_the_error_it_shares() {
        let conflict = || VmError::Conflict {
            name: name(),
            state: VmState::Resetting,
            wanted: "reset",
            needs: "running",
        };
        let alone = HttpError::from(conflict());
        let shared = HttpError::from(VmError::Shared(Arc::new(conflict())));
        assert_eq!(alone.status, StatusCode::CONFLICT);
        assert_eq!(shared.status, alone.status);
        assert_eq!(shared.body, alone.body);
    }

    #[test]
    fn shared_error_keeps_its_field() {
        let invalid = VmError::Invalid {
            field: "cold",
            message: "not a boolean".into(),
        };
        let shared = HttpError::from(VmError::Shared(Arc::new(invalid)));
        assert_eq!(shared.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(shared.body.error.code, "invalid");
        assert_eq!(shared.body.error.field.as_deref(), Some("body.cold"));
        assert_eq!(shared.body.error.message, "not a boolean");
    }
}
