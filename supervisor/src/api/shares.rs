//! `/api/v1/vms/{name}/shares`: shared folders.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use clawpen_api::{AddShareRequest, ShareTag, SharedFolder};

use super::error::HttpError;
use super::vms::{parse_name, parse_required, Vms};

pub async fn list(
    State(vms): State<Vms>,
    Path(name): Path<String>,
) -> Result<Json<Vec<SharedFolder>>, HttpError> {
    Ok(Json(vms.shares(&parse_name(&name)?)?))
}

pub async fn add(
    State(vms): State<Vms>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<SharedFolder>), HttpError> {
    let name = parse_name(&name)?;
    let request: AddShareRequest = parse_required(&body)?;
    Ok((
        StatusCode::CREATED,
        Json(vms.add_share(&name, request).await?),
    ))
}

pub async fn remove(
    State(vms): State<Vms>,
    Path((name, tag)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    let name = parse_name(&name)?;
    let tag = ShareTag::parse(&tag).map_err(|e| {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
            e.to_string(),
        )
        .field("tag")
    })?;
    vms.remove_share(&name, tag).await?;
    Ok(StatusCode::NO_CONTENT)
}
