//! Everything that changes is announced as an [`Event`] on `GET /api/v1/events`.

use serde::{Deserialize, Serialize};

use crate::egress::EgressLogEntry;
use crate::vm::{ForwardInfo, VmName, VmState};

/// One message of the supervisor's server-sent event stream. The SSE `event:`
/// field carries [`Event::kind`] and `data:` the JSON of the whole value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A VM entered a new lifecycle state (already written to the store).
    VmState { name: VmName, state: VmState },
    /// The inference service finished a request (boxed: it is by far the
    /// largest event).
    Inference(Box<crate::inference::InferenceRecord>),
    /// A VM and everything it owned are gone.
    VmDeleted { name: VmName },
    /// Progress of a long step (image build, reset, ...). `total` is `None`
    /// when the amount of work is not known in advance.
    Progress {
        task: String,
        step: String,
        done: u64,
        total: Option<u64>,
    },
    /// An egress gateway decided about a connection, a DNS question or a
    /// frame (already in the store); sent again with the bytes when a flow ends.
    Egress { entry: EgressLogEntry },
    /// The inference service's models or queue depth changed.
    InferenceStatus(crate::inference::InferenceStatus),
    /// A loopback forward into a VM was opened (the VM's forwards are
    /// gone with the VM).
    Forward { name: VmName, forward: ForwardInfo },
}

impl Event {
    /// The SSE `event:` name of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::VmState { .. } => "vm_state",
            Event::VmDeleted { .. } => "vm_deleted",
            Event::Inference(_) => "inference",
            Event::Progress { .. } => "progress",
            Event::Egress { .. } => "egress",
            Event::InferenceStatus(_) => "inference_status",
            Event::Forward { .. } => "forward",
        }
    }
}
