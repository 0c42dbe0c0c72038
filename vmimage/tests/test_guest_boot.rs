//! Builds the test guest into the workspace's shared image cache and boots it
//! under QEMU (TCG), driving its serial shell like the supervisor will.
//!
//! Needs the host tools `scripts/host-deps.sh` installs (apt lists, dpkg-deb,
//! mkfs.ext4, qemu-img, qemu-system-x86_64). Both tests use the same cache, so
//! on a cold cache they race to build it and exercise the build lock.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clawpen_vmimage::{
    arch::AGENT_PORT_NAME, initramfs, test_guest, Arch, FileRole, Image, ImageStore, Progress,
    FAILED_MARKER, READY_MARKER, TEST_GUEST,
};

const CACHE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/clawpen-test-images");

fn ensure() -> (Image, Vec<Progress>, Duration) {
    let store = ImageStore::open(CACHE).expect("open store");
    let seen = Mutex::new(Vec::new());
    let start = Instant::now();
    let image = store
        .ensure_test_guest(&|p| seen.lock().unwrap().push(p))
        .expect("build test guest");
    (image, seen.into_inner().unwrap(), start.elapsed())
}

#[test]
fn concurrent_callers_share_one_build() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(ensure);
        let b = s.spawn(ensure);
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("ensure took {:?} and {:?}", a.2, b.2);
    // Same build (same timestamp and hashes), not two.
    assert_eq!(a.0, b.0);
    for (_, progress, _) in [&a, &b] {
        assert_eq!(progress.last().map(|p| p.step.as_str()), Some("done"));
    }

    // Cached now: fast, and nothing rebuilt.
    let (c, progress, took) = ensure();
    assert_eq!(c, a.0);
    assert_eq!(progress.len(), 1, "{progress:?}");
    assert!(took < Duration::from_secs(2), "cached lookup took {took:?}");
    let store = ImageStore::open(CACHE).unwrap();
    assert_eq!(store.get(TEST_GUEST).unwrap(), Some(c));
}

