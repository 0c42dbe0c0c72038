//! Wire types shared by every part of clawpen.
//!
//! This crate is the only place that defines what travels over the supervisor's
//! HTTP API and its event stream, so the console (compiled to wasm), the CLI and
//! the server can never disagree about a field. It depends on serde only: no
//! tokio, no axum, no OS crates.

pub mod egress;
pub mod error;
pub mod event;
pub mod inference;
pub mod vm;

pub use egress::{
    Cidr, EgressAction, EgressLogEntry, EgressLogProto, EgressLogQuery, EgressProto, EgressRule,
    EgressTarget, NewEgressRule, PortRange, RuleError,
};
pub use error::{ApiError, ErrorBody};
pub use event::Event;
pub use inference::{
    InferenceAccess, InferenceRecord, InferenceStatus, ToolCallRecord, ToolResultRecord,
};
pub use vm::{
    AddShareRequest, CreateVmRequest, ForwardInfo, ForwardRequest, NameError, ResetRequest,
    RestoreRequest, ShareTag, SharedFolder, SnapshotInfo, SnapshotName, TakeSnapshotRequest,
    VmInfo, VmName, VmSpec, VmState, CLEAN_SNAPSHOT, OPENCLAW_GATEWAY_PORT,
};

/// Path prefix of every supervisor API route.
pub const API_PREFIX: &str = "/api/v1";
