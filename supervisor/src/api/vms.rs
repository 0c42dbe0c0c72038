//! `/api/v1/vms/...`: translate HTTP to VM commands and answers to status codes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use clawpen_api::{
    CreateVmRequest, ResetRequest, RestoreRequest, SnapshotInfo, SnapshotName, TakeSnapshotRequest,
    VmInfo, VmName,
};
use serde::de::DeserializeOwned;

use super::error::HttpError;
use crate::vm::VmManager;

pub type Vms = Arc<VmManager>;

pub(super) fn parse_name(raw: &str) -> Result<VmName, HttpError> {
    VmName::parse(raw).map_err(|e| {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
            e.to_string(),
        )
        .field("name")
    })
}

fn parse_snapshot_name(raw: &str, field: &str) -> Result<SnapshotName, HttpError> {
    SnapshotName::parse(raw).map_err(|e| {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_name",
            e.to_string(),
        )
        .field(field)
    })
}

/// Parses an optional JSON body, saying where it is wrong. Empty means default.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_required(body)
}

/// Parses a JSON body that must be there, saying where it is wrong.
pub(super) fn parse_required<T: DeserializeOwned>(body: &Bytes) -> Result<T, HttpError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
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
    })
}

pub async fn list(State(vms): State<Vms>) -> Json<Vec<VmInfo>> {
    Json(vms.list())
}

pub async fn get(
    State(vms): State<Vms>,
    Path(name): Path<String>,
) -> Result<Json<VmInfo>, HttpError> {
    Ok(Json(vms.get(&parse_name(&name)?)?))
}

pub async fn start(
    State(vms): State<Vms>,
    Path(name): Path<String>,
) -> Result<Json<VmInfo>, HttpError> {
    Ok(Json(vms.start(&parse_name(&name)?).await?))
}

pub async fn stop(
    State(vms): State<Vms>,
    Path(name): Path<String>,
) -> Result<Json<VmInfo>, HttpError> {
    Ok(Json(vms.stop(&parse_name(&name)?).await?))
}

pub async fn reset(
    State(vms): State<Vms>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<VmInfo>, HttpError> {
    let name = parse_name(&name)?;
    let request: ResetRequest = parse_body(&body)?;
    // Check the VM exists before doing anything, so a bad call changes nothing.
    vms.get(&name)?;
    Ok(Json(vms.reset(&name, request).await?))
}

pub async fn create(
    State(vms): State<Vms>,
    body: Bytes,
) -> Result<(StatusCode, Json<VmInfo>), HttpError> {
    let request: CreateVmRequest = parse_required(&body)?;
    let spec = vms.validate(request).await?;
    Ok((StatusCode::CREATED, Json(vms.create(spec)?)))
}

pub async fn delete(
    State(vms): State<Vms>,
    Path(name): Path<String>,
) -> Result<StatusCode, HttpError> {
    vms.delete(&parse_name(&name)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /vms/{name}/logs`: the serial console as text.
pub async fn logs(State(vms): State<Vms>, Path(name): Path<String>) -> Result<String, HttpError> {
    let dir = vms.dir(&parse_name(&name)?)?;
    match tokio::fs::read(dir.serial_log()).await {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(HttpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot read {}: {e}", dir.serial_log().display()),
        )),
    }
}

/// `GET /vms/{name}/inference`: the base URL and key the VM's guest uses.
pub async fn inference(
    State(vms): State<Vms>,
    Path(name): Path<String>,
) -> Result<Json<clawpen_api::InferenceAccess>, HttpError> {
    let name = parse_name(&name)?;
    let api_key = vms.inference_key(&name)?;
    Ok(Json(clawpen_api::InferenceAccess {
        vm: name.to_string(),
        base_url: crate::egress::guest_inference_url(),
        api_key,
    }))
}

pub async fn snapshots(
    State(vms): State<Vms>,
    Path(name): Path<String>,
) -> Result<Json<Vec<SnapshotInfo>>, HttpError> {
    Ok(Json(vms.snapshots(&parse_name(&name)?)?))
}

pub async fn take_snapshot(
    State(vms): State<Vms>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<SnapshotInfo>), HttpError> {
    let name = parse_name(&name)?;
    let request: TakeSnapshotRequest = parse_required(&body)?;
    let snapshot = parse_snapshot_name(&request.name, "body.name")?;
    vms.get(&name)?;
    Ok((
        StatusCode::CREATED,
        Json(vms.take_snapshot(&name, snapshot).await?),
    ))
}

pub async fn restore_snapshot(
    State(vms): State<Vms>,
    Path((name, snapshot)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<VmInfo>, HttpError> {
    let name = parse_name(&name)?;
    let snapshot = parse_snapshot_name(&snapshot, "snapshot")?;
    let request: RestoreRequest = parse_body(&body)?;
    vms.get(&name)?;
    Ok(Json(vms.restore_snapshot(&name, snapshot, request).await?))
}

pub async fn delete_snapshot(
    State(vms): State<Vms>,
    Path((name, snapshot)): Path<(String, String)>,
) -> Result<StatusCode, HttpError> {
    let name = parse_name(&name)?;
    let snapshot = parse_snapshot_name(&snapshot, "snapshot")?;
    vms.delete_snapshot(&name, snapshot).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field() {
        let err =
            parse_body::<ResetRequest>(&Bytes::from_static(br#"{"cold": "yes"}"#)).unwrap_err();
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(err.body.error.field.as_deref(), Some("body.cold"));
        let err = parse_body::<ResetRequest>(&Bytes::from_static(b"{not json")).unwrap_err();
        assert_eq!(err.body.error.code, "invalid_body");
        let ok = parse_body::<ResetRequest>(&Bytes::from_static(b"  ")).unwrap();
        assert!(!ok.cold);
    }
}
