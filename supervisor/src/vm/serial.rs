//! Reading a VM's serial console log.

use std::path::Path;
use std::time::Duration;

/// Waits until `marker` appears in the serial log at `path` (the file may not
/// exist yet). `Err` with the elapsed limit when it does not appear in time.
pub async fn wait_for_marker(path: &Path, marker: &str, limit: Duration) -> Result<(), Duration> {
    let deadline = tokio::time::Instant::now() + limit;
    let needle = marker.as_bytes();
    loop {
        if let Ok(bytes) = tokio::fs::read(path).await {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(limit);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_a_marker_written_later_and_times_out_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::fs::write(&path, b"boot...\nREADY\n").unwrap();
            })
        };
        wait_for_marker(&path, "READY", Duration::from_secs(5))
            .await
            .unwrap();
        writer.await.unwrap();
        assert!(wait_for_marker(&path, "NEVER", Duration::from_millis(100))
            .await
            .is_err());
    }
}
