//! The walking skeleton's promise: a real test guest boots under QEMU, gets
//! trashed, and a (cold) reset brings back its clean disk, running. The warm
//! reset is proven in `lifecycle.rs`.

use std::time::Duration;

use clawpen_tests::serial::Serial;
use clawpen_tests::{temp_home, vmm_pids, Up};

const BOOT: Duration = Duration::from_secs(180);
const ANSWER: Duration = Duration::from_secs(30);

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

    let resp = up
        .request(reqwest::Method::POST, "/vms/demo/reset")
        .json(&serde_json::json!({"cold": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let after: clawpen_api::VmInfo = resp.json().await.unwrap();
    assert_eq!(after.state, clawpen_api::VmState::Running);
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
