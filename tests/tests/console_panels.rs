//! The console's panels in a real headless Chromium, all without a reload:
//! warm Reset and Cold reset both show Resetting → Running, Snapshot adds one
//! to the VM's snapshot count, an inference request shows up in the inference
//! table, an egress rule added with the form (after a refused one) shows up in
//! the rule list, Allow on a denied line of the live egress log adds a
//! rule for that name, and the VM's forwards (one to a web server in the
//! guest, one on the OpenClaw gateway's port) are links in its row that
//! reach the guest. Screenshots at wide, desktop and phone width.
//!
//! And the agent sessions view: `clawpen up` serving a scripted local GGUF
//! that always calls `get_weather`, two Responses turns sent with the
//! official `openai` Python SDK and the `demo` VM's key (the first before
//! the page is opened: it comes from the supervisor's backlog; the second,
//! carrying the tool's result, live), shown as one session of two turns
//! under the demo VM, and in the inference panel's charts; then three
//! requests at once on a model that writes until its limit, so two wait
//! and the queue chart goes up and back to 0.

use std::time::Duration;

use clawpen_tests::browser::{build_console_assets, until, Browser};
use clawpen_tests::{temp_home, Up};
use fantoccini::Locator;

use crate::local_common;

use crate::clients;

const STATE: &str = "tr[data-vm=demo] .vm-state";
const SNAPSHOTS: &str = "tr[data-vm=demo] td.vm-snapshots";
const EGRESS: &str = "section.egress[data-vm=demo]";

/// Clicks `button` in demo's row and follows the state cell until it went
/// through Resetting and is Running again.
async fn reset_shows_resetting_then_running(browser: &Browser, button: &str) {
    browser.click(&format!("tr[data-vm=demo] {button}")).await;
    browser
        .states_through(STATE, "Resetting", "Running", Duration::from_secs(240))
        .await;
    // the reset is over: the buttons are enabled again
    until(
        &format!("{button} enabled"),
        Duration::from_secs(30),
        || async {
            let disabled = browser
                .attr(&format!("tr[data-vm=demo] {button}"), "disabled")
                .await;
            disabled.is_none().then_some(())
        },
    )
    .await;
}