#[test]
fn test_guest_boots_and_runs_commands() {
    let (image, progress, took) = ensure();
    eprintln!(
        "ensure_test_guest: {took:?}, {} progress reports",
        progress.len()
    );
    let m = &image.manifest;
    assert_eq!(m.name, TEST_GUEST);
    assert_eq!(m.arch, "x86_64");
    assert_eq!(m.kernel_cmdline, test_guest::KERNEL_CMDLINE);
    assert!(m.packages.iter().any(|p| p.name == "busybox-static"));
    assert!(m
        .packages
        .iter()
        .any(|p| p.name.starts_with("linux-image-6")));
    assert!(
        m.kernel_modules.contains(&"ext4".to_owned()),
        "{:?}",
        m.kernel_modules
    );
    for role in FileRole::ALL {
        let f = m.file(role).unwrap();
        let path = image.dir.join(&f.file);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), f.size, "{role:?}");
    }

    // The initramfs has what /init needs.
    let listed: Vec<String> = initramfs::list(&image.initrd())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    for needed in ["init", "bin/busybox", "dev/console", "etc/clawpen-modules"] {
        assert!(listed.iter().any(|n| n == needed), "{needed} missing");
    }
    assert!(listed.iter().any(|n| n.ends_with("/ext4.ko")));

    // Boot from an overlay, as VMs do.
    let tmp = tempfile::tempdir().unwrap();
    let overlay = overlay_on(&image, tmp.path());

    let start = Instant::now();
    let mut vm = Qemu::boot(&image, &overlay, &[]);
    let boot = vm.wait_for(READY_MARKER, Duration::from_secs(60));
    eprintln!("spawn → {READY_MARKER}: {:?}", start.elapsed());
    assert!(boot.is_ok(), "guest did not get ready: {}", vm.output);
    vm.wait_for(test_guest::PROMPT, Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no prompt: {}", vm.output));

    vm.send("cat /mnt/etc/clawpen-image; echo hi > /mnt/home/f; sync; cat /mnt/home/f; echo DONE-$((6*7))\n");
    let out = vm
        .wait_for("DONE-42", Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("command did not finish: {}", vm.output));
    assert!(out.contains("test-guest"), "{out}");
    assert!(out.contains("\nhi\r"), "{out}");

    // The shell respawns: exiting it gives a new prompt, not a kernel panic.
    vm.send("exit\n");
    vm.wait_for("starting a new one", Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("shell did not respawn: {}", vm.output));
    vm.wait_for(test_guest::PROMPT, Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no prompt after respawn: {}", vm.output));
    vm.send("echo AGAIN-$((2+3))\n");
    vm.wait_for("AGAIN-5", Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("respawned shell dead: {}", vm.output));
    eprintln!("console transcript:\n{}", vm.output);
    drop(vm);

    // The guest wrote to its overlay, never to the base disk.
    let base = image.manifest.file(FileRole::Disk).unwrap();
    assert_eq!(sha256(&image.disk()), base.sha256);
}

/// The config disk reaches a real guest as a second virtio disk (the root
/// stays `vda`); the guest's init mounts the 9p share from sysfs, has the
/// `virtiofs` file system (the VZ share type) loaded, and through the
/// guest agent (the supervisor's path) `mount-shares` reads the virtio-fs
/// tag the config disk lists and tries it (no such device under this QEMU:
/// no virtiofsd here, so the mount fails and the agent says so), and
/// `umount-shares` unmounts the 9p share.
#[test]
fn the_config_disk_and_share_types_reach_the_guest() {
    let (image, _, _) = ensure();
    let tmp = tempfile::tempdir().unwrap();
    let overlay = overlay_on(&image, tmp.path());
    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from-the-host\n").unwrap();
    let mut config: clawpen_vmimage::GuestConfig = serde_json::from_str(
        r#"{"vm":"demo","inference":{"base_url":"u","api_key":"k","model":"m","context_window":1,"max_tokens":1}}"#,
    )
    .unwrap();
    config.shares = vec![
        clawpen_vmimage::GuestShare {
            tag: "nine".into(),
            fs: clawpen_vmimage::ShareFs::NineP,
        },
        clawpen_vmimage::GuestShare {
            tag: "work".into(),
            fs: clawpen_vmimage::ShareFs::Virtiofs,
        },
    ];
    let disk = tmp.path().join("guest-config.img");
    std::fs::write(&disk, config.to_config_disk().unwrap()).unwrap();
    let agent_sock = tmp.path().join("agent.sock");
    let extra = [
        "-drive".to_owned(),
        format!("file={},if=virtio,format=raw,readonly=on", disk.display()),
        "-virtfs".to_owned(),
        format!(
            "local,path={},mount_tag=nine,security_model=none,id=fs0",
            shared.display()
        ),
        "-chardev".to_owned(),
        format!(
            "socket,id=agent0,path={},server=on,wait=off",
            agent_sock.display()
        ),
        "-serial".to_owned(),
        "chardev:agent0".to_owned(),
    ];
    let mut vm = Qemu::boot(&image, &overlay, &extra);
    assert!(
        vm.wait_for(READY_MARKER, Duration::from_secs(60)).is_ok(),
        "guest did not get ready: {}",
        vm.output
    );
    vm.wait_for(test_guest::PROMPT, Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("no prompt: {}", vm.output));
    // The init mounted the 9p share (its tag from sysfs).
    vm.send("cat /mnt/nine/hello; echo A-$((1+1))\n");
    let out = vm
        .wait_for("A-2", Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no answer: {}", vm.output));
    assert!(out.contains("from-the-host"), "{out}");
    let answers = agent_calls(
        &agent_sock,
        &["mount-shares", "umount-shares"],
        Duration::from_secs(60),
    );
    // The 9p share is already mounted (left alone); the virtio-fs one
    // fails, and the agent says so.
    assert_eq!(
        answers,
        ["error mount-shares", "ok umount-shares"],
        "{}",
        vm.output
    );
    assert!(
        !vm.output.contains("no channels available"),
        "{}",
        vm.output
    );
    vm.send(concat!(
        "cat /mnt/etc/clawpen-image; ",
        "echo \"FS=$(grep -c virtiofs /proc/filesystems) M=$(grep -c ' 9p ' /proc/mounts)\"; ",
        "echo \"CFG=$(head -c 17 /dev/vdb)\"; ls -d /mnt/work; ls /mnt/nine; ",
        "echo DONE-$((6*7))\n"
    ));
    let out = vm
        .wait_for("DONE-42", Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("commands did not finish: {}", vm.output));
    eprintln!("console transcript:\n{}", vm.output);
    // The root disk is still vda (mounted at /mnt), the config disk vdb.
    assert!(out.contains("test-guest"), "{out}");
    assert!(out.contains("CFG=CLAWPEN-CONFIG v1"), "{out}");
    // virtiofs is loaded; the 9p share is unmounted again.
    assert!(out.contains("FS=1 M=0"), "{out}");
    // mount-shares made the virtio-fs tag's mount point: it read the tag
    // from the config disk (the mount itself failed: no device).
    assert!(out.contains("\n/mnt/work\r"), "{out}");
    assert!(!out.contains("\nhello"), "unmounted: {out}");
}

/// Pings the guest agent on `sock` until it answers, then sends each of
/// `cmds` and returns their answer lines.
fn agent_calls(sock: &Path, cmds: &[&str], limit: Duration) -> Vec<String> {
    use std::io::BufRead;
    assert!(agent_ping(sock, limit).is_some(), "no guest agent");
    let stream = std::os::unix::net::UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    cmds.iter()
        .map(|cmd| {
            writer.write_all(format!("{cmd}\n").as_bytes()).unwrap();
            // Skip answers to pings `agent_ping` sent before the first one
            // came back.
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim() != "ok ping" {
                    return line.trim().to_owned();
                }
            }
        })
        .collect()
}

/// The arm64 test guest, built on this (x86_64) host from Debian's arm64
/// packages, boots under `qemu-system-aarch64 -M virt` (TCG) to its ready
/// marker, runs commands on its PL011 console (`ttyAMA0`), and answers the
/// guest agent on the named virtio-serial port.
#[test]
fn aarch64_test_guest_boots_under_tcg() {
    let store = ImageStore::open(CACHE).expect("open store");
    let start = Instant::now();
    let image = store
        .ensure_test_guest_for(Arch::Aarch64, &|_| {})
        .expect("build the aarch64 test guest");
    eprintln!("ensure_test_guest_for(aarch64): {:?}", start.elapsed());
    let m = &image.manifest;
    assert_eq!(m.name, "test-guest-aarch64");
    assert_eq!(m.arch, "aarch64");
    assert_eq!(m.kernel_cmdline, "console=ttyAMA0 panic=-1 quiet");
    assert!(m.kernel_release.ends_with("-arm64"), "{}", m.kernel_release);
    assert!(m.packages.iter().any(|p| p.name.ends_with("-arm64")));
    assert!(m.kernel_modules.contains(&"virtio_console".to_owned()));
    // An uncompressed arm64 `Image` (what Virtualization.framework needs
    // too): "ARM\x64" magic at offset 56.
    let kernel = std::fs::read(image.kernel()).unwrap();
    assert_eq!(&kernel[56..60], b"ARM\x64");
    // The x86 test guest is another image in the same store.
    assert_ne!(
        store.get(TEST_GUEST).ok().flatten().map(|i| i.dir),
        Some(image.dir.clone())
    );

    let tmp = tempfile::tempdir().unwrap();
    let overlay = overlay_on(&image, tmp.path());
    let agent_sock = tmp.path().join("agent.sock");
    let extra = [
        "-device".to_owned(),
        "virtio-serial-pci".to_owned(),
        "-chardev".to_owned(),
        format!(
            "socket,id=agent0,path={},server=on,wait=off",
            agent_sock.display()
        ),
        "-device".to_owned(),
        format!("virtserialport,chardev=agent0,name={AGENT_PORT_NAME}"),
    ];

    let start = Instant::now();
    let mut vm = Qemu::boot(&image, &overlay, &extra);
    let boot = vm.wait_for(READY_MARKER, Duration::from_secs(300));
    eprintln!("aarch64 spawn → {READY_MARKER}: {:?}", start.elapsed());
    assert!(boot.is_ok(), "guest did not get ready: {}", vm.output);
    vm.wait_for(test_guest::PROMPT, Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no prompt: {}", vm.output));
    vm.send("uname -m; cat /mnt/etc/clawpen-image; echo DONE-$((6*7))\n");
    let out = vm
        .wait_for("DONE-42", Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("command did not finish: {}", vm.output));
    assert!(out.contains("aarch64"), "{out}");
    assert!(out.contains("test-guest"), "{out}");

    // The guest agent answers on the virtio port (bytes sent before the
    // guest opened it are lost, so ping until it answers).
    let answer = agent_ping(&agent_sock, Duration::from_secs(60));
    assert_eq!(answer.as_deref(), Some("ok ping"), "{}", vm.output);
    eprintln!("aarch64 console transcript:\n{}", vm.output);
}

/// A qcow2 overlay on the image's base disk in `dir`, as VMs boot from.
fn overlay_on(image: &Image, dir: &Path) -> PathBuf {
    let overlay = dir.join("overlay.qcow2");
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image.disk())
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(status.success(), "qemu-img create failed");
    overlay
}

/// Sends `ping` on the agent socket every second until a line comes back.
fn agent_ping(sock: &Path, limit: Duration) -> Option<String> {
    use std::io::BufRead;
    let deadline = Instant::now() + limit;
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(_) => return None,
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while Instant::now() < deadline {
        writer.write_all(b"ping\n").ok()?;
        let mut line = String::new();
        if reader.read_line(&mut line).is_ok() && !line.trim().is_empty() {
            return Some(line.trim().to_owned());
        }
    }
    None
}

/// A QEMU process whose serial console is its stdin/stdout; killed on drop.
struct Qemu {
    child: Child,
    rx: mpsc::Receiver<Vec<u8>>,
    /// Everything the console printed so far.
    output: String,
    /// How much of `output` earlier waits consumed.
    seen: usize,
}

impl Qemu {
    /// Boots `image` on `overlay` with QEMU for the image's architecture
    /// (`extra` appended: devices a test adds).
    fn boot(image: &Image, overlay: &Path, extra: &[String]) -> Self {
        let arch = Arch::parse(&image.manifest.arch).expect("known arch");
        let mut cmd = Command::new(arch.qemu_system());
        if arch == Arch::Aarch64 {
            // The `virt` machine, a CPU TCG emulates cheaply
            // (`pauth-impdef`), as the builder VM uses.
            cmd.args(["-machine", "virt", "-cpu", "max,pauth-impdef=on"]);
        }
        let mut child = cmd
            .args([
                "-accel",
                "tcg",
                "-m",
                "256",
                "-nographic",
                "-nodefaults",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(image.kernel())
            .arg("-initrd")
            .arg(image.initrd())
            .args(["-append", image.kernel_cmdline()])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
            .args(["-serial", "stdio"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 / qemu-system-aarch64 (run scripts/host-deps.sh)");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Qemu {
            child,
            rx,
            output: String::new(),
            seen: 0,
        }
    }

    /// Waits until `needle` appears after what earlier waits consumed;
    /// returns the text up to and including it. Fails fast if the guest
    /// reports it could not get ready or QEMU exits.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<String, ()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.output[self.seen..].find(needle) {
                let end = self.seen + i + needle.len();
                let text = self.output[self.seen..end].to_owned();
                self.seen = end;
                return Ok(text);
            }
            if self.output.contains(FAILED_MARKER) {
                return Err(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(bytes) => self.output.push_str(&String::from_utf8_lossy(&bytes)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(()),
            }
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
