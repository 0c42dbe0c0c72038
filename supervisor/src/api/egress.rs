//! `/api/v1/vms/{name}/egress/...`: a VM's egress rules and log. Handlers
//! translate; rules are checked by their `clawpen-api` constructors while the
//! body is parsed, so a bad rule is a 422 naming the field and nothing is
//! stored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use clawpen_api::{EgressLogEntry, EgressLogQuery, EgressRule, NewEgressRule, VmName};

use super::error::HttpError;
use crate::egress::{Egress, EgressError};
use crate::vm::VmManager;

impl From<EgressError> for HttpError {
    fn from(error: EgressError) -> Self {
        let message = error.to_string();
        match error {
            EgressError::NoRule { .. } => {
                Self::new(StatusCode::NOT_FOUND, "no_rule", message).field("id")
            }
            EgressError::Store(_)
            | EgressError::Hosts(_)
            | EgressError::Forward(_)
            | EgressError::Spawn { .. } => {
                tracing::error!(error = %message, "internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
    }
}

fn invalid(field: &str, message: String) -> HttpError {
    HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).field(field)
}

/// The VM named in the path, which must exist (404 otherwise).
fn vm(vms: &VmManager, raw: &str) -> Result<VmName, HttpError> {
    let name = VmName::parse(raw).map_err(|e| {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
            e.to_string(),
        )
        .field("name")
    })?;
    vms.get(&name)?;
    Ok(name)
}

pub async fn rules(
    State(vms): State<Arc<VmManager>>,
    State(egress): State<Arc<Egress>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<EgressRule>>, HttpError> {
    let name = vm(&vms, &name)?;
    Ok(Json(egress.rules(&name)?))
}

pub async fn add_rule(
    State(vms): State<Arc<VmManager>>,
    State(egress): State<Arc<Egress>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<EgressRule>), HttpError> {
    let name = vm(&vms, &name)?;
    let de = &mut serde_json::Deserializer::from_slice(&body);
    let rule: NewEgressRule = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path == "?" {
            "body".to_string()
        } else {
            format!("body.{path}")
        };
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("request body: {}", e.inner()),
        )
        .field(field)
    })?;
    Ok((StatusCode::CREATED, Json(egress.add_rule(&name, &rule)?)))
}

pub async fn delete_rule(
    State(vms): State<Arc<VmManager>>,
    State(egress): State<Arc<Egress>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    let name = vm(&vms, &name)?;
    let id: u64 = id
        .parse()
        .map_err(|_| invalid("id", format!("rule id {id:?} is not a number")))?;
    egress.remove_rule(&name, id)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn log(
    State(vms): State<Arc<VmManager>>,
    State(egress): State<Arc<Egress>>,
    Path(name): Path<String>,
    query: Result<Query<EgressLogQuery>, QueryRejection>,
) -> Result<Json<Vec<EgressLogEntry>>, HttpError> {
    let name = vm(&vms, &name)?;
    let Query(query) = query.map_err(|e| invalid("query", e.body_text()))?;
    Ok(Json(egress.log_page(&name, query.after, query.limit)?))
}
