//! The official `openai` Python SDK against clawpen proxying the scripted
//! upstream: streamed and whole Responses with tools, the agent tool loop,
//! `previous_response_id`, Chat Completions with tools, and the Responses
//! WebSocket mode through the SDK's own client.
//!
//! Needs `python3` with `pip install 'openai[realtime]'` (`CLAWPEN_PYTHON` picks
//! another interpreter); fails with that instruction when missing.

use crate::common;

use std::time::Duration;

use common::clients::run_python;
use common::upstream::{agent_script, FakeUpstream};
use common::{config, start, Svc};
use serde_json::{json, Value};

/// Runs `script` (in `tests/clients/python`) against clawpen proxying the
/// scripted agent upstream, with the key `sk-python`; what it printed.
async fn python_against_the_agent_script(script: &'static str) -> (FakeUpstream, Svc, Value) {
    let up = FakeUpstream::start(&["qwen3-test"], agent_script(Duration::ZERO)).await;
    let mut cfg = config(&up.url);
    cfg.api_keys = [("sk-python".to_owned(), "py-client".to_owned())].into();
    let svc = start(cfg).await;
    let base = svc.base.clone();
    let r = tokio::task::spawn_blocking(move || {
        run_python(script, &[&base, "sk-python", "qwen3-test"])
    })
    .await
    .unwrap();
    (up, svc, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_openai_sdk_agent_session() {
    let (up, svc, r) = python_against_the_agent_script("openai_sdk.py").await;

    let types: Vec<&str> = r["stream_event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(types[0], "response.created");
    assert_eq!(types[1], "response.in_progress");
    assert_eq!(*types.last().unwrap(), "response.completed");
    for t in [
        "response.output_item.added",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    assert_eq!(
        r["stream_output_types"],
        json!(["reasoning", "function_call"])
    );
    assert_eq!(r["stream_call"]["name"], "get_weather");
    assert_eq!(
        r["stream_call"]["arguments"],
        json!({"city": "Oslo", "days": 2})
    );
    assert_eq!(r["stream_reasoning"], json!(["I need the weather tool."]));
    assert_eq!(
        r["stream_usage"],
        json!({"input": 12, "cached": 8, "output": 3})
    );

    assert_eq!(r["loop_text"], "It is sunny in Oslo.");
    assert_eq!(r["loop_status"], "completed");
    // The replayed loop reached the upstream as chat messages.
    let loop_req = up
        .requests()
        .into_iter()
        .find(|b| {
            b["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["role"] == "tool")
        })
        .unwrap();
    let msgs = loop_req["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["role"], "system");
    assert_eq!(msgs[2]["role"], "assistant");
    assert_eq!(msgs[2]["reasoning_content"], "I need the weather tool.");
    assert_eq!(msgs[2]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(msgs[3]["content"], "sunny, 21C");

    // First turn saw 1 message; the chained one saw user, assistant, user.
    assert_eq!(r["chained_text"], "You sent 3 messages.");
    assert_eq!(r["retrieved_id"], true);
    assert_eq!(r["raw_text"], "You sent 1 messages.");
    assert_eq!(r["raw_sequence_ok"], true);

    assert_eq!(r["chat_finish"], "tool_calls");
    assert_eq!(
        r["chat_call"]["arguments"],
        json!({"city": "Oslo", "days": 2})
    );
    assert_eq!(r["chat_follow_text"], "It is sunny in Oslo.");
    assert_eq!(r["chat_stream_args"], json!({"city": "Oslo", "days": 2}));
    assert_eq!(r["chat_stream_usage"], 12);
    assert_eq!(r["chat_helper_call"], "get_weather");

    let text = svc.metrics.prometheus();
    assert!(
        text.contains(r#"client="py-client",endpoint="responses",status="completed"}"#),
        "{text}"
    );
    svc.idle().await;
    svc.shutdown().await;
}

/// The WebSocket mode through the official Python SDK's own client
/// (`client.responses.connect()`): a tool call, its continuation from the
/// socket's memory (`store: false`, so only the socket has it), then the
/// spec's `previous_response_not_found` for an id nobody has, all parsed
/// into the SDK's types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_openai_sdk_websocket_mode() {
    let (up, svc, r) = python_against_the_agent_script("openai_ws.py").await;
    let types = |key: &str| -> Vec<String> {
        r[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    let first = types("first_types");
    assert_eq!(first[..2], ["response.created", "response.in_progress"]);
    assert_eq!(first.last().unwrap(), "response.completed", "{first:?}");
    assert!(first.contains(&"response.function_call_arguments.done".to_owned()));
    assert_eq!(
        r["call"],
        json!({"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}})
    );
    let second = types("second_types");
    assert_eq!(second.last().unwrap(), "response.completed", "{second:?}");
    assert_eq!(r["second_text"], "It is sunny in Oslo.");
    // The continuation reached the model whole: the question, the call,
    // the tool's answer.
    let sent = &up.requests()[1]["messages"];
    let roles: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool"], "{sent}");
    assert_eq!(
        r["error"],
        json!({"type": "error", "code": "previous_response_not_found", "status": 400})
    );
    svc.shutdown().await;
}
