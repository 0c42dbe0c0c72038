//! A real headless Chromium logs in with the URL `clawpen up` prints, clicks
//! Reset on `demo`, and sees the state go Resetting → Running live (SSE), with
//! no reload.

use std::time::Duration;

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
    browser.login(&up.login_url()).await.unwrap();
    // A marker on the window proves the page is never reloaded below.
    browser.mark_page().await;
    let first = browser.text(STATE).await.unwrap_or_default();
    assert!(first.starts_with("Running"), "state cell says {first:?}");

    browser.click("tr[data-vm=demo] button.reset").await;

    let seen = browser
        .states_through(STATE, "Resetting", "Running", Duration::from_secs(180))
        .await;
    assert!(browser.same_page().await, "the page was reloaded");
    let shot = browser.screenshot("console-reset.png").await.unwrap();
    println!("screenshot: {}", shot.display());
    let reset_pos = seen.iter().position(|s| s == "Resetting").unwrap();
    assert_eq!(seen.last().map(String::as_str), Some("Running"), "{seen:?}");
    assert!(reset_pos < seen.len() - 1, "{seen:?}");
    // The backend agrees with the page.
    assert_eq!(up.vm("demo").await.unwrap().state.label(), "Running");
    browser.close().await;
}

/// What a phone downloads: the wasm bundle as `cargo xtask console`
/// builds it (what `up` serves) stays within 1.5 MiB.
#[test]
fn the_console_bundle_is_small_enough_for_a_phone() {
    build_console_assets();
    let wasm = clawpen_tests::target_dir().join("site/pkg/clawpen_console_bg.wasm");
    let size = std::fs::metadata(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
        .len();
    assert!(
        size <= 1536 * 1024,
        "{} is {} KiB (over 1536 KiB)",
        wasm.display(),
        size / 1024
    );
}
