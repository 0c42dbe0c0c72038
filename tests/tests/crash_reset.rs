//! The supervisor is SIGKILLed at each step of a reset (a test hook,
//! `CLAWPEN_CRASH_AT`). Each time, the next supervisor finds the VM in a true
//! state — running with its VMM re-adopted, or stopped — the store and the VM
//! directory agree, and no orphan VMM exists.

use std::time::Duration;

use clawpen_api::{SnapshotInfo, VmInfo};
use clawpen_tests::{temp_home, vmm_pids, Up};
use serde_json::json;

const BOOT: Duration = Duration::from_secs(180);

async fn assert_true_state(up: &Up, step: &str) -> VmInfo {
    let info = up.vm("demo").await.unwrap();
    let vmms = vmm_pids(&up.home);
    let dir = up.vm_dir("demo");
    match info.state.label() {
        "Running" => {
            assert_eq!(
                vmms,
                vec![info.pid.unwrap()],
                "{step}: VMM is not the recorded one"
            );
        }
        "Stopped" => {
            assert!(vmms.is_empty(), "{step}: stopped VM with a VMM {vmms:?}");
            assert!(info.pid.is_none(), "{step}: stopped VM with a pid");
            for leftover in ["qmp.sock", "serial.sock", "vmm.pid", "disk.qcow2.new"] {
                assert!(
                    !dir.join(leftover).exists(),
                    "{step}: {leftover} left behind"
                );
            }
        }
        other => panic!("{step}: VM is {other} after recovery"),
    }
    // The snapshot index agrees with the disk.
    let indexed: Vec<SnapshotInfo> = up.get_json("/vms/demo/snapshots").await.unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["snapshot", "-U", "-l"])
        .arg(dir.join("disk.qcow2"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    for snapshot in &indexed {
        assert!(
            table.contains(snapshot.name.as_str()),
            "{step}: indexed snapshot {} not on disk: {table}",
            snapshot.name
        );
    }
    info
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_step_of_a_reset_leaves_a_true_state() {
    let home = temp_home();
    let mut up = Up::start(home.path(), &[]).unwrap();
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    up.kill9();
    for (step, cold) in [
        ("reset:before-stop", false),
        ("reset:during-restore", false),
        ("reset:before-stop", true),
        ("reset:after-stop", true),
        ("reset:after-disk", true),
    ] {
        let mut crashing =
            Up::start_with_env(home.path(), &[], &[("CLAWPEN_CRASH_AT", step)]).unwrap();
        crashing.wait_state("demo", "Running", BOOT).await.unwrap();
        let answer = crashing
            .post("/vms/demo/reset", json!({ "cold": cold }))
            .await;
        assert!(
            crashing.wait_exit(Duration::from_secs(30)),
            "{step}: hook did not fire"
        );
        assert!(
            answer.is_err() || answer.as_ref().is_ok_and(|(s, _)| !s.is_success()),
            "{step}: reset answered {answer:?}"
        );
        drop(crashing);
        let mut checker = Up::start(home.path(), &["--no-start"]).unwrap();
        let info = assert_true_state(&checker, step).await;
        println!("after a crash at {step} (cold={cold}): {}", info.state);
        checker.kill9();
    }
    let mut last = Up::start(home.path(), &["--no-start"]).unwrap();
    assert!(last.terminate().unwrap().success());
    assert!(vmm_pids(home.path()).is_empty(), "VMM left after shutdown");
}
