//! The walking skeleton's promise: a real test guest boots under QEMU, gets
//! trashed, and a (cold) reset brings back its clean disk, running. The warm
//! reset is proven in `lifecycle.rs`.

use std::time::Duration;

use clawpen_tests::serial::Serial;
use clawpen_tests::{temp_home, vmm_pids, Up};

const BOOT: Duration = Duration::from_secs(180);
const ANSWER: Duration = Duration::from_secs(30);

/// Resets `demo` with `body` (a `ResetRequest`); it must answer 200 with
/// the VM running.
async fn reset(up: &Up, body: serde_json::Value) -> clawpen_api::VmInfo {
    let resp = up
        .request(reqwest::Method::POST, "/vms/demo/reset")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let info: clawpen_api::VmInfo = resp.json().await.unwrap();
    assert_eq!(info.state, clawpen_api::VmState::Running);
    info
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_throws_away_what_the_guest_wrote_and_boots_again() {
    let home = temp_home();
    let mut up = Up::start(home.path(), &[]).unwrap();
    let before = up.wait_state("demo", "Running", BOOT).await.unwrap();
    let dir = up.vm_dir("demo");

    let mut serial = Serial::connect(&dir).unwrap();
    let out = serial
        .run(
            "echo trash > /mnt/home/trash && sync && ls /mnt/home",
            ANSWER,
        )
        .unwrap();
    assert!(out.contains("trash"), "file not written: {out}");

    let after = reset(&up, serde_json::json!({"cold": true})).await;
    assert_ne!(after.pid, before.pid, "a cold reset boots a new VMM");

    let mut serial = Serial::connect(&dir).unwrap();
    let out = serial
        .run("ls /mnt/home/trash 2>&1 || echo GONE", ANSWER)
        .unwrap();
    assert!(
        out.contains("No such file") && out.contains("GONE"),
        "the file survived the reset: {out}"
    );
    let vmms = vmm_pids(home.path());
    assert_eq!(vmms, vec![after.pid.unwrap()], "exactly the new VMM runs");

    let status = up.terminate().unwrap();
    assert!(status.success(), "clawpen exited with {status}");
    assert!(vmm_pids(home.path()).is_empty(), "VMM left after shutdown");
}

/// A memory state that no longer restores (a clawpen upgrade changed the
/// VM's devices, a QEMU upgrade its format) must not leave the VM stuck:
/// reset boots the snapshot's disk instead and saves `clean` again with
/// memory, so the reset after that is warm again. The test makes `clean`'s
/// memory state unusable with qemu-img: it keeps the disk state and drops
/// the memory (a disk-only internal snapshot of the same name, which
/// `loadvm` refuses).
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_state_that_does_not_restore_falls_back_to_its_disk() {
    let home = temp_home();
    let mut up = Up::start(home.path(), &[]).unwrap();
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    let dir = up.vm_dir("demo");
    let clean_has_memory = |snapshots: Vec<clawpen_api::SnapshotInfo>| {
        snapshots
            .iter()
            .find(|s| s.name.as_str() == "clean")
            .map(|s| s.has_memory)
    };
    let snapshots = up.get_json("/vms/demo/snapshots").await.unwrap();
    assert_eq!(clean_has_memory(snapshots), Some(true));

    let stop = up
        .request(reqwest::Method::POST, "/vms/demo/stop")
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success(), "{}", stop.text().await.unwrap());
    let disk = dir.join("disk.qcow2");
    for args in [["-a", "clean"], ["-d", "clean"], ["-c", "clean"]] {
        let status = std::process::Command::new("qemu-img")
            .arg("snapshot")
            .args(args)
            .arg(&disk)
            .status()
            .unwrap();
        assert!(status.success(), "qemu-img snapshot {args:?}");
    }

    let booted = reset(&up, serde_json::json!({})).await;
    let mut serial = Serial::connect(&dir).unwrap();
    let out = serial.run("echo alive", ANSWER).unwrap();
    assert!(out.contains("alive"), "{out}");
    drop(serial);
    let snapshots = up.get_json("/vms/demo/snapshots").await.unwrap();
    assert_eq!(
        clean_has_memory(snapshots),
        Some(true),
        "clean was not saved again with memory"
    );

    // Warm again: the same VMM loads the new memory state.
    let warm = reset(&up, serde_json::json!({})).await;
    assert_eq!(warm.pid, booted.pid, "a warm reset keeps the VMM");

    let status = up.terminate().unwrap();
    assert!(status.success(), "clawpen exited with {status}");
}
