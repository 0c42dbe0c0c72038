//! A supervisor killed with SIGKILL while its VM runs comes back, finds the VM
//! and re-adopts its VMM; no orphan VMM is left at any point.

use std::time::Duration;

use clawpen_tests::serial::Serial;
use clawpen_tests::{temp_home, vmm_pids, Up};

#[tokio::test(flavor = "multi_thread")]
async fn sigkilled_supervisor_readopts_its_running_vm() {
    let home = temp_home();
    let mut up = Up::start(home.path(), &[]).unwrap();
    let running = up
        .wait_state("demo", "Running", Duration::from_secs(180))
        .await
        .unwrap();
    let vmm = running.pid.expect("a running VM has a VMM pid");

    up.kill9();
    // The VMM outlives the crash (its guest keeps running)...
    assert_eq!(vmm_pids(home.path()), vec![vmm]);

    // ...and the next supervisor takes it back instead of booting another.
    let mut up = Up::start(home.path(), &[]).unwrap();
    let info = up.vm("demo").await.unwrap();
    assert_eq!(info.state.label(), "Running");
    assert_eq!(info.pid, Some(vmm), "re-adopted, not rebooted");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(vmm_pids(home.path()), vec![vmm], "no second VMM");

    // The guest still answers on its console.
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let out = serial.run("echo alive", Duration::from_secs(30)).unwrap();
    assert!(out.contains("alive"));

    // A re-adopted VM is controlled like any other: stop works and leaves nothing.
    let resp = up
        .request(reqwest::Method::POST, "/vms/demo/stop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert!(vmm_pids(home.path()).is_empty(), "VMM left after stop");
    up.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn stray_vmm_with_no_record_is_killed_on_restart() {
    let home = temp_home();
    let mut up = Up::start(home.path(), &[]).unwrap();
    up.wait_state("demo", "Running", Duration::from_secs(180))
        .await
        .unwrap();
    up.kill9();
    // Simulate a crash between spawning a VMM and recording it: the store says
    // Stopped, but the process still runs.
    let db = home.path().join("clawpen.db");
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             c.execute(\"UPDATE vms SET state='{\\\"state\\\":\\\"Stopped\\\"}', pid=NULL\"); c.commit()",
        ])
        .arg(&db)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(vmm_pids(home.path()).len(), 1);

    let mut up = Up::start(home.path(), &["--no-start"]).unwrap();
    let info = up.vm("demo").await.unwrap();
    assert_eq!(info.state.label(), "Stopped");
    assert!(vmm_pids(home.path()).is_empty(), "stray VMM survived");
    up.terminate().unwrap();
}
