//! VM lifecycle with the real test guest under QEMU TCG: the clean snapshot,
//! warm reset without a boot, cold reset with one, named snapshots, "two
//! clicks, one reset", deletion that leaves nothing.

use std::time::Duration;

use clawpen_api::{SnapshotInfo, VmInfo};
use clawpen_tests::serial::Serial;
use clawpen_tests::{temp_home, vmm_pids, Up};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);
const ANSWER: Duration = Duration::from_secs(30);
const READY: &str = "CLAWPEN_GUEST_READY";

fn boot_id(serial: &mut Serial) -> String {
    let out = serial
        .run("cat /proc/sys/kernel/random/boot_id", ANSWER)
        .unwrap();
    out.lines()
        .map(str::trim)
        .find(|l| l.len() == 36 && l.chars().filter(|c| *c == '-').count() == 4)
        .unwrap_or_else(|| panic!("no boot id in {out:?}"))
        .to_string()
}

fn serial_len(up: &Up) -> usize {
    std::fs::metadata(up.vm_dir("demo").join("serial.log"))
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

fn serial_since(up: &Up, offset: usize) -> String {
    let bytes = std::fs::read(up.vm_dir("demo").join("serial.log")).unwrap_or_default();
    String::from_utf8_lossy(&bytes[offset.min(bytes.len())..]).into_owned()
}

async fn snapshots(up: &Up) -> Vec<SnapshotInfo> {
    up.get_json("/vms/demo/snapshots").await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_reset_brings_back_memory_and_disk_without_a_boot() {
    let home = temp_home();
    let up = Up::start(home.path(), &[]).unwrap();
    let running = up.wait_state("demo", "Running", BOOT).await.unwrap();
    let clean = snapshots(&up).await;
    assert!(
        clean
            .iter()
            .any(|s| s.name.as_str() == "clean" && s.has_memory),
        "no clean snapshot with memory: {clean:?}"
    );

    // A marker on disk and a boot id in memory (the kernel makes it on first
    // read), then a snapshot of both.
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let boot = boot_id(&mut serial);
    serial
        .run("echo before > /mnt/home/marker && sync", ANSWER)
        .unwrap();
    let (status, body) = up
        .post("/vms/demo/snapshots", json!({"name": "base"}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    // Trash it: delete files, fill a file, kill every process but init.
    serial
        .run(
            "rm -rf /mnt/etc /mnt/home/marker && dd if=/dev/zero of=/mnt/home/fill bs=1M count=16 2>/dev/null; \
             echo x > /mnt/home/trash; sync; ls /mnt",
            ANSWER,
        )
        .unwrap();
    serial.send_line("kill -9 -1").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Warm restore: the same boot (memory), the snapshot's disk, no boot marker.
    let offset = serial_len(&up);
    let (status, body) = up
        .post("/vms/demo/snapshots/base/restore", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let after: VmInfo = serde_json::from_value(body).unwrap();
    assert_eq!(after.state.label(), "Running");
    assert_eq!(after.pid, running.pid, "a warm restore keeps the VMM");
    serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    assert_eq!(boot_id(&mut serial), boot, "memory state not restored");
    let out = serial
        .run(
            "ls /mnt/home; cat /mnt/home/marker /mnt/etc/clawpen-image",
            ANSWER,
        )
        .unwrap();
    assert!(
        out.contains("before") && out.contains("test-guest"),
        "{out}"
    );
    assert!(
        !out.contains("fill") && !out.contains("trash"),
        "trash survived: {out}"
    );
    assert!(
        !serial_since(&up, offset).contains(READY),
        "the guest printed its boot marker after a warm restore"
    );

    // Warm reset: back to `clean` (before the marker), still no boot.
    let offset = serial_len(&up);
    let (status, body) = up.post("/vms/demo/reset", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pid"],
        json!(running.pid),
        "a warm reset keeps the VMM"
    );
    serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let out = serial
        .run("ls /mnt/home; cat /mnt/etc/clawpen-image", ANSWER)
        .unwrap();
    assert!(
        !out.contains("marker") && out.contains("test-guest"),
        "{out}"
    );
    assert!(
        !serial_since(&up, offset).contains(READY),
        "warm reset booted"
    );

    // Cold reset: the clean disk and a real boot in a new VMM.
    let (status, body) = up
        .post("/vms/demo/reset", json!({"cold": true}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_ne!(
        body["pid"],
        json!(running.pid),
        "a cold reset starts a new VMM"
    );
    assert!(
        serial_since(&up, 0).contains(READY),
        "cold reset did not boot"
    );
    serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    assert_ne!(boot_id(&mut serial), boot, "a cold reset boots");
    let out = serial.run("cat /mnt/etc/clawpen-image", ANSWER).unwrap();
    assert!(out.contains("test-guest"));
}

#[tokio::test(flavor = "multi_thread")]
async fn named_snapshot_keeps_a_change_and_two_resets_are_one() {
    let home = temp_home();
    let up = Up::start(home.path(), &[]).unwrap();
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    serial
        .run("echo kept > /mnt/home/marker && sync", ANSWER)
        .unwrap();
    let (status, body) = up
        .post("/vms/demo/snapshots", json!({"name": "with-marker"}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["has_memory"], true);

    // Two resets at once: one reset, both answered with it.
    let (a, b) = tokio::join!(
        up.post("/vms/demo/reset", json!({})),
        up.post("/vms/demo/reset", json!({}))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.0.as_u16(), b.0.as_u16()), (200, 200), "{a:?} {b:?}");
    assert_eq!(a.1["state"]["state"], "Running");
    assert_eq!(a.1["pid"], b.1["pid"]);
    serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let out = serial.run("ls /mnt/home", ANSWER).unwrap();
    assert!(!out.contains("marker"), "reset went to clean: {out}");

    // Restore the named snapshot (warm), then its disk only (cold).
    for cold in [false, true] {
        let (status, body) = up
            .post(
                "/vms/demo/snapshots/with-marker/restore",
                json!({ "cold": cold }),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        serial = Serial::connect(&up.vm_dir("demo")).unwrap();
        let out = serial.run("cat /mnt/home/marker", ANSWER).unwrap();
        assert!(out.contains("kept"), "cold={cold}: {out}");
    }

    // Delete the snapshot: gone from the list, restoring it is a 404.
    let resp = up
        .request(reqwest::Method::DELETE, "/vms/demo/snapshots/with-marker")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!snapshots(&up)
        .await
        .iter()
        .any(|s| s.name.as_str() == "with-marker"));
    let (status, _) = up
        .post("/vms/demo/snapshots/with-marker/restore", json!({}))
        .await
        .unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_leaves_no_process_socket_or_disk() {
    let home = temp_home();
    let up = Up::start(home.path(), &["--no-demo"]).unwrap();
    let (status, body) = up
        .post(
            "/vms",
            json!({"name": "gone", "image": "test-guest", "memory_mib": 128}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = up.post("/vms/gone/start", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(vmm_pids(home.path()).len(), 1);
    let resp = up
        .request(reqwest::Method::DELETE, "/vms/gone")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(vmm_pids(home.path()).is_empty());
    assert!(!home.path().join("vms/gone").exists());
    let resp = up
        .request(reqwest::Method::GET, "/vms/gone")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_lifecycle_input_is_refused_and_changes_nothing() {
    let home = temp_home();
    let up = Up::start(home.path(), &["--no-start"]).unwrap();
    let before: serde_json::Value = up.get_json("/vms").await.unwrap();
    let listing = || {
        let mut names: Vec<String> = std::fs::read_dir(home.path().join("vms"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let dirs_before = listing();
    let long = "a".repeat(300);
    for (path, body, status, field) in [
        (
            "/vms",
            json!({"name": "../x", "image": "test-guest"}),
            422,
            "body.name",
        ),
        (
            "/vms",
            json!({"name": "", "image": "test-guest"}),
            422,
            "body.name",
        ),
        (
            "/vms",
            json!({"name": long, "image": "test-guest"}),
            422,
            "body.name",
        ),
        (
            "/vms",
            json!({"name": "m0", "image": "test-guest", "memory_mib": 0}),
            422,
            "body.memory_mib",
        ),
        (
            "/vms",
            json!({"name": "d0", "image": "test-guest", "disk_gib": 0}),
            422,
            "body.disk_gib",
        ),
        (
            "/vms",
            json!({"name": "c0", "image": "test-guest", "cpus": 0}),
            422,
            "body.cpus",
        ),
        (
            "/vms",
            json!({"name": "i0", "image": "no-such-image"}),
            422,
            "body.image",
        ),
        (
            "/vms",
            json!({"name": "demo", "image": "test-guest"}),
            409,
            "name",
        ),
        ("/vms", json!({"name": 5}), 422, "body.name"),
        ("/vms/nope/snapshots", json!({"name": "s"}), 404, "name"),
        (
            "/vms/demo/snapshots",
            json!({"name": "../s"}),
            422,
            "body.name",
        ),
        (
            "/vms/demo/snapshots/nope/restore",
            json!({}),
            404,
            "snapshot",
        ),
        ("/vms/demo/snapshots", json!({"name": "s"}), 409, ""),
    ] {
        let (got, answer) = up.post(path, body.clone()).await.unwrap();
        assert_eq!(got.as_u16(), status, "{path} {body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["field"], field, "{path} {body}: {answer}");
        }
        assert!(answer["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let after: serde_json::Value = up.get_json("/vms").await.unwrap();
    assert_eq!(after, before, "a refused call changed the store");
    assert_eq!(listing(), dirs_before, "a refused call changed the disk");
    assert!(vmm_pids(home.path()).is_empty());

    // CLI: exit 2, one line, for each kind of bad input.
    for args in [
        vec!["vm", "create", "../x", "--image", "test-guest"],
        vec![
            "vm",
            "create",
            "m0",
            "--image",
            "test-guest",
            "--memory",
            "0",
        ],
        vec!["vm", "snapshot", "take", "nope", "s1"],
        vec!["vm", "delete", "nope"],
    ] {
        let out = std::process::Command::new(clawpen_tests::clawpen_bin())
            .args(&args)
            .env("CLAWPEN_HOME", home.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
    }
    assert_eq!(listing(), dirs_before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuilt_base_image_gives_a_fresh_disk_not_a_corrupt_one() {
    let home = temp_home();
    let up = Up::start(home.path(), &[]).unwrap();
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    serial
        .run("echo old > /mnt/home/on-old-base && sync", ANSWER)
        .unwrap();
    drop(serial);
    let (status, _) = up.post("/vms/demo/stop", json!({})).await.unwrap();
    assert_eq!(status, 200);
    // What an image rebuild looks like from the VM's side: its disk was made
    // on a base whose checksum is no longer the image's.
    let stamp = up.vm_dir("demo").join("base.sha256");
    assert!(stamp.exists(), "the disk records its base");
    std::fs::write(&stamp, "0".repeat(64)).unwrap();
    let (status, body) = up.post("/vms/demo/start", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let out = serial
        .run("ls /mnt/home; cat /mnt/etc/clawpen-image", ANSWER)
        .unwrap();
    assert!(
        !out.contains("on-old-base") && out.contains("test-guest"),
        "{out}"
    );
    let snaps = snapshots(&up).await;
    assert_eq!(snaps.len(), 1, "only the new clean snapshot: {snaps:?}");
    assert_ne!(std::fs::read_to_string(&stamp).unwrap(), "0".repeat(64));
}
