//! Builds the OpenClaw guest and boots it under QEMU (TCG) with a user-mode
//! NIC forwarding the gateway port to the host: the ready marker must come
//! only after the gateway answers, `/health` must answer from the host, and
//! the `openclaw` CLI must run in the guest's shell.
//!
//! Ignored by default: a cold build takes minutes (debootstrap, npm) and
//! needs root and network, and the gateway's first start under TCG takes
//! minutes on two shared cores. Run it with
//! `cargo test -p clawpen-vmimage --test openclaw_guest -- --ignored --nocapture`.
//! The image is cached in `target/clawpen-test-images` (or
//! `$CLAWPEN_TEST_IMAGES`), shared with the other image tests.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clawpen_vmimage::openclaw::{self, GuestConfig, InferenceConfig};
use clawpen_vmimage::{Arch, ImageStore, FAILED_MARKER, READY_MARKER};

fn cache() -> PathBuf {
    std::env::var_os("CLAWPEN_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/clawpen-test-images"
            ))
        })
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
#[ignore = "minutes: builds a Debian + Node + OpenClaw image and boots it under TCG"]
fn openclaw_guest_boots_to_a_healthy_gateway() {
    build_and_boot(Arch::X86_64);
}

/// The aarch64 image, cross-built on this x86_64 host (its second stage in
/// an arm64 builder VM), booted under `qemu-system-aarch64 -M virt` (TCG).
#[test]
#[ignore = "tens of minutes: cross-builds the arm64 image and boots it under TCG"]
fn openclaw_aarch64_guest_boots_to_a_healthy_gateway() {
    build_and_boot(Arch::Aarch64);
}

fn build_and_boot(arch: Arch) {
    let store = ImageStore::open(cache()).unwrap();
    let start = Instant::now();
    let image = store
        .ensure_openclaw(arch, &|p| {
            eprintln!(
                "[{:>6.1}s] {} {}/{:?}",
                start.elapsed().as_secs_f32(),
                p.step,
                p.done,
                p.total
            )
        })
        .expect("build the OpenClaw guest");
    eprintln!("image ready in {:?}", start.elapsed());
    let m = &image.manifest;
    for (name, version) in [
        ("node", openclaw::NODE_VERSION),
        ("openclaw", openclaw::OPENCLAW_VERSION),
    ] {
        assert!(
            m.software
                .iter()
                .any(|s| s.name == name && s.version == version),
            "{:?}",
            m.software
        );
    }
    assert_eq!(image.ready_marker(), Some(READY_MARKER));

    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("disk.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image.disk())
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(ok.success());
    let config = dir.path().join("guest-config.img");
    let cfg = GuestConfig {
        vm: "oc-test".into(),
        inference: InferenceConfig {
            base_url: "http://10.200.0.1/v1".into(),
            api_key: "test-key".into(),
            model: "test-model".into(),
            context_window: 32768,
            max_tokens: 8192,
            reasoning: false,
            timeout_seconds: clawpen_vmimage::openclaw::DEFAULT_REQUEST_TIMEOUT_SECONDS,
        },
        gateway_port: openclaw::DEFAULT_GATEWAY_PORT,
        gateway_token: Some("test-token".into()),
        shares: vec![],
    };
    std::fs::write(&config, cfg.to_config_disk().unwrap()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    assert_eq!(image.manifest.arch, arch.as_str());
    let boot = Instant::now();
    let mut qemu = Command::new(arch.qemu_system());
    if arch == Arch::Aarch64 {
        qemu.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]);
    }
    let mut qemu = qemu
        .args([
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(image.kernel())
        .arg("-initrd")
        .arg(image.initrd())
        .args(["-append", image.kernel_cmdline()])
        .arg("-drive")
        .arg(format!("file={},if=virtio", overlay.display()))
        // The config disk, as the supervisor attaches it (after the root).
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            config.display()
        ))
        .args(["-netdev"])
        .arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{}",
            openclaw::DEFAULT_GATEWAY_PORT
        ))
        .args(["-device", "virtio-net-pci,netdev=n0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = qemu.stdin.take().unwrap();
    let mut stdout = qemu.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            eprint!("{text}");
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let mut serial = String::new();
    let mut wait_for = |needle: &str, limit: Duration| -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if serial.contains(needle) {
                return true;
            }
            assert!(
                !serial.contains(&format!("{FAILED_MARKER}:")),
                "guest failed"
            );
            if let Ok(t) = rx.recv_timeout(Duration::from_millis(200)) {
                serial.push_str(&t);
            }
        }
        serial.contains(needle)
    };
    let ready = wait_for(READY_MARKER, Duration::from_secs(1500));
    let boot_took = boot.elapsed();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(ready, "no ready marker");
        eprintln!("\nboot to gateway healthy (marker): {boot_took:?}");
        let health = http_get(port, openclaw::HEALTH_PATH).expect("health from the host");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.contains("\"ok\":true"), "{health}");
        // The echoed command line holds `CLI-$((1+1))`, only the output `CLI-2`.
        stdin
            .write_all(b"openclaw --version; echo CLI-$((1+1))\n")
            .unwrap();
        assert!(wait_for("CLI-2", Duration::from_secs(300)));
        assert!(wait_for(openclaw::OPENCLAW_VERSION, Duration::from_secs(5)));
    }));
    let _ = qemu.kill();
    let _ = qemu.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
