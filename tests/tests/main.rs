//! The end-to-end tests, one module per subject, linked into one test binary
//! (each separate binary linked the whole stack again: disk and link time on
//! CI's two cores). nextest still runs each test in its own process, so one
//! test's VMs, environment and globals never meet another's.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "../../inference/tests/common/clients.rs"]
mod clients;
#[path = "../../inference/tests/local_common/mod.rs"]
mod local_common;

mod aarch64_guest;
mod api;
mod console;
mod console_panels;
mod crash;
mod crash_reset;
mod egress;
mod image_create_macos;
mod inference_cli;
mod jail;
mod lifecycle;
mod openclaw;
mod remote_inference;
mod reset;
mod shares;
mod tls;
