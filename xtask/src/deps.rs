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
