//! Shared folders: scoped on the host, read-only enforced by the VMM, no
//! symlink escape, and they survive a warm reset.

use std::path::Path;
use std::time::Duration;

use clawpen_tests::serial::Serial;
use clawpen_tests::{clawpen_bin, temp_home, Up};
use serde_json::json;

const SECRET: &str = "host-secret-7f3a";

struct Host {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    home: std::path::PathBuf,
}

/// A fake user home under a share root, with credential stores, two
/// folders to share, and a secret outside every share.
fn host() -> Host {
    let dir = tempfile::Builder::new()
        .prefix("cpshare")
        .tempdir_in("/tmp")
        .unwrap();
    let root = dir.path().join("root");
    let home = root.join("me");
    for sub in [".ssh", ".aws", "projects/ro", "projects/rw"] {
        std::fs::create_dir_all(home.join(sub)).unwrap();
    }
    std::fs::write(home.join(".aws/credentials"), SECRET).unwrap();
    std::fs::write(dir.path().join("secret.txt"), SECRET).unwrap();
    std::fs::write(home.join("projects/ro/hello.txt"), "hi from host\n").unwrap();
    let ro = home.join("projects/ro");
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), ro.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../../../secret.txt", ro.join("escape-rel")).unwrap();
    std::os::unix::fs::symlink(home.join(".aws"), home.join("projects/aws-link")).unwrap();
    Host {
        _dir: dir,
        root,
        home,
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn shares_are_scoped_enforced_and_survive_a_warm_reset() {
    let host = host();
    let home = temp_home();
    let up = Up::start_with_env(
        home.path(),
        &["--no-start", "--share-root", &s(&host.root)],
        &[("HOME", &s(&host.home))],
    )
    .unwrap();

    // Refused paths: 422 with a one-line reason, nothing stored.
    let outside = host.root.parent().unwrap().to_path_buf();
    for bad in [
        "/".to_string(),
        s(&host.home),
        s(&host.home.join(".ssh")),
        s(&host.home.join("..")),
        s(&host.home.join("projects/aws-link")),
        s(&outside),
        s(&host.root),
    ] {
        let (status, body) = up
            .post("/vms/demo/shares", json!({"host_path": bad, "tag": "x"}))
            .await
            .unwrap();
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["field"], "body.host_path", "{bad}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().contains('\n'));
    }
    let out = std::process::Command::new(clawpen_bin())
        .args(["share", "add", "demo", "/", "--tag", "x"])
        .env("CLAWPEN_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
    let listed: serde_json::Value = up.get_json("/vms/demo/shares").await.unwrap();
    assert_eq!(listed, json!([]), "a refused share was stored");

    // Two real shares, then boot.
    for (tag, rw) in [("ro", false), ("rw", true)] {
        let path = host.home.join("projects").join(tag);
        let (status, body) = up
            .post(
                "/vms/demo/shares",
                json!({"host_path": s(&path), "tag": tag, "rw": rw}),
            )
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = up.post("/vms/demo/start", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = up
        .post(
            "/vms/demo/shares",
            json!({"host_path": s(&host.home.join("projects")), "tag": "late"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 409, "shares change only while stopped");

    let dir = up.vm_dir("demo");
    let answer = Duration::from_secs(30);
    let mut serial = Serial::connect(&dir).unwrap();
    let out = serial.run("cat /mnt/ro/hello.txt", answer).unwrap();
    assert!(out.contains("hi from host"), "{out}");
    let out = serial
        .run(
            "echo nope > /mnt/ro/new 2>&1; echo guest > /mnt/rw/from-guest; sync",
            answer,
        )
        .unwrap();
    assert!(
        out.contains("Read-only") || out.contains("Permission denied"),
        "write to a read-only share: {out}"
    );
    assert!(
        !host.home.join("projects/ro/new").exists(),
        "read-only share was written"
    );
    let written = std::fs::read_to_string(host.home.join("projects/rw/from-guest"))
        .unwrap_or_else(|e| panic!("guest write to the rw share missing ({e}); guest said: {out}"));
    assert_eq!(written.trim(), "guest");

    let out = serial
        .run("cat /mnt/ro/escape /mnt/ro/escape-rel 2>&1", answer)
        .unwrap();
    assert!(!out.contains(SECRET), "a symlink leaked a host file: {out}");

    // The clean snapshot holds memory although shares were mounted, and a
    // warm reset brings the shares back.
    let snapshots: serde_json::Value = up.get_json("/vms/demo/snapshots").await.unwrap();
    assert_eq!(snapshots[0]["name"], "clean");
    assert_eq!(snapshots[0]["has_memory"], true, "{snapshots}");
    let (status, body) = up.post("/vms/demo/reset", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serial = Serial::connect(&dir).unwrap();
    let out = serial.run("cat /mnt/ro/hello.txt", answer).unwrap();
    assert!(
        out.contains("hi from host"),
        "share gone after warm reset: {out}"
    );

    // A shared folder swapped for a symlink to a credential store after it
    // was added: the next start refuses to attach it, and no VMM opens it.
    drop(serial);
    let (status, body) = up.post("/vms/demo/stop", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let ro = host.home.join("projects/ro");
    std::fs::rename(&ro, host.home.join("projects/ro-was")).unwrap();
    std::os::unix::fs::symlink(host.home.join(".aws"), &ro).unwrap();
    let (status, body) = up.post("/vms/demo/start", json!({})).await.unwrap();
    assert_eq!(status, 409, "a swapped share was attached: {body}");
    assert_eq!(body["error"]["code"], "share_changed", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("share ro") && message.contains(".aws"),
        "{message}"
    );
    let vm = up.vm("demo").await.unwrap();
    assert!(!matches!(vm.state, clawpen_api::VmState::Running), "{vm:?}");
}
