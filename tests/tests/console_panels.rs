//! The console's panels in a real headless Chromium, all without a reload:
//! warm Reset and Cold reset both show Resetting → Running, Snapshot adds one
//! to the VM's snapshot count, an inference request shows up in the inference
//! table, an egress rule added with the form (after a refused one) shows up in
//! the rule list, and Allow on a denied line of the live egress log adds a
//! rule for that name. Screenshots at wide, desktop and phone width.
//!
//! And the agent sessions view: `clawpen up` serving a scripted local GGUF
//! that always calls `get_weather`, two Responses turns with the `demo` VM's
//! key (the first before the page is opened: it comes from the supervisor's
//! backlog; the second, carrying the tool's result, live), shown as one
//! session of two turns under the demo VM.

use std::time::{Duration, Instant};

use clawpen_tests::browser::{build_console_assets, Browser};
use clawpen_tests::{temp_home, Up};
use fantoccini::Locator;

#[path = "../../inference/tests/local_common/mod.rs"]
mod local_common;

const STATE: &str = "tr[data-vm=demo] .vm-state";
const SNAPSHOTS: &str = "tr[data-vm=demo] td.vm-snapshots";
const EGRESS: &str = "section.egress[data-vm=demo]";

async fn click(browser: &Browser, css: &str) {
    browser
        .client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

async fn attr(browser: &Browser, css: &str, name: &str) -> Option<String> {
    let element = browser.client.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

/// Polls `check` every 50 ms until it answers `Some`, for at most `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks `button` in demo's row and follows the state cell until it went
/// through Resetting and is Running again.
async fn reset_shows_resetting_then_running(browser: &Browser, button: &str) {
    click(browser, &format!("tr[data-vm=demo] {button}")).await;
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let text = browser.text(STATE).await.unwrap_or_default();
        let label = text.split(':').next().unwrap_or("").trim().to_string();
        if seen.last() != Some(&label) {
            seen.push(label.clone());
        }
        if seen.iter().any(|s| s == "Resetting") && label == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "{button}: states seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the reset is over: the buttons are enabled again
    until(
        &format!("{button} enabled"),
        Duration::from_secs(30),
        || async {
            let disabled = attr(browser, &format!("tr[data-vm=demo] {button}"), "disabled").await;
            disabled.is_none().then_some(())
        },
    )
    .await;
}

async fn snapshot_count(browser: &Browser) -> Option<usize> {
    attr(browser, SNAPSHOTS, "data-count").await?.parse().ok()
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
    browser.client.goto(&up.login_url()).await.unwrap();
    browser
        .wait_for("body[data-hydrated=true]", Duration::from_secs(60))
        .await
        .unwrap();
    browser
        .wait_for("body[data-live=true]", Duration::from_secs(30))
        .await
        .unwrap();
    browser
        .client
        .execute("window.__clawpen_same_page = 42; return true;", vec![])
        .await
        .unwrap();

    // warm, then cold reset
    reset_shows_resetting_then_running(&browser, "button.reset").await;
    reset_shows_resetting_then_running(&browser, "button.reset-cold").await;
    assert_eq!(up.vm("demo").await.unwrap().state.label(), "Running");

    // Snapshot: the count goes up by one
    let before = until("a snapshot count", Duration::from_secs(30), || {
        snapshot_count(&browser)
    })
    .await;
    click(&browser, "tr[data-vm=demo] button.snapshot").await;
    until("one more snapshot", Duration::from_secs(120), || async {
        (snapshot_count(&browser).await? == before + 1).then_some(())
    })
    .await;
    let last = attr(&browser, SNAPSHOTS, "title").await.unwrap_or_default();
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
        attr(&browser, "p.totals b.requests", "data-count")
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
    click(&browser, &format!("{EGRESS} button.add-rule")).await;
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
    click(&browser, &format!("{EGRESS} button.add-rule")).await;
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
    click(&browser, &allow).await;
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

    let same_page = browser
        .client
        .execute("return window.__clawpen_same_page === 42;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, serde_json::json!(true), "the page was reloaded");

    for (file, width, height) in [
        ("console-wide.png", 1700, 1000),
        ("console-desktop.png", 1280, 900),
        ("console-phone.png", 390, 844),
    ] {
        browser.client.set_window_size(width, height).await.unwrap();
        // clicks scrolled the tables sideways; show them from their start
        browser
            .client
            .execute(
                "document.querySelectorAll('.scroll').forEach(e => e.scrollLeft = 0); \
                 window.scrollTo(0, 0); return true;",
                vec![],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shot = browser.screenshot(file).await.unwrap();
        println!("screenshot: {}", shot.display());
    }
    // at phone width the page itself does not scroll sideways (tables do)
    let overflow = browser
        .client
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        serde_json::json!(true),
        "the page is wider than the phone"
    );
    browser.close().await;
}

/// What the scripted model writes after any prompt: one `get_weather` call.
const TOOL_CALL_SCRIPT: &[&str] = &[
    "<tool_call>",
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    "</tool_call>",
    "<|im_end|>",
];

#[tokio::test(flavor = "multi_thread")]
async fn agent_sessions_show_each_turn_under_the_vm() {
    use serde_json::{json, Value};
    build_console_assets();
    let home = temp_home();
    let models = tempfile::tempdir().unwrap();
    let model = local_common::TinyModel::scripted("llama", TOOL_CALL_SCRIPT)
        .write(models.path(), "scripted");
    let up = Up::start(home.path(), &["--model", model.to_str().unwrap()]).unwrap();
    // the demo VM's key works as soon as the VM exists (it need not run)
    let access: Value = until(
        "the demo VM's inference key",
        Duration::from_secs(60),
        || async {
            let resp = up
                .request(reqwest::Method::GET, "/vms/demo/inference")
                .send()
                .await
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.json().await.ok()
        },
    )
    .await;
    let key = access["api_key"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    let tools = json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let send = |body: Value| {
        let req = http
            .post(format!("{}/responses", up.inference_url))
            .bearer_auth(&key)
            .json(&body)
            .timeout(Duration::from_secs(120));
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let v: Value = resp.json().await.unwrap();
            assert!(status.is_success(), "{status}: {v}");
            v
        }
    };
    // Turn 1, before the page is opened
    let first = send(json!({
        "model": "scripted", "input": "weather in paris?", "temperature": 0,
        "max_output_tokens": 40, "tools": tools, "prompt_cache_key": "agent-1",
    }))
    .await;
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap_or_else(|| panic!("no tool call: {first}"))
        .clone();
    assert_eq!(call["name"], "get_weather", "{first}");

    // the backlog has it (the relay runs on its own), with the call's arguments
    let recent: Value = until(
        "the record in the backlog",
        Duration::from_secs(30),
        || async {
            let v: Value = up
                .request(reqwest::Method::GET, "/inference/recent")
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (!v.as_array()?.is_empty()).then_some(v)
        },
    )
    .await;
    let record = &recent.as_array().unwrap()[0];
    assert_eq!(record["client"], "demo", "{recent}");
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

    // Turn 2, live: the tool's answer goes back
    send(json!({
        "model": "scripted", "temperature": 0, "max_output_tokens": 40, "tools": tools,
        "prompt_cache_key": "agent-1",
        "input": [
            {"role": "user", "content": "weather in paris?"},
            call,
            {"type": "function_call_output", "call_id": call["call_id"],
             "output": "sunny, 21C"},
        ],
    }))
    .await;
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
        attr(&browser, session, "data-turns").await.as_deref(),
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

    for (file, width, height) in [
        ("console-sessions-desktop.png", 1280, 900),
        ("console-sessions-phone.png", 390, 844),
    ] {
        browser.client.set_window_size(width, height).await.unwrap();
        browser
            .client
            .execute(
                "document.querySelector('section.sessions[data-vm=demo]').scrollIntoView(); \
                 return true;",
                vec![],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shot = browser.screenshot(file).await.unwrap();
        println!("screenshot: {}", shot.display());
    }
    let overflow = browser
        .client
        .execute(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(true), "the page is wider than the phone");
    browser.close().await;
}
