//! The inference crate's integration tests, one module per subject, linked
//! into one test binary: each separate binary linked all of candle again
//! (about 117 MB and a link step apiece), which CI's disk and two cores paid
//! for ten times over. nextest still runs each test in its own process.
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;
mod local_common;

mod bad_input;
mod compact;
mod content_parts;
mod front_door;
mod llama_cpp;
mod local_archs;
mod local_compact;
mod local_engine;
mod local_gpt_oss;
mod local_llama_cpp;
mod local_sdk_python;
mod local_truncation;
mod open_responses;
mod proxy;
mod real_gemma3;
mod real_models;
mod sdk_node;
mod sdk_python;
mod server;
mod websocket;
