//! `/api/v1/vms/{name}/forwards`: loopback ports into a guest's services
//! (an agent gateway's web UI), carried by the VM's egress gateway.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use clawpen_api::{ForwardInfo, ForwardRequest, VmName};

use super::error::HttpError;
use crate::egress::Egress;
use crate::vm::VmManager;

fn vm(vms: &VmManager, name: &str) -> Result<VmName, HttpError> {
    let name = super::vms::parse_name(name)?;
    vms.get(&name)?;
    Ok(name)
}

fn info((guest_port, addr): (u16, std::net::SocketAddr)) -> ForwardInfo {
    ForwardInfo {
        guest_port,
        host_addr: addr.to_string(),
    }
}

pub async fn list(
    State(vms): State<Arc<VmManager>>,
    State(egress): State<Arc<Egress>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ForwardInfo>>, HttpError> {
    let name = vm(&vms, &name)?;
    Ok(Json(egress.forwards(&name).into_iter().map(info).collect()))
}

pub async fn open(
    State(vms): State<Arc<VmManager>>,
    State(egress): State<Arc<Egress>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<ForwardInfo>), HttpError> {
    let name = vm(&vms, &name)?;
    let request: ForwardRequest = serde_json::from_slice(&body).map_err(|e| {
        HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("request body: {e}"),
        )
        .field("body.guest_port")
    })?;
    if request.guest_port == 0 {
        return Err(HttpError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "guest_port must be 1-65535".to_string(),
        )
        .field("body.guest_port"));
    }
    let addr = egress.forward(&name, request.guest_port).await?;
    Ok((StatusCode::CREATED, Json(info((request.guest_port, addr)))))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_console_labels_the_port_the_openclaw_image_uses() {
        assert_eq!(
            clawpen_api::OPENCLAW_GATEWAY_PORT,
            clawpen_vmimage::openclaw::DEFAULT_GATEWAY_PORT
        );
    }
}
