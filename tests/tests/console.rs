//! A real headless Chromium logs in with the URL `clawpen up` prints, clicks
//! Reset on `demo`, and sees the state go Resetting → Running live (SSE), with
//! no reload.

use std::time::{Duration, Instant};

use clawpen_tests::browser::{build_console_assets, Browser};
use clawpen_tests::{temp_home, Up};

const STATE: &str = "tr[data-vm=demo] .vm-state";

#[tokio::test(flavor = "multi_thread")]
async fn reset_from_the_browser_shows_live_state_changes() {
    build_console_assets();
    let home = temp_home();
    let up = Up::start(home.path(), &[]).unwrap();
    up.wait_state("demo", "Running", Duration::from_secs(180))
        .await
        .unwrap();

    let browser = Browser::launch().await.unwrap();
    browser.client.goto(&up.login_url()).await.unwrap();
    browser
        .wait_for("body[data-hydrated=true]", Duration::from_secs(60))
        .await
        .unwrap();
    // A marker on the window proves the page is never reloaded below.
    browser
        .client
        .execute("window.__clawpen_same_page = 42; return true;", vec![])
        .await
        .unwrap();
    let first = browser.text(STATE).await.unwrap_or_default();
    assert!(first.starts_with("Running"), "state cell says {first:?}");

    browser
        .client
        .find(fantoccini::Locator::Css("tr[data-vm=demo] button.reset"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();

    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = browser.text(STATE).await.unwrap_or_default();
        let label = text.split(':').next().unwrap_or("").trim().to_string();
        if seen.last() != Some(&label) {
            seen.push(label.clone());
        }
        if seen.iter().any(|s| s == "Resetting") && label == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "states seen: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let same_page = browser
        .client
        .execute("return window.__clawpen_same_page === 42;", vec![])
        .await
        .unwrap();
    assert_eq!(same_page, serde_json::json!(true), "the page was reloaded");
    let shot = browser.screenshot("console-reset.png").await.unwrap();
    println!("screenshot: {}", shot.display());
    let reset_pos = seen.iter().position(|s| s == "Resetting").unwrap();
    assert_eq!(seen.last().map(String::as_str), Some("Running"), "{seen:?}");
    assert!(reset_pos < seen.len() - 1, "{seen:?}");
    // The backend agrees with the page.
    assert_eq!(up.vm("demo").await.unwrap().state.label(), "Running");
    browser.close().await;
}