async fn snapshot_count(browser: &Browser) -> Option<usize> {
    browser.attr(SNAPSHOTS, "data-count").await?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn console_panels_work_without_a_reload() {
    build_console_assets();
    let home = temp_home();
    let up = Up::start(
        home.path(),
        &["--upstream", "http://127.0.0.1:9/v1", "--model", "m"],
    )
    .unwrap();
    up.wait_state("demo", "Running", Duration::from_secs(240))
        .await
        .unwrap();

    let browser = Browser::launch().await.unwrap();
    browser.login(&up.login_url()).await.unwrap();
    browser.mark_page().await;

    // warm, then cold reset
    reset_shows_resetting_then_running(&browser, "button.reset").await;
    reset_shows_resetting_then_running(&browser, "button.reset-cold").await;
    assert_eq!(up.vm("demo").await.unwrap().state.label(), "Running");

    // Snapshot: the count goes up by one
    let before = until("a snapshot count", Duration::from_secs(30), || {
        snapshot_count(&browser)
    })
    .await;
    browser.click("tr[data-vm=demo] button.snapshot").await;
    until("one more snapshot", Duration::from_secs(120), || async {
        (snapshot_count(&browser).await? == before + 1).then_some(())
    })
    .await;
    let last = browser.attr(SNAPSHOTS, "title").await.unwrap_or_default();
    assert!(
        last.contains("last: console-"),
        "snapshot cell's title: {last:?}"
    );

    // An inference request (its upstream is down: it fails, and is recorded)
    let resp = reqwest::Client::new()
        .post(format!("{}/chat/completions", up.inference_url))
        .json(&serde_json::json!({
            "model": "m",
            "prompt_cache_key": "console-session",
            "messages": [{"role": "user", "content": "hi"}]
        }))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_server_error(), "{}", resp.status());
    let row = "table.inference tr.request[data-session=console-session]";
    browser
        .wait_for(row, Duration::from_secs(30))
        .await
        .unwrap();
    let status = browser
        .text(&format!("{row} td.status"))
        .await
        .unwrap_or_default();
    assert_eq!(status, "failed");
    assert_eq!(
        browser
            .attr("p.totals b.requests", "data-count")
            .await
            .as_deref(),
        Some("1")
    );
    browser
        .wait_for(
            "table.sessions tr.session[data-session=console-session]",
            Duration::from_secs(5),
        )
        .await
        .unwrap();

    // Egress: a bad target is refused with the server's words, a good one is listed
    let target = browser
        .client
        .find(Locator::Css(&format!("{EGRESS} input.target")))
        .await
        .unwrap();
    target.send_keys("exa mple.com").await.unwrap();
    browser.click(&format!("{EGRESS} button.add-rule")).await;
    browser
        .wait_for(&format!("{EGRESS} p.egress-error"), Duration::from_secs(30))
        .await
        .unwrap();
    let refused = browser
        .text(&format!("{EGRESS} p.egress-error"))
        .await
        .unwrap_or_default();
    assert!(refused.contains("target"), "error line says {refused:?}");
    target.clear().await.unwrap();
    target.send_keys("api.example.com").await.unwrap();
    browser
        .client
        .find(Locator::Css(&format!("{EGRESS} input.ports")))
        .await
        .unwrap()
        .send_keys("443")
        .await
        .unwrap();
    browser.click(&format!("{EGRESS} button.add-rule")).await;
    let rule = until(
        "the new rule in the list",
        Duration::from_secs(30),
        || async {
            let text = browser.text(&format!("{EGRESS} tr.rule")).await?;
            text.contains("api.example.com").then_some(text)
        },
    )
    .await;
    assert!(rule.contains("allow") && rule.contains("443"), "{rule}");
    assert!(
        browser
            .client
            .find(Locator::Css(&format!("{EGRESS} p.egress-error")))
            .await
            .is_err(),
        "the error line stayed"
    );
    let stored: Vec<clawpen_api::EgressRule> = up.get_json("/vms/demo/egress/rules").await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].target.to_string(), "api.example.com");
    // the form was cleared for the next rule
    let left = target.prop("value").await.unwrap().unwrap_or_default();
    assert_eq!(left, "");

    // A name the guest looks up is denied (no rule for it) and logged live;
    // Allow on that line adds the rule.
    let mut serial = clawpen_tests::serial::Serial::connect(&up.vm_dir("demo")).unwrap();
    let out =
        tokio::task::block_in_place(|| serial.run("nslookup denied.test", Duration::from_secs(60)))
            .unwrap();
    assert!(out.contains("NXDOMAIN"), "{out}");
    let allow =
        format!("{EGRESS} tr.entry[data-decision=deny][data-name=\"denied.test\"] button.allow");
    browser
        .wait_for(&allow, Duration::from_secs(30))
        .await
        .unwrap();
    browser.click(&allow).await;
    until(
        "the allow rule in the list",
        Duration::from_secs(30),
        || async {
            let rows = browser
                .client
                .find_all(Locator::Css(&format!("{EGRESS} tr.rule")))
                .await
                .ok()?;
            for row in rows {
                let text = row.text().await.ok()?;
                if text.contains("denied.test") && text.starts_with("allow") {
                    return Some(());
                }
            }
            None
        },
    )
    .await;
    // the denied lines of that name now say so instead of offering Allow
    browser
        .wait_for(
            &format!("{EGRESS} tr.entry[data-name=\"denied.test\"] span.allowed"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Forwards into the guest are links in its row: a web server the guest
    // runs, and the OpenClaw gateway's port, named so.
    tokio::task::block_in_place(|| {
        serial.run(
            "mkdir -p /tmp/www && echo served-from-the-guest > /tmp/www/index.html \
             && httpd -p 8080 -h /tmp/www && echo httpd-up",
            Duration::from_secs(60),
        )
    })
    .unwrap();
    let mut opened = Vec::new();
    for port in [8080, clawpen_api::OPENCLAW_GATEWAY_PORT] {
        let (status, forward) = up
            .post(
                "/vms/demo/forwards",
                serde_json::json!({ "guest_port": port }),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{forward}");
        opened.push(serde_json::from_value::<clawpen_api::ForwardInfo>(forward).unwrap());
    }
    let link =
        |port: u16| format!("tr[data-vm=demo] td.vm-forwards a.forward[data-port=\"{port}\"]");
    let gateway = link(clawpen_api::OPENCLAW_GATEWAY_PORT);
    browser
        .wait_for(&gateway, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        browser.text(&gateway).await.as_deref(),
        Some("OpenClaw gateway")
    );
    assert_eq!(
        browser.attr(&gateway, "href").await,
        Some(format!("http://{}/", opened[1].host_addr))
    );
    let web = browser
        .attr(&link(8080), "href")
        .await
        .expect("the port 8080 link");
    assert_eq!(web, format!("http://{}/", opened[0].host_addr));
    // forwards listen on a loopback address of their own, not the console's
    assert!(web.starts_with("http://127.0.0.2:"), "{web}");
    assert_eq!(
        browser.text(&link(8080)).await.as_deref(),
        Some("port 8080")
    );
    // the link reaches the guest's server
    let body = reqwest::get(format!("{web}index.html"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "served-from-the-guest");

    assert!(browser.same_page().await, "the page was reloaded");

    for (file, size) in [
        ("console-wide.png", (1700, 1000)),
        ("console-desktop.png", (1280, 900)),
        ("console-phone.png", (390, 844)),
    ] {
        // clicks scrolled the tables sideways; show them from their start
        browser
            .screenshot_at(
                file,
                size,
                "document.querySelectorAll('.scroll').forEach(e => e.scrollLeft = 0); \
                 window.scrollTo(0, 0)",
            )
            .await;
    }
    // at phone width the page itself does not scroll sideways (tables do)
    assert!(
        browser.fits_width().await,
        "the page is wider than the phone"
    );
    no_clawpen_credential_reaches_a_guest_server(&up, &browser, &mut serial).await;
    browser.close().await;
}

/// Run in the guest: a server on port 8082 that answers each request with
/// the request's head, as text (busybox `nc` and `sh`).
const ECHO_SERVER: &str = r#"printf '%s\n' '#!/bin/sh' 'while IFS= read -r l; do l=$(printf %s "$l" | tr -d "\r"); [ -z "$l" ] && break; echo "$l" >> /tmp/head.$$; done' 'printf "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"' 'cat /tmp/head.$$; rm -f /tmp/head.$$' > /tmp/echo.sh && chmod +x /tmp/echo.sh && (nc -ll -p 8082 -e /tmp/echo.sh >/dev/null 2>&1 &) && echo echo-up"#;

/// What a guest's server gets from the logged-in browser: the console's
/// cookie is a session of its own (HttpOnly, SameSite=Strict, not the API
/// token), and opening a forward sends a guest-run server no clawpen
/// cookie or token, though that server does see the cookies of its own
/// origin (the control: a cookie the page sets itself comes back).
async fn no_clawpen_credential_reaches_a_guest_server(
    up: &clawpen_tests::Up,
    browser: &Browser,
    serial: &mut clawpen_tests::serial::Serial,
) {
    let cookies = browser.client.get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "clawpen_session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert_ne!(session.value(), up.token, "the cookie is the API token");
    assert_eq!(session.http_only(), Some(true), "{session:?}");
    assert_eq!(
        format!("{:?}", session.same_site()),
        "Some(Strict)",
        "{session:?}"
    );
    // The session cookie is no bearer token for the API.
    let as_bearer = reqwest::Client::new()
        .get(format!("{}{}/vms", up.url, clawpen_api::API_PREFIX))
        .bearer_auth(session.value())
        .send()
        .await
        .unwrap();
    assert_eq!(as_bearer.status(), 401);

    // A guest server that answers with the request head it was sent.
    tokio::task::block_in_place(|| serial.run(ECHO_SERVER, Duration::from_secs(60))).unwrap();
    let (status, forward) = up
        .post(
            "/vms/demo/forwards",
            serde_json::json!({ "guest_port": 8082 }),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{forward}");
    let forward: clawpen_api::ForwardInfo = serde_json::from_value(forward).unwrap();
    let echo = format!("http://{}/", forward.host_addr);
    let head_seen = |probe: &'static str| {
        let echo = echo.clone();
        async move {
            until("the guest's echo", Duration::from_secs(30), || async {
                browser.client.goto(&echo).await.ok()?;
                let head = browser.text("body").await?;
                (head.contains("GET / HTTP/1.1") && head.contains(probe)).then_some(head)
            })
            .await
        }
    };
    let head = head_seen("Host:").await;
    assert!(!head.contains("clawpen"), "{head}");
    assert!(!head.contains(up.token.as_str()), "{head}");
    assert!(!head.contains(session.value()), "{head}");
    // the control: the guest's server is sent its own origin's cookies
    browser
        .client
        .execute("document.cookie = 'probe=guest-origin'", vec![])
        .await
        .unwrap();
    let head = head_seen("probe=guest-origin").await;
    assert!(!head.contains("clawpen"), "{head}");

    // the console still works in the same browser
    browser.client.goto(&up.url).await.unwrap();
    browser
        .wait_for("tr[data-vm=demo]", Duration::from_secs(60))
        .await
        .unwrap();
}

/// What the scripted model writes after any prompt: one `get_weather` call.
const TOOL_CALL_SCRIPT: &[&str] = &[
    "<tool_call>",
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    "</tool_call>",
    "<|im_end|>",
];

/// One Responses turn with the official `openai` Python SDK: the first
/// question, or (with a call's JSON as the one argument) the tool's answer
/// to that call; prints the response's id, status and tool calls. With
/// `queue`: three requests at once on the `endless` model (a long one, then
/// two short ones that wait for it); prints their statuses.
const SDK_TURN: &str = r#"
import json, sys
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)
question = {"role": "user", "content": "weather in paris?"}
tools = [{"type": "function", "name": "get_weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
if sys.argv[3:] == ["queue"]:
    import threading, time
    statuses = []
    def ask(text, tokens):
        r = client.responses.create(model="endless", input=text, max_output_tokens=tokens,
                                    temperature=0)
        statuses.append(r.status)
    first = threading.Thread(target=ask, args=("tell me everything", 400))
    first.start()
    time.sleep(0.3)
    rest = [threading.Thread(target=ask, args=(t, 4)) for t in ("and b?", "and c?")]
    for t in rest:
        t.start()
    for t in [first] + rest:
        t.join()
    print(json.dumps({"statuses": statuses}))
    sys.exit(0)
if len(sys.argv) > 3:
    call = json.loads(sys.argv[3])
    items = [question,
             {"type": "function_call", "call_id": call["call_id"], "name": call["name"],
              "arguments": call["arguments"]},
             {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21C"}]
else:
    items = [question]
r = client.responses.create(model="scripted", input=items, tools=tools, temperature=0,
                            max_output_tokens=40, prompt_cache_key="agent-1")
calls = [{"call_id": i.call_id, "name": i.name, "arguments": i.arguments}
         for i in r.output if i.type == "function_call"]
print(json.dumps({"id": r.id, "status": r.status, "calls": calls}))
"#;

/// Runs [`SDK_TURN`] against `base` with `key`; answers what it printed.
fn sdk_turn(base: &str, key: &str, args: &[String]) -> serde_json::Value {
    clients::require_python(&["openai"], "scripts/test-clients.sh");
    let out = std::process::Command::new(clients::python())
        .args(["-c", SDK_TURN, base, key])
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK turn failed:\n{stderr}\n{stdout}"
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the SDK printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_sessions_show_each_turn_under_the_vm() {
    use serde_json::Value;
    build_console_assets();
    let home = temp_home();
    let models = tempfile::tempdir().unwrap();
    let model = local_common::TinyModel::scripted("llama", TOOL_CALL_SCRIPT)
        .write(models.path(), "scripted");
    // a second model that writes until its token limit: requests wait for it
    let endless = local_common::TinyModel::new("llama")
        .never_ending()
        .write(models.path(), "endless");
    let up = Up::start(
        home.path(),
        &[
            "--model",
            model.to_str().unwrap(),
            "--model",
            endless.to_str().unwrap(),
        ],
    )
    .unwrap();
    // the demo VM's key works as soon as the VM exists (it need not run)
    let access: clawpen_api::InferenceAccess = until(
        "the demo VM's inference key",
        Duration::from_secs(60),
        || async { up.get_json("/vms/demo/inference").await.ok() },
    )
    .await;
    // The official SDK, on the host's listener with the VM's own key (the
    // key's base URL is the guest's address, which only guests reach).
    let sdk = |args: Vec<String>| {
        let (base, key) = (up.inference_url.clone(), access.api_key.clone());
        tokio::task::spawn_blocking(move || sdk_turn(&base, &key, &args))
    };
    // Turn 1, before the page is opened
    let first = sdk(vec![]).await.unwrap();
    assert_eq!(first["status"], "completed", "{first}");
    let call = first["calls"][0].clone();
    assert_eq!(call["name"], "get_weather", "{first}");

    // the backlog has it (the relay runs on its own), with the call's arguments
    let recent: Value = until(
        "the record in the backlog",
        Duration::from_secs(30),
        || async {
            let v: Value = up.get_json("/inference/recent").await.ok()?;
            (!v.as_array()?.is_empty()).then_some(v)
        },
    )
    .await;
    let record = &recent.as_array().unwrap()[0];
    assert_eq!(record["client"], "demo", "{recent}");
    assert_eq!(record["request_id"], first["id"], "{recent}");
    assert_eq!(record["session"], "agent-1", "{recent}");
    assert_eq!(record["calls"][0]["name"], "get_weather", "{recent}");
    assert!(
        record["calls"][0]["arguments"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{recent}"
    );

    let browser = Browser::launch().await.unwrap();
    browser.client.goto(&up.login_url()).await.unwrap();
    let session = "section.sessions[data-vm=demo] .session[data-session=agent-1]";
    // rendered by the server from the backlog
    browser
        .wait_for(&format!("{session} .turn"), Duration::from_secs(30))
        .await
        .unwrap();
    browser
        .wait_for("body[data-live=true]", Duration::from_secs(60))
        .await
        .unwrap();

    // The inference panel: the loaded model and the queue come from the
    // status event the stream starts with; the charts hold turn 1 (the
    // backlog, merged when the stream opened).
    browser
        .wait_for(
            "section.inference p.models[data-count=\"2\"] .model[data-model=endless]",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(browser
        .text("section.inference p.models .model[data-model=scripted]")
        .await
        .is_some());
    let points = |metric: &'static str| {
        let browser = &browser;
        async move {
            let css = format!("section.inference .spark[data-metric={metric}]");
            browser
                .attr(&css, "data-points")
                .await?
                .parse::<usize>()
                .ok()
        }
    };
    until("turn 1 in the charts", Duration::from_secs(30), || async {
        (points("cache-hit").await? == 1).then_some(())
    })
    .await;
    assert!(points("queue").await.unwrap() >= 1);
    let queue_css = "section.inference .spark[data-metric=queue]";
    assert_eq!(
        browser.attr(queue_css, "data-last").await.as_deref(),
        Some("0")
    );
    let before: Vec<usize> = [
        points("ttft").await,
        points("prefill").await,
        points("decode").await,
    ]
    .into_iter()
    .map(Option::unwrap)
    .collect();
    assert_eq!(
        browser
            .attr("p.totals b.requests", "data-count")
            .await
            .as_deref(),
        Some("0")
    );

    // Turn 2, live: the tool's answer goes back
    let second = sdk(vec![call.to_string()]).await.unwrap();
    assert_eq!(second["status"], "completed", "{second}");
    let turns = until(
        "two turns in the session",
        Duration::from_secs(30),
        || async {
            let turns = browser
                .client
                .find_all(Locator::Css(&format!("{session} .turn")))
                .await
                .ok()?;
            (turns.len() == 2).then_some(turns)
        },
    )
    .await;
    assert_eq!(
        browser.attr(session, "data-turns").await.as_deref(),
        Some("2")
    );
    // the second turn brought the tool result, with its call id
    let result = turns[1]
        .find(Locator::Css(".tool-result"))
        .await
        .expect("the tool result in turn 2");
    assert!(result.text().await.unwrap().contains("sunny, 21C"));
    assert_eq!(
        result.attr("data-call").await.unwrap().as_deref(),
        call["call_id"].as_str()
    );
    assert!(turns[0].find(Locator::Css(".tool-result")).await.is_err());
    // each turn has its text element and the model's tool call with its arguments
    for turn in &turns {
        turn.find(Locator::Css("pre.model-text")).await.unwrap();
        let call = turn
            .find(Locator::Css(".tool-call[data-name=get_weather]"))
            .await
            .unwrap();
        assert!(call.text().await.unwrap().contains("Paris"));
    }
    // the sessions are the VM's own: nothing under another client
    assert!(browser
        .client
        .find(Locator::Css(
            "section.sessions:not([data-vm=demo]) .session"
        ))
        .await
        .is_err());

    // ...and in the inference charts, which now agree with the API's records
    until("turn 2 in the charts", Duration::from_secs(30), || async {
        (points("cache-hit").await? == 2).then_some(())
    })
    .await;
    let records: Vec<clawpen_api::InferenceRecord> =
        up.get_json("/inference/recent").await.unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    let with = |f: fn(&clawpen_api::InferenceRecord) -> Option<f64>| {
        records.iter().filter(|r| f(r).is_some()).count()
    };
    let after = [
        with(|r| r.time_to_first_token_ms),
        with(|r| r.prefill_tokens_per_s),
        with(|r| r.decode_tokens_per_s),
    ];
    for (i, metric) in ["ttft", "prefill", "decode"].into_iter().enumerate() {
        assert_eq!(points(metric).await, Some(after[i]), "{metric}");
        assert!(
            after[i] > before[i],
            "{metric}: {} -> {}",
            before[i],
            after[i]
        );
    }
    let last_prefill = records.iter().rev().find_map(|r| r.prefill_tokens_per_s);
    assert_eq!(
        browser
            .attr("section.inference .spark[data-metric=prefill]", "data-last")
            .await,
        last_prefill.map(|v| format!("{v:.0}"))
    );
    let prompt: u64 = records.iter().map(|r| r.prompt_tokens).sum();
    let cached: u64 = records.iter().map(|r| r.cached_tokens).sum();
    assert_eq!(
        browser.text("p.totals b.cache-hit").await,
        Some(format!("{:.0} %", cached as f64 * 100.0 / prompt as f64))
    );
    assert_eq!(
        browser
            .attr("p.totals b.requests", "data-count")
            .await
            .as_deref(),
        Some("1")
    );
    let rate = browser
        .attr("section.inference .spark[data-metric=rate]", "data-last")
        .await
        .unwrap();
    assert!(rate.parse::<f64>().unwrap() > 0.0, "requests/s {rate}");

    // Three requests at once on the endless model: two wait in its queue,
    // and the queue chart goes up and back to 0.
    let queued = sdk(vec!["queue".into()]).await.unwrap();
    assert_eq!(queued["statuses"].as_array().unwrap().len(), 3, "{queued}");
    let queue_max = until("the queue back to 0", Duration::from_secs(60), || async {
        let css = "section.inference .spark[data-metric=queue]";
        let last = browser.attr(css, "data-last").await?;
        let max: u64 = browser.attr(css, "data-max").await?.parse().ok()?;
        (last == "0" && max > 0).then_some(max)
    })
    .await;
    let records: Vec<clawpen_api::InferenceRecord> =
        up.get_json("/inference/recent").await.unwrap();
    let waited = records
        .iter()
        .filter(|r| r.model == "endless" && r.queue_wait_ms.is_some_and(|w| w > 0.0))
        .count();
    assert!(
        waited >= 1,
        "queue chart max {queue_max}, records {records:?}"
    );
    println!("queue chart max {queue_max}, {waited} requests waited");
    // the requests table shows the wait
    until(
        "a wait in the requests table",
        Duration::from_secs(30),
        || async {
            let cells = browser
                .client
                .find_all(Locator::Css("table.inference tr.request td.wait"))
                .await
                .ok()?;
            for cell in cells {
                if cell
                    .text()
                    .await
                    .ok()?
                    .parse::<f64>()
                    .is_ok_and(|ms| ms > 0.0)
                {
                    return Some(());
                }
            }
            None
        },
    )
    .await;

    let sessions = "document.querySelector('section.sessions[data-vm=demo]').scrollIntoView()";
    let charts = "document.querySelector('section.inference').scrollIntoView()";
    for (file, size, scroll) in [
        ("console-sessions-desktop.png", (1280, 900), sessions),
        ("console-sessions-phone.png", (390, 844), sessions),
        ("console-inference-desktop.png", (1280, 900), charts),
        ("console-inference-phone.png", (390, 844), charts),
    ] {
        browser.screenshot_at(file, size, scroll).await;
    }
    assert!(
        browser.fits_width().await,
        "the page is wider than the phone"
    );
    browser.close().await;
}
