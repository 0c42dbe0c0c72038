//! `cargo bench -p clawpen-tests --bench egress`: TCP through the egress
//! gateway against QEMU's built-in user networking (`-netdev user`, slirp),
//! same test guest image, same host servers, same run. The guest uploads to a
//! host HTTP sink (`wget --post-file`), downloads from a host HTTP server, and
//! makes many small requests, each on a new connection (one `wget` with many
//! URLs). Rounds alternate between the two VMs, which never run at the same
//! time. Prints a table.
// A bench is test code: a panic is its failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawpen_tests::serial::{log_contains, Serial};
use clawpen_tests::{temp_home, test_images_dir, Up};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ROUNDS: usize = 5;
const UPLOAD_MIB: usize = 32;
const DOWNLOAD_MIB: usize = 32;
const CONNECTS: usize = 200;
const ANSWER: Duration = Duration::from_secs(300);

/// Host servers: an HTTP sink that counts what it gets (and when), and an
/// HTTP server with a blob (`/blob`) and a tiny answer (anything else).
struct Servers {
    sink: u16,
    http: u16,
    /// (bytes, seconds from accept to EOF) per sink connection.
    uploads: Arc<Mutex<Vec<(usize, f64)>>>,
}

async fn servers() -> Servers {
    let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ports = (
        sink.local_addr().unwrap().port(),
        http.local_addr().unwrap().port(),
    );
    let uploads = Arc::new(Mutex::new(Vec::new()));
    let record = uploads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = sink.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = Vec::new();
                let mut body = 0;
                let mut want = None;
                while want.is_none_or(|w| body < w) {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if want.is_some() {
                        body += n;
                        continue;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                        want = Some(
                            head.lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0),
                        );
                        body = got.len() - end - 4;
                    }
                }
                record
                    .lock()
                    .unwrap()
                    .push((body, started.elapsed().as_secs_f64()));
                let _ = s
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    let blob = Arc::new(vec![0x5au8; DOWNLOAD_MIB << 20]);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = http.accept().await {
            let blob = blob.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let body: &[u8] = if buf[..n].starts_with(b"GET /blob ") {
                    &blob
                } else {
                    b"ok\n"
                };
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Servers {
        sink: ports.0,
        http: ports.1,
        uploads,
    }
}

/// `real 0m 1.23s` (busybox `time`) → seconds.
fn real_seconds(out: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("real"))
        .unwrap_or_else(|| panic!("no `real` in {out}"));
    let spec = line.trim_start().trim_start_matches("real").trim();
    let (min, sec) = spec.split_once('m').unwrap_or(("0", spec));
    let min: f64 = min.trim().parse().unwrap_or(0.0);
    let sec: f64 = sec
        .trim()
        .trim_end_matches('s')
        .trim()
        .parse()
        .unwrap_or(f64::NAN);
    min * 60.0 + sec
}

#[derive(Default)]
struct Samples {
    upload: Vec<f64>,
    download: Vec<f64>,
    connect_ms: Vec<f64>,
}

