//! `clawpen image create --macos IPSW` on a host that is not a Mac on Apple
//! silicon: the arguments are still checked (exit 2 naming the fault), then
//! the command says what it needs, and the image store is left untouched.

use std::process::Command;

use clawpen_tests::{clawpen_bin, temp_home};

fn create(home: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(clawpen_bin())
        .args(["image", "create"])
        .args(args)
        .env("CLAWPEN_HOME", home)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn elsewhere_it_checks_its_arguments_then_says_it_needs_a_mac() {
    let home = temp_home();
    let images = home.path().join("images");
    let ipsw = home.path().join("UniversalMac_15.1_24B83_Restore.ipsw");
    std::fs::write(&ipsw, b"not a restore image").unwrap();
    let ipsw = ipsw.to_str().unwrap();
    let images_arg = images.to_str().unwrap();

    let (code, stderr) = create(
        home.path(),
        &["--macos", "/nowhere/x.ipsw", "--images", images_arg],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nowhere/x.ipsw"), "{stderr}");

    let (code, stderr) = create(
        home.path(),
        &["--macos", ipsw, "--disk-gib", "8", "--images", images_arg],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--disk-gib 8"), "{stderr}");

    let (code, stderr) = create(
        home.path(),
        &["--macos", ipsw, "--name", "Big Sur", "--images", images_arg],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("\"Big Sur\""), "{stderr}");

    let (code, stderr) = create(home.path(), &["--macos", ipsw, "--images", images_arg]);
    if cfg!(all(target_os = "macos", target_arch = "aarch64")) {
        return; // a real install: not run by tests
    }
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("needs macOS on Apple silicon"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the store changed: {left:?}");

    // `--macos` is required: the command has no other kind of image
    let (code, _) = create(home.path(), &[]);
    assert_eq!(code, Some(2));
}
