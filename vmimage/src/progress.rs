//! Progress reports for long image builds.

/// One progress report. Builders call the caller's callback with these so a
/// CLI can draw a bar and the supervisor can relay events, without the library
/// printing anything itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// What is happening, e.g. `download kernel`, `initramfs`, `disk`.
    pub step: String,
    /// Units done so far in this step (bytes or items, see `total`).
    pub done: u64,
    /// Units in the whole step, when known.
    pub total: Option<u64>,
}

impl Progress {
    pub(crate) fn new(step: &str, done: u64, total: Option<u64>) -> Self {
        Self {
            step: step.to_owned(),
            done,
            total,
        }
    }
}