/// One round of measurements in a guest that reaches the host at `host`.
fn measure(serial: &mut Serial, servers: &Servers, host: &str, into: &mut Samples) {
    let before = servers.uploads.lock().unwrap().len();
    // busybox wget posts a file it reads whole (as a string: no NUL bytes).
    serial
        .run(
            &format!(
                "yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde \
                 | head -c {} > /tmp/up && wget -q -O /dev/null --post-file=/tmp/up \
                 http://{host}:{}/ ; rm -f /tmp/up",
                UPLOAD_MIB << 20,
                servers.sink
            ),
            ANSWER,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (bytes, secs) = loop {
        if let Some(u) = servers.uploads.lock().unwrap().get(before) {
            break *u;
        }
        assert!(Instant::now() < deadline, "the sink saw no upload");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(bytes, UPLOAD_MIB << 20, "upload truncated");
    into.upload.push(UPLOAD_MIB as f64 / secs);

    let out = serial
        .run(
            &format!(
                "time wget -q -O /dev/null http://{host}:{}/blob",
                servers.http
            ),
            ANSWER,
        )
        .unwrap();
    into.download.push(DOWNLOAD_MIB as f64 / real_seconds(&out));

    // One wget process fetching many URLs: a new connection and a small
    // request each, without a process start per connection.
    // (The URL list is built in the guest: its shell cuts lines at 1 KiB.)
    let out = serial
        .run(
            &format!(
                "u=http://{host}:{}/small; set --; i=0; \
                 while [ $i -lt {CONNECTS} ]; do set -- \"$@\" $u; i=$((i+1)); done; \
                 time wget -q -O /dev/null \"$@\"",
                servers.http
            ),
            ANSWER,
        )
        .unwrap();
    into.connect_ms
        .push(real_seconds(&out) * 1000.0 / CONNECTS as f64);
}

/// The test guest under QEMU with `-netdev user`, run directly (the
/// supervisor never gives a VM anything but the gateway).
struct SlirpVm {
    dir: tempfile::TempDir,
    child: Child,
}

impl SlirpVm {
    fn start() -> Self {
        let image = test_images_dir().join("test-guest");
        let dir = tempfile::Builder::new()
            .prefix("cps")
            .tempdir_in("/tmp")
            .unwrap();
        let d = |name: &str| dir.path().join(name).display().to_string();
        let status = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(image.join("disk.qcow2"))
            .arg(d("disk.qcow2"))
            .status()
            .unwrap();
        assert!(status.success());
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap();
        let img = |name: &str| image.join(name).display().to_string();
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256",
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-kernel", &img("vmlinuz"), "-initrd", &img("initrd.cpio")])
            .args(["-append", manifest["kernel_cmdline"].as_str().unwrap()])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                d("disk.qcow2")
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=off",
                d("serial.sock"),
                d("serial.log")
            ))
            .args(["-serial", "chardev:serial0"])
            .args(["-netdev", "user,id=net0"])
            .args([
                "-device",
                "virtio-net-pci,netdev=net0,mac=52:54:00:c1:a5:02,romfile=",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let vm = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(180);
        // QEMU logs the console only while a client is connected.
        let mut serial = None;
        while !log_contains(vm.dir.path(), "CLAWPEN_GUEST_READY") {
            assert!(Instant::now() < deadline, "slirp guest did not boot");
            if serial.is_none() {
                serial = Serial::connect(vm.dir.path()).ok();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        vm
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SlirpVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn gateway_vm(home: &Path, servers: &Servers) -> (Up, PathBuf, String) {
    let up = Up::start_with_env(
        home,
        &[],
        &[("CLAWPEN_EGRESS_HOSTS", "sink.test=127.0.0.1")],
    )
    .expect("clawpen up");
    up.wait_state("demo", "Running", Duration::from_secs(180))
        .await
        .unwrap();
    // The rounds use the synthetic address (`Host: 198.18...`, no name): a
    // name's HTTP goes to ports other than 80 only where its rule names them.
    for rule in [
        json!({"action": "allow", "target": "sink.test", "ports": servers.sink}),
        json!({"action": "allow", "target": "sink.test", "ports": servers.http}),
        json!({"action": "allow", "target": "127.0.0.1/32"}),
    ] {
        let (status, body) = up.post("/vms/demo/egress/rules", rule).await.unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let dir = up.vm_dir("demo");
    let mut serial = Serial::connect(&dir).unwrap();
    // Resolve once; the rounds use the synthetic address, as slirp's use
    // 10.0.2.2, so no DNS is timed.
    let out = serial.run("nslookup sink.test", ANSWER).unwrap();
    let host = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(str::trim)
        .find(|a| a.starts_with("198.1"))
        .unwrap_or_else(|| panic!("no synthetic address: {out}"))
        .to_string();
    (up, dir, host)
}

#[tokio::main]
async fn main() {
    std::env::set_var("CLAWPEN_TEST_LOG", "warn");
    let servers = servers().await;
    let home = temp_home();
    let mut gateway = Samples::default();
    let mut slirp = Samples::default();
    let (up, dir, host) = gateway_vm(home.path(), &servers).await;
    for round in 0..ROUNDS {
        eprintln!("round {}/{ROUNDS}: gateway", round + 1);
        if round > 0 {
            let start = up
                .request(reqwest::Method::POST, "/vms/demo/start")
                .send()
                .await
                .unwrap();
            assert!(start.status().is_success());
        }
        up.wait_state("demo", "Running", Duration::from_secs(180))
            .await
            .unwrap();
        let mut serial = Serial::connect(&dir).unwrap();
        measure(&mut serial, &servers, &host, &mut gateway);
        drop(serial);
        let stop = up
            .request(reqwest::Method::POST, "/vms/demo/stop")
            .send()
            .await
            .unwrap();
        assert!(stop.status().is_success());

        eprintln!("round {}/{ROUNDS}: user networking", round + 1);
        let vm = SlirpVm::start();
        let mut serial = Serial::connect(vm.path()).unwrap();
        measure(&mut serial, &servers, "10.0.2.2", &mut slirp);
        drop(serial);
        drop(vm);
    }
    let rows = [
        (
            "upload (guest → host), MiB/s",
            &gateway.upload,
            &slirp.upload,
            true,
        ),
        (
            "download (host → guest), MiB/s",
            &gateway.download,
            &slirp.download,
            true,
        ),
        (
            "request on a new connection, ms",
            &gateway.connect_ms,
            &slirp.connect_ms,
            false,
        ),
    ];
    println!();
    println!(
        "test guest, 1 vCPU, TCG, 256 MiB; {ROUNDS} rounds, each measuring both (ratio per round); \
         upload {UPLOAD_MIB} MiB (wget --post-file), download {DOWNLOAD_MIB} MiB (wget), \
         {CONNECTS} small requests on new connections (one wget)"
    );
    println!(
        "| {:<32} | {:>14} | {:>14} | {:>26} |",
        "metric (median)", "gateway", "-netdev user", "gateway vs user min/med/max"
    );
    println!("|{:-<34}|{:->16}|{:->16}|{:->28}|", "", "", "", "");
    for (metric, g, u, higher_better) in rows {
        // Rounds pair one gateway and one user-networking measurement taken
        // back to back, so the ratio of a round cancels slow drift of the host.
        let mut ratios: Vec<f64> = g
            .iter()
            .zip(u)
            .map(|(g, u)| if higher_better { g / u } else { u / g })
            .collect();
        ratios.sort_by(|a, b| a.total_cmp(b));
        let (min, max) = (ratios[0], ratios[ratios.len() - 1]);
        let ratio = median(&mut ratios);
        let (g, u) = (median(&mut g.clone()), median(&mut u.clone()));
        println!(
            "| {metric:<32} | {g:>14.2} | {u:>14.2} | {:>26} |",
            format!("{min:.2}x / {ratio:.2}x / {max:.2}x")
        );
    }
}
