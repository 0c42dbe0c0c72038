//! The VMM runs jailed: no_new_privs, seccomp, rlimits, its own mount and pid
//! namespaces; and jailed VMs still boot, snapshot, reset and stop.

use std::time::Duration;

use clawpen_tests::serial::Serial;
use clawpen_tests::{temp_home, vmm_pids, Up};
use serde_json::json;

fn ns(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .unwrap()
        .display()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vmm_is_jailed_and_still_works() {
    let home = temp_home();
    let mut up = Up::start(home.path(), &[]).unwrap();
    let info = up
        .wait_state("demo", "Running", Duration::from_secs(180))
        .await
        .unwrap();
    let vmm = info.pid.unwrap();
    assert_eq!(vmm_pids(home.path()), vec![vmm]);

    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).unwrap();
    assert!(limits.contains("Max core file size        0"), "{limits}");
    assert!(
        limits.contains("Max open files            4096"),
        "{limits}"
    );
    let supervisor = up.pid().unwrap();
    for kind in ["pid", "mnt"] {
        assert_ne!(
            ns(vmm, kind),
            ns(supervisor, kind),
            "{kind} namespace shared"
        );
    }
    let cwd = std::fs::read_link(format!("/proc/{vmm}/cwd")).unwrap();
    assert_eq!(cwd, up.vm_dir("demo"));
    // Only stdio and what QEMU opened itself: no supervisor fd leaked in
    // (the store, the listening sockets).
    for fd in std::fs::read_dir(format!("/proc/{vmm}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap();
        let target = target.display().to_string();
        assert!(!target.ends_with("clawpen.db"), "store leaked into the VMM");
    }

    // Snapshot, warm reset and cold reset all work under the jail.
    let (status, body) = up
        .post("/vms/demo/snapshots", json!({"name": "j"}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = up.post("/vms/demo/reset", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    assert!(serial
        .run("echo jailed-ok", Duration::from_secs(30))
        .unwrap()
        .contains("jailed-ok"));
    let (status, body) = up
        .post("/vms/demo/reset", json!({"cold": true}))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(up.terminate().unwrap().success());
    assert!(vmm_pids(home.path()).is_empty());
}
