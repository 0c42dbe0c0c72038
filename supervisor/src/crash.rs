//! A test hook for crash safety: with `CLAWPEN_CRASH_AT=STEP` the supervisor
//! SIGKILLs itself when it reaches `STEP`, so tests can prove that a crash at
//! any step of a command leaves a state the next supervisor can make true.
//! Unset (always, outside tests) it costs one environment lookup per step.

use std::time::Duration;

pub const CRASH_ENV: &str = "CLAWPEN_CRASH_AT";

fn armed(step: &str) -> bool {
    std::env::var(CRASH_ENV).is_ok_and(|s| s == step)
}

fn die() {
    tracing::warn!("{CRASH_ENV}: killing the supervisor now");
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
}

/// Dies here if `step` is armed.
pub fn point(step: &str) {
    if armed(step) {
        die();
    }
}

/// Dies `after` from now if `step` is armed: for "during" steps where the
/// work happens in another process (the VMM) while we wait on it.
pub fn point_after(step: &str, after: Duration) {
    if armed(step) {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            die();
        });
    }
}
