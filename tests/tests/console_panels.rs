//! The console's panels in a real headless Chromium, all without a reload:
//! warm Reset and Cold reset both show Resetting → Running, Snapshot adds one
//! to the VM's snapshot count, an inference request shows up in the inference
//! table, an egress rule added with the form (after a refused one) shows up in
//! the rule list, and Allow on a denied line of the live egress log adds a
//! rule for that name. Screenshots at wide, desktop and phone width.

use std::time::{Duration, Instant};

use clawpen_tests::browser::{build_console_assets, Browser};
use clawpen_tests::{temp_home, Up};
use fantoccini::Locator;

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
    let stored: Vec<clawpen_api::EgressRule> = up
        .request(reqwest::Method::GET, "/vms/demo/egress/rules")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
