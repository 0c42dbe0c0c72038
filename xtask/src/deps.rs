//! Host packages (QEMU, Chromium, ...) through `scripts/host-deps.sh`.

use anyhow::{bail, Context, Result};

/// Runs the idempotent host dependency installer. `browser`: also Chromium and
/// chromedriver (only the tests need them).
pub fn install(browser: bool) -> Result<()> {
    let script = crate::workspace_root().join("scripts/host-deps.sh");
    let mut command = std::process::Command::new("bash");
    command.arg(&script);
    if !browser {
        command.env("CLAWPEN_SKIP_BROWSER", "1");
    }
    let status = command
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// The real clients the inference tests drive (OpenAI SDKs, llama.cpp's
/// server) through `scripts/test-clients.sh`.
pub fn install_test_clients() -> Result<()> {
    let script = crate::workspace_root().join("scripts/test-clients.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}
