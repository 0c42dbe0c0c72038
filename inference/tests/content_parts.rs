//! Images and files in Responses input (Open Responses `InputImageContent`,
//! `InputFileContent` in `UserMessageItemParam.content` and in
//! `FunctionCallOutputItemParam.output`): an upstream gets them as sent and
//! decides; a local model, which reads text only, is never given them, and
//! the client is told which part and why.

use crate::common;
use crate::local_common;

use std::time::Duration;

use common::upstream::{agent_script, FakeUpstream};
use local_common::{limit_threads, TinyModel};
use serde_json::{json, Value};

const IMAGE: &str = "data:image/png;base64,iVBORw0KGgo=";
const PDF: &str = "data:application/pdf;base64,JVBERi0xLjQK";

fn with_image_and_file() -> Value {
    json!([{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "what is in these?"},
        {"type": "input_image", "image_url": IMAGE, "detail": "high"},
        {"type": "input_file", "filename": "report.pdf", "file_data": PDF},
        {"type": "input_file", "file_url": "https://example.com/notes.pdf"}
    ]}])
}

async fn post(url: String, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// An upstream receives the image and the files as Chat Completions parts
/// carrying the client's values unchanged (the image's `detail` too), on
/// `/v1/responses` and in a compaction pass, whose output keeps the user
/// message's parts as sent.
#[tokio::test]
async fn an_upstream_gets_images_and_files_as_sent() {
    let up = FakeUpstream::start(&["m"], agent_script(Duration::ZERO)).await;
    let svc = common::start(common::config(&up.url)).await;
    let (status, v) = post(
        format!("{}/v1/responses", svc.base),
        json!({"model": "m", "input": with_image_and_file()}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let parts = &up.requests()[0]["messages"][0]["content"];
    assert_eq!(
        *parts,
        json!([
            {"type": "text", "text": "what is in these?"},
            {"type": "image_url", "image_url": {"url": IMAGE, "detail": "high"}},
            {"type": "file", "file": {"filename": "report.pdf", "file_data": PDF}},
            {"type": "file", "file": {"file_url": "https://example.com/notes.pdf"}}
        ]),
        "{parts}"
    );

    let (status, v) = post(
        format!("{}/v1/responses/compact", svc.base),
        json!({"model": "m", "input": with_image_and_file()}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(up.requests()[1]["messages"][0]["content"], *parts);
    assert_eq!(
        v["output"][0]["content"],
        with_image_and_file()[0]["content"],
        "{v}"
    );
    svc.shutdown().await;
}

/// For a local (text-only) model, an image or a file anywhere in the input
/// is a 400 whose `param` is the part's path and whose message says what
/// the part is and that the model reads text only, on `/v1/responses` and
/// `/v1/responses/compact`; nothing is generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_text_model_refuses_images_and_files_by_path() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::scripted("llama", &["done", "<|im_end|>"]).write(dir.path(), "text");
    let svc = common::start(local_common::config(vec![path])).await;
    let responses = format!("{}/v1/responses", svc.base);
    let compact = format!("{}/v1/responses/compact", svc.base);
    let file_only = json!([
        {"role": "user", "content": "hello"},
        {"type": "function_call", "call_id": "c1", "name": "fetch", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"role": "user", "content": [
            {"type": "input_text", "text": "and this?"},
            {"type": "input_file", "filename": "a.txt", "file_data": "data:text/plain;base64,aGk="}]}
    ]);
    let tool_image = json!([
        {"role": "user", "content": "look"},
        {"type": "function_call", "call_id": "c1", "name": "shot", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_image", "image_url": IMAGE}]}
    ]);
    let cases = [
        (
            &responses,
            with_image_and_file(),
            "input[0].content[1]",
            "input_image",
        ),
        (
            &responses,
            file_only.clone(),
            "input[3].content[1]",
            "input_file",
        ),
        (&responses, tool_image, "input[2].output[0]", "input_image"),
        (&compact, file_only, "input[3].content[1]", "input_file"),
    ];
    for (url, input, param, kind) in cases {
        let (status, e) = post(url.clone(), json!({"model": "text", "input": input})).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["code"], "unsupported_content", "{e}");
        let message = e["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(param)
                && message.contains(kind)
                && message.contains("reads text only"),
            "{e}"
        );
    }
    let totals = svc.metrics.prometheus();
    assert!(
        !totals.contains("status=\"completed\""),
        "a refused request was generated: {totals}"
    );
    // The same conversation in text is answered.
    let (status, v) = post(
        responses,
        json!({"model": "text", "input": "what is in these?", "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    svc.shutdown().await;
}
