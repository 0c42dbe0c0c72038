//! An aarch64 guest through the supervisor on an x86_64 host: `clawpen image
//! build test-guest --arch aarch64`, then `vm create --image
//! test-guest-aarch64` boots it under `qemu-system-aarch64 -M virt` (TCG),
//! with a 9p share that the guest agent (a named virtio-serial port on
//! aarch64) unmounts and mounts around the clean snapshot and a warm reset.

use std::process::Command;
use std::time::Duration;

use clawpen_tests::serial::Serial;
use clawpen_tests::{clawpen_bin, temp_home, test_images_dir, Up};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(300);
const ANSWER: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn an_aarch64_test_guest_boots_and_warm_resets_under_the_supervisor() {
    let build = Command::new(clawpen_bin())
        .args([
            "image",
            "build",
            "test-guest",
            "--arch",
            "aarch64",
            "--images",
        ])
        .arg(test_images_dir())
        .status()
        .unwrap();
    assert!(build.success(), "image build: {build:?}");

    let shares = tempfile::tempdir().unwrap();
    let root = shares.path().canonicalize().unwrap();
    let folder = root.join("data");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("hello.txt"), "from the host\n").unwrap();
    let home = temp_home();
    let up = Up::start(
        home.path(),
        &["--no-demo", "--share-root", root.to_str().unwrap()],
    )
    .unwrap();
    let (status, body) = up
        .post(
            "/vms",
            json!({"name": "arm", "image": "test-guest-aarch64", "memory_mib": 256}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = up
        .post(
            "/vms/arm/shares",
            json!({"host_path": folder, "tag": "data"}),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{status} {body}");
    let (status, body) = up.post("/vms/arm/start", json!({})).await.unwrap();
    assert!(status.is_success(), "{status} {body}");
    let running = up.wait_state("arm", "Running", BOOT).await.unwrap();
    // Another architecture than the host's: always TCG.
    assert_eq!(running.accel.as_deref(), Some("tcg"), "{running:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", running.pid.unwrap())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.starts_with("qemu-system-aarch64 "), "{cmdline}");
    assert!(cmdline.contains("-machine virt"), "{cmdline}");

    let mut serial = Serial::connect(&up.vm_dir("arm")).unwrap();
    let out = serial
        .run("uname -m; cat /mnt/data/hello.txt", ANSWER)
        .unwrap();
    assert!(out.contains("aarch64"), "{out}");
    assert!(out.contains("from the host"), "{out}");
    serial
        .run("echo after-clean > /tmp/marker", ANSWER)
        .unwrap();

    // The clean snapshot holds memory (taken with the share unmounted by
    // the agent, mounted again after): a warm reset brings back the running
    // guest without the marker written after it, share mounted.
    let (status, body) = up.post("/vms/arm/reset", json!({})).await.unwrap();
    assert!(status.is_success(), "{status} {body}");
    up.wait_state("arm", "Running", BOOT).await.unwrap();
    // The same console connection: QEMU kept it across the restore (and
    // serves one client at a time).
    let out = serial
        .run(
            "cat /tmp/marker 2>/dev/null || echo no-marker; cat /mnt/data/hello.txt",
            ANSWER,
        )
        .unwrap_or_else(|e| {
            let dir = up.vm_dir("arm");
            let log = |f: &str| {
                String::from_utf8_lossy(&std::fs::read(dir.join(f)).unwrap_or_default())
                    .into_owned()
            };
            panic!(
                "{e:#}\nserial.log:\n{}\nvmm.log:\n{}",
                log("serial.log"),
                log("vmm.log")
            )
        });
    assert!(out.contains("no-marker"), "{out}");
    assert!(out.contains("from the host"), "{out}");
}
