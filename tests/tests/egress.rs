//! The egress gateway with the real test guest under QEMU TCG: busybox
//! `wget`/`nc`/`nslookup` in the guest against servers this test runs on the
//! host; names are pointed at them with `CLAWPEN_EGRESS_HOSTS`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clawpen_api::{EgressLogEntry, EgressRule, Event, InferenceAccess};
use clawpen_tests::events::EventStream;
use clawpen_tests::serial::Serial;
use clawpen_tests::{clawpen_bin, temp_home, Up};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BOOT: Duration = Duration::from_secs(180);
const ANSWER: Duration = Duration::from_secs(60);
/// What the test servers answer; never typed into the guest, so a match in
/// the serial output is the server's answer and not the command's echo.
const GREETING: &str = "greetings-from-the-host";
const TLS_ACCEPTED: &str = "accepted-by-the-tls-server";
const BLOB_LEN: usize = 10 * 1024 * 1024;

/// A TCP server on the host: HTTP (`/blob` is 10 MiB of random bytes,
/// anything else the greeting), or for raw connections (a ClientHello) the
/// TLS answer. Records the first bytes of every connection.
struct Server {
    addr: SocketAddr,
    blob_md5: String,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Server {
    async fn start(bind: IpAddr) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blob: Arc<Vec<u8>> = Arc::new((0..BLOB_LEN).map(|_| rand_byte()).collect());
        let blob_md5 = md5(&blob);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let blob = blob.clone();
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                    record.lock().unwrap().push(head.clone());
                    if head.first() == Some(&0x16) {
                        let _ = stream.write_all(TLS_ACCEPTED.as_bytes()).await;
                    } else if head.starts_with(b"GET /blob ") {
                        let header =
                            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", blob.len());
                        let _ = stream.write_all(header.as_bytes()).await;
                        let _ = stream.write_all(&blob).await;
                    } else {
                        let body = format!("{GREETING}\n");
                        let header =
                            format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                        let _ = stream.write_all(header.as_bytes()).await;
                        let _ = stream.write_all(body.as_bytes()).await;
                        if head
                            .windows(10)
                            .any(|w| w.eq_ignore_ascii_case(b"keep-alive"))
                        {
                            // Hold the connection open for the client's next
                            // request, recording whatever arrives.
                            while let Ok(Ok(n)) =
                                tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                                    .await
                            {
                                if n == 0 {
                                    break;
                                }
                                record.lock().unwrap().push(buf[..n].to_vec());
                            }
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            blob_md5,
            seen,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

const TFTP_CONTENT: &str = "sent-over-udp-by-tftp";

/// A one-file TFTP server (RFC 1350, read requests only) on the host's
/// loopback that answers from its own port; returns the port.
async fn tftp_server() -> u16 {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
            // RRQ: opcode 1, file name, 0, mode, 0 (options ignored).
            if n > 2 && buf[..2] == [0, 1] {
                let mut data = vec![0, 3, 0, 1];
                data.extend_from_slice(format!("{TFTP_CONTENT}\n").as_bytes());
                let _ = socket.send_to(&data, peer).await;
            }
        }
    });
    port
}

fn rand_byte() -> u8 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9e37_79b9_7f4a_7c15) };
    }
    STATE.with(|s| {
        // xorshift64*: incompressible enough for a transfer test.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
    })
}

fn md5(bytes: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    let out = std::process::Command::new("md5sum")
        .arg(file.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The host's address on its default route (what a guest could try to reach
/// as a literal IP), if it has one.
fn host_ip() -> Option<Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("203.0.113.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// A TLS ClientHello naming `host`, as `printf` octal escapes.
fn client_hello_printf(host: &str) -> String {
    let host = host.as_bytes();
    let mut sni = (3 + host.len() as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 1, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![22, 3, 1];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record.iter().map(|b| format!("\\{b:03o}")).collect()
}

/// A DNS question for `name` (type A) with its 2-byte TCP length prefix, as
/// `printf` octal escapes.
fn dns_tcp_query_printf(name: &str) -> String {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    framed.iter().map(|b| format!("\\{b:03o}")).collect()
}

/// The bytes of `hexdump -C` lines in `out`.
fn hexdump_bytes(out: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in out.lines() {
        let mut parts = line.split_whitespace();
        let Some(offset) = parts.next() else { continue };
        if offset.len() != 8 || !offset.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        for part in parts {
            if part.starts_with('|') {
                break;
            }
            if part.len() == 2 {
                if let Ok(b) = u8::from_str_radix(part, 16) {
                    bytes.push(b);
                }
            }
        }
    }
    bytes
}

async fn add_rule(up: &Up, rule: Value) -> EgressRule {
    let (status, body) = up
        .post("/vms/demo/egress/rules", rule.clone())
        .await
        .unwrap();
    assert_eq!(status, 201, "{rule}: {body}");
    serde_json::from_value(body).unwrap()
}

async fn log(up: &Up) -> Vec<EgressLogEntry> {
    up.get_json("/vms/demo/egress/log?limit=10000")
        .await
        .unwrap()
}

/// Waits for a log entry matching `pred` (entries are written in batches).
async fn wait_log(up: &Up, what: &str, pred: impl Fn(&EgressLogEntry) -> bool) -> EgressLogEntry {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let entries = log(up).await;
        if let Some(e) = entries.iter().rev().find(|e| pred(e)) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no log entry for {what}; log: {entries:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn boot(home: &Path, hosts: &str) -> Up {
    Up::start_with_env(home, &[], &[("CLAWPEN_EGRESS_HOSTS", hosts)]).unwrap()
}

fn cli(home: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(clawpen_bin())
        .args(args)
        .env("CLAWPEN_HOME", home)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_names_connect_everything_else_is_denied_and_logged() {
    let server = Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    let port = server.port();
    let home = temp_home();
    let up = boot(home.path(), "allowed.test=127.0.0.1,later.test=127.0.0.1");
    up.wait_state("demo", "Running", BOOT).await.unwrap();

    // Bad rules: 422 naming the field, nothing stored.
    for (body, field) in [
        (
            json!({"action": "allow", "target": "exa mple.test"}),
            "body.target",
        ),
        (
            json!({"action": "allow", "target": "10.0.0.1/8"}),
            "body.target",
        ),
        (
            json!({"action": "allow", "target": "a.test", "ports": "0"}),
            "body.ports",
        ),
        (
            json!({"action": "allow", "target": "a.test", "ports": "90-80"}),
            "body.ports",
        ),
        (
            json!({"action": "maybe", "target": "a.test"}),
            "body.action",
        ),
        (
            json!({"action": "allow", "target": "a.test", "proto": "icmp"}),
            "body.proto",
        ),
        (
            json!({"action": "allow", "target": "a.test", "extra": 1}),
            "body.extra",
        ),
    ] {
        let (status, answer) = up
            .post("/vms/demo/egress/rules", body.clone())
            .await
            .unwrap();
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], json!(field), "{body}: {answer}");
    }
    let (status, _) = up
        .post(
            "/vms/nosuchvm/egress/rules",
            json!({"action": "allow", "target": "a.test"}),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let rules: Vec<EgressRule> = up.get_json("/vms/demo/egress/rules").await.unwrap();
    assert!(rules.is_empty(), "{rules:?}");

    // The events stream and `egress log --follow` carry every decision.
    let mut events = EventStream::open(&up).await.unwrap();
    let mut follow = std::process::Command::new(clawpen_bin())
        .args(["egress", "log", "demo", "--follow"])
        .env("CLAWPEN_HOME", home.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let followed = {
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stdout = follow.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        rx
    };
    // Give the follower time to subscribe before anything happens.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Default deny: an unlisted name does not even resolve.
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let out = serial.run("nslookup unlisted.test", ANSWER).unwrap();
    assert!(out.contains("NXDOMAIN"), "{out}");
    let denied = wait_log(&up, "unlisted.test", |e| {
        e.name.as_deref() == Some("unlisted.test")
    })
    .await;
    assert_eq!(denied.decision.as_str(), "deny");
    events
        .wait_for("the denial", Duration::from_secs(15), |e| {
            matches!(e, Event::Egress { entry } if entry.name.as_deref() == Some("unlisted.test"))
        })
        .await
        .unwrap();
    // Its backlog first (DHCP and the like), then the live denial.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut printed = Vec::new();
    while !printed.iter().any(|l: &String| l.contains("unlisted.test")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match followed.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(e) => panic!("egress log --follow: {e}; printed {printed:#?}"),
        }
    }
    let line = printed
        .iter()
        .find(|l| l.contains("unlisted.test"))
        .unwrap();
    assert!(line.contains("deny"), "{line}");
    let _ = follow.kill();
    let _ = follow.wait();

    // An allowed name: 10 MiB through the gateway, intact. The test server is
    // on the host's loopback, which a name may only reach through a rule
    // that names it.
    add_rule(&up, json!({"action": "allow", "target": "allowed.test"})).await;
    add_rule(
        &up,
        json!({"action": "allow", "target": "127.0.0.1/32", "ports": port}),
    )
    .await;
    let out = serial
        .run(
            &format!("wget -q -O - http://allowed.test:{port}/blob | md5sum"),
            ANSWER,
        )
        .unwrap();
    assert!(
        out.contains(&server.blob_md5),
        "md5 {} not in {out}",
        server.blob_md5
    );
    let flow = wait_log(&up, "the 10 MiB flow's end", |e| {
        e.name.as_deref() == Some("allowed.test")
            && e.proto.as_str() == "tcp"
            && e.ended_unix_ms.is_some()
    })
    .await;
    assert_eq!(flow.decision.as_str(), "allow");
    assert!(flow.rule.is_some());
    assert_eq!(flow.port, Some(port));
    assert!(flow.bytes_down.unwrap() >= BLOB_LEN as u64, "{flow:?}");
    assert!(flow.bytes_up.unwrap() > 0, "{flow:?}");

    // A rule added while the VM runs applies to the next connection (CLI).
    let fetch_later = format!("wget -q -O - http://later.test:{port}/x");
    let out = serial.run(&fetch_later, ANSWER).unwrap();
    assert!(!out.contains(GREETING), "{out}");
    let added = cli(home.path(), &["egress", "allow", "demo", "later.test"]);
    assert!(added.status.success(), "{added:?}");
    let out = serial.run(&fetch_later, ANSWER).unwrap();
    assert!(out.contains(GREETING), "{out}");
    let listed = cli(home.path(), &["egress", "ls", "demo"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("later.test"),
        "{listed:?}"
    );
    let bad = cli(home.path(), &["egress", "allow", "demo", "not a name"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let printed = cli(home.path(), &["egress", "log", "demo", "--limit", "500"]);
    assert!(
        String::from_utf8_lossy(&printed.stdout).contains("unlisted.test"),
        "{printed:?}"
    );

    // Removing it denies again.
    let rules: Vec<EgressRule> = up.get_json("/vms/demo/egress/rules").await.unwrap();
    let later = rules
        .iter()
        .find(|r| r.target.to_string() == "later.test")
        .unwrap();
    let resp = up
        .request(
            reqwest::Method::DELETE,
            &format!("/vms/demo/egress/rules/{}", later.id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let out = serial.run(&fetch_later, ANSWER).unwrap();
    assert!(!out.contains(GREETING), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn literal_addresses_private_ranges_and_rebinding_need_a_rule_that_names_them() {
    let server = Server::start(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).await;
    let port = server.port();
    let tftp = tftp_server().await;
    let home = temp_home();
    let up = boot(
        home.path(),
        &format!("rebind.test=127.0.0.1,private.test=10.1.2.3,tftp.test=127.0.0.1:{tftp}"),
    );
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let get = |host: &str| format!("timeout 20 wget -q -O - http://{host}:{port}/x");

    // A literal address no CIDR rule allows: refused, logged.
    if let Some(ip) = host_ip() {
        let out = serial.run(&get(&ip.to_string()), ANSWER).unwrap();
        assert!(!out.contains(GREETING), "{out}");
        let e = wait_log(&up, "the literal host address", |e| {
            e.addr.as_deref() == Some(&ip.to_string()) && e.port == Some(port)
        })
        .await;
        assert_eq!(e.decision.as_str(), "deny", "{e:?}");
        // A rule naming exactly it: connects.
        add_rule(
            &up,
            json!({"action": "allow", "target": format!("{ip}/32"), "ports": port}),
        )
        .await;
        let out = serial.run(&get(&ip.to_string()), ANSWER).unwrap();
        assert!(out.contains(GREETING), "{out}");
    }

    // Even "allow everything" does not reach metadata, private ranges, or
    // the host through the gateway's own address.
    add_rule(&up, json!({"action": "allow", "target": "0.0.0.0/0"})).await;
    for target in ["169.254.169.254", "10.1.2.3", "10.200.0.1"] {
        let out = serial.run(&get(target), ANSWER).unwrap();
        assert!(!out.contains(GREETING), "{target}: {out}");
        let e = wait_log(&up, target, |e| {
            e.addr.as_deref() == Some(target) && e.port == Some(port)
        })
        .await;
        assert_eq!(e.decision.as_str(), "deny", "{e:?}");
    }
    let metadata = wait_log(&up, "metadata", |e| {
        e.addr.as_deref() == Some("169.254.169.254")
    })
    .await;
    assert!(metadata.reason.contains("link-local"), "{metadata:?}");

    // Allowed names that resolve to the host's loopback or a private range
    // (DNS rebinding): refused at dial time.
    add_rule(&up, json!({"action": "allow", "target": "rebind.test"})).await;
    add_rule(&up, json!({"action": "allow", "target": "private.test"})).await;
    for (name, kind) in [("rebind.test", "loopback"), ("private.test", "private")] {
        let out = serial.run(&get(name), ANSWER).unwrap();
        assert!(!out.contains(GREETING), "{name}: {out}");
        let e = wait_log(&up, name, |e| {
            e.name.as_deref() == Some(name) && e.proto.as_str() == "tcp"
        })
        .await;
        assert_eq!(e.decision.as_str(), "deny", "{e:?}");
        assert!(e.reason.contains(kind), "{e:?}");
    }
    assert_eq!(server.connections(), usize::from(host_ip().is_some()));

    // Unless a rule names the range.
    add_rule(
        &up,
        json!({"action": "allow", "target": "127.0.0.0/8", "ports": port}),
    )
    .await;
    let out = serial.run(&get("rebind.test"), ANSWER).unwrap();
    assert!(out.contains(GREETING), "{out}");

    // UDP: relayed for a name a UDP rule allows (a TFTP download, answers
    // and all), and logged with its bytes; without the rule, denied.
    let fetch = "rm -f /tmp/t; timeout 20 tftp -g -r hello.txt -l /tmp/t tftp.test 69; cat /tmp/t";
    let out = serial.run(fetch, ANSWER).unwrap();
    assert!(!out.contains(TFTP_CONTENT), "{out}");
    add_rule(
        &up,
        json!({"action": "allow", "target": "tftp.test", "proto": "udp"}),
    )
    .await;
    let out = serial.run(fetch, ANSWER).unwrap();
    assert!(
        !out.contains(TFTP_CONTENT),
        "a name that resolves to loopback needs its range: {out}"
    );
    add_rule(
        &up,
        json!({"action": "allow", "target": "127.0.0.0/8", "proto": "udp"}),
    )
    .await;
    let out = serial.run(fetch, ANSWER).unwrap();
    assert!(out.contains(TFTP_CONTENT), "{out}");
    let relayed = wait_log(&up, "the UDP flow", |e| {
        e.name.as_deref() == Some("tftp.test")
            && e.proto.as_str() == "udp"
            && e.decision.as_str() == "allow"
    })
    .await;
    assert_eq!(relayed.port, Some(69), "{relayed:?}");

    // Into the guest: only through a forward the supervisor opens, on the
    // host's loopback.
    serial
        .run(
            "mkdir -p /tmp/www && echo served-from-the-guest > /tmp/www/index.html \
             && httpd -p 8080 -h /tmp/www && echo httpd-up",
            ANSWER,
        )
        .unwrap();
    let (status, forward) = up
        .post("/vms/demo/forwards", json!({"guest_port": 8080}))
        .await
        .unwrap();
    assert_eq!(status, 201, "{forward}");
    let forward: clawpen_api::ForwardInfo = serde_json::from_value(forward).unwrap();
    assert!(forward.host_addr.starts_with("127.0.0.2:"), "{forward:?}");
    let body = reqwest::get(format!("http://{}/index.html", forward.host_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "served-from-the-guest");
    // The same forward again, and the CLI prints it.
    let out = cli(home.path(), &["vm", "forward", "demo", "8080"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&forward.host_addr),
        "{out:?}"
    );
    // A port nothing listens on: the connection ends without an answer.
    let (_, closed) = up
        .post("/vms/demo/forwards", json!({"guest_port": 8081}))
        .await
        .unwrap();
    let closed: clawpen_api::ForwardInfo = serde_json::from_value(closed).unwrap();
    let refused = reqwest::Client::new()
        .get(format!("http://{}/", closed.host_addr))
        .timeout(Duration::from_secs(20))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let (status, _) = up
        .post("/vms/demo/forwards", json!({"guest_port": 0}))
        .await
        .unwrap();
    assert_eq!(status, 422);
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_host_ipv6_and_dns_over_tcp_are_no_way_around_and_inference_is_reachable() {
    let server = Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    let port = server.port();
    let home = temp_home();
    // Ports 443 and 80 of these names go to the test server.
    let hosts = format!("tls.test=127.0.0.1:{port},web.test=127.0.0.1:{port}");
    // An upstream that is down: generations fail, and are still recorded
    // with the client that asked.
    let up = Up::start_with_env(
        home.path(),
        &["--upstream", "http://127.0.0.1:9/v1", "--model", "m"],
        &[("CLAWPEN_EGRESS_HOSTS", &hosts)],
    )
    .unwrap();
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    for rule in [
        json!({"action": "allow", "target": "tls.test"}),
        json!({"action": "allow", "target": "web.test"}),
        json!({"action": "allow", "target": "127.0.0.1/32"}),
    ] {
        add_rule(&up, rule).await;
    }
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();

    // TLS: a ClientHello for another name on tls.test's address is refused
    // before anything is dialled; the right name gets through.
    serial
        .run(
            &format!(
                "printf '{}' > /tmp/fronted",
                client_hello_printf("other.test")
            ),
            ANSWER,
        )
        .unwrap();
    serial
        .run(
            &format!("printf '{}' > /tmp/hello", client_hello_printf("tls.test")),
            ANSWER,
        )
        .unwrap();
    let out = serial
        .run("nc tls.test 443 < /tmp/fronted", ANSWER)
        .unwrap();
    assert!(!out.contains(TLS_ACCEPTED), "{out}");
    let e = wait_log(&up, "fronted TLS", |e| {
        e.name.as_deref() == Some("tls.test") && e.decision.as_str() == "deny"
    })
    .await;
    assert!(e.reason.contains("other.test"), "{e:?}");
    assert_eq!(
        server.connections(),
        0,
        "a fronted connection reached the server"
    );
    let out = serial.run("nc tls.test 443 < /tmp/hello", ANSWER).unwrap();
    assert!(out.contains(TLS_ACCEPTED), "{out}");

    // HTTP: the Host header must be the name too.
    let out = serial
        .run(
            "timeout 20 wget -q -O - --header 'Host: other.test' http://web.test/x",
            ANSWER,
        )
        .unwrap();
    assert!(!out.contains(GREETING), "{out}");
    wait_log(&up, "fronted HTTP", |e| {
        e.name.as_deref() == Some("web.test") && e.reason.contains("HTTP Host")
    })
    .await;
    let out = serial
        .run("timeout 20 wget -q -O - http://web.test/x", ANSWER)
        .unwrap();
    assert!(out.contains(GREETING), "{out}");
    // Keep-alive: a later request on an allowed connection is checked too.
    let out = serial
        .run(
            "(printf 'GET /x HTTP/1.1\\r\\nHost: web.test\\r\\nConnection: keep-alive\\r\\n\\r\\n'; sleep 2; \
              printf 'GET /y HTTP/1.1\\r\\nHost: second.test\\r\\n\\r\\n'; sleep 2) \
             | timeout 20 nc web.test 80",
            ANSWER,
        )
        .unwrap();
    assert!(
        out.contains(GREETING),
        "the first request is answered: {out}"
    );
    let cut = wait_log(&up, "second request on a keep-alive connection", |e| {
        e.name.as_deref() == Some("web.test") && e.reason.contains("second.test")
    })
    .await;
    assert_eq!(cut.decision.as_str(), "deny", "{cut:?}");
    assert!(
        !server
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.windows(11).any(|w| w == b"second.test")),
        "the second request reached the server"
    );

    // DNS over TCP: the same answers as over UDP (same synthetic address,
    // NXDOMAIN for what is not allowed).
    let udp = serial.run("nslookup tls.test", ANSWER).unwrap();
    let synthetic = udp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(str::trim)
        .find(|a| a.starts_with("198.18.") || a.starts_with("198.19."))
        .unwrap_or_else(|| panic!("no synthetic address in {udp}"))
        .to_string();
    for (name, allowed) in [("tls.test", true), ("denied.test", false)] {
        let out = serial
            .run(
                &format!(
                    "printf '{}' | nc -w 3 10.200.0.1 53 | hexdump -C",
                    dns_tcp_query_printf(name)
                ),
                ANSWER,
            )
            .unwrap();
        let reply = hexdump_bytes(&out);
        assert!(reply.len() > 14, "{name}: {out}");
        let rcode = reply[5] & 0x0f;
        if allowed {
            assert_eq!(rcode, 0, "{out}");
            let ip = &reply[reply.len() - 4..];
            assert_eq!(
                format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]),
                synthetic,
                "{out}"
            );
        } else {
            assert_eq!(rcode, 3, "NXDOMAIN expected: {out}");
        }
    }
    // AAAA: allowed names have no IPv6 address.
    let out = serial.run("nslookup -type=AAAA tls.test", ANSWER).unwrap();
    assert!(
        !out.contains("has AAAA") && !out.contains("Address: 2"),
        "{out}"
    );

    // IPv6: the guest may configure it, but every frame is dropped and logged.
    let six = serial
        .exit_status(
            "ip -6 addr add 2001:db8::2/64 dev eth0; \
             ip -6 route add default via 2001:db8::1 dev eth0; sleep 2; \
             nc -w 3 2001:db8::1 80 < /dev/null",
            ANSWER,
        )
        .unwrap();
    assert_eq!(six, 1, "nc over IPv6 connected");
    // The neighbour solicitation for the "router", or the SYN itself.
    let six = wait_log(&up, "IPv6 towards 2001:db8::1", |e| {
        e.proto.as_str() == "ipv6"
            && matches!(e.addr.as_deref(), Some("2001:db8::1" | "ff02::1:ff00:1"))
    })
    .await;
    assert_eq!(six.decision.as_str(), "deny");

    // The inference service, at the gateway's fixed address and name.
    for url in [
        "http://10.200.0.1/healthz",
        "http://inference.clawpen.internal/healthz",
    ] {
        let out = serial
            .run(&format!("timeout 20 wget -q -O - {url}"), ANSWER)
            .unwrap();
        assert!(out.contains("\"status\":\"ok\""), "{url}: {out}");
    }
    let inference = wait_log(&up, "inference", |e| {
        e.name.as_deref() == Some("inference.clawpen.internal") && e.proto.as_str() == "tcp"
    })
    .await;
    assert_eq!(inference.decision.as_str(), "allow");

    // The API needs this VM's own key, and what it asks is attributed to it.
    let access: InferenceAccess = up.get_json("/vms/demo/inference").await.unwrap();
    assert_eq!(access.base_url, "http://10.200.0.1/v1");
    let base = &access.base_url;
    for (what, header) in [
        ("no key", ""),
        (
            "a wrong key",
            "--header 'Authorization: Bearer sk-clawpen-wrong'",
        ),
    ] {
        let status = serial
            .exit_status(
                &format!("timeout 20 wget -q -O - {header} {base}/models"),
                ANSWER,
            )
            .unwrap();
        assert_eq!(status, 1, "the models list answered with {what}");
    }
    let auth = format!("--header 'Authorization: Bearer {}'", access.api_key);
    let out = serial
        .run(
            &format!("timeout 20 wget -q -O - {auth} {base}/models"),
            ANSWER,
        )
        .unwrap();
    assert!(out.contains("\"object\":\"list\""), "{out}");
    let mut events = EventStream::open(&up).await.unwrap();
    let body = r#"{"model":"m","prompt_cache_key":"guest-session","messages":[{"role":"user","content":"hi"}]}"#;
    serial
        .run(
            &format!(
                "timeout 30 wget -q -O - {auth} --header 'Content-Type: application/json' \
                 --post-data '{body}' {base}/chat/completions"
            ),
            ANSWER,
        )
        .unwrap();
    let event = events
        .wait_for(
            "the guest's request",
            ANSWER,
            |e| matches!(e, Event::Inference(r) if r.session.as_deref() == Some("guest-session")),
        )
        .await
        .unwrap();
    let Event::Inference(record) = event else {
        unreachable!()
    };
    assert_eq!(record.client, "demo");
}

/// Counts the connections (TCP) or datagrams (UDP) a listener on the host
/// receives; `None` when the port cannot be bound here.
async fn count_tcp(ip: Ipv4Addr, port: u16) -> Option<Arc<std::sync::atomic::AtomicUsize>> {
    let listener = TcpListener::bind((ip, port)).await.ok()?;
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    Some(count)
}

async fn count_udp(ip: Ipv4Addr, port: u16) -> Option<Arc<std::sync::atomic::AtomicUsize>> {
    let socket = tokio::net::UdpSocket::bind((ip, port)).await.ok()?;
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while socket.recv_from(&mut buf).await.is_ok() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    Some(count)
}

/// The ways out that need no name, with a name for the host's address
/// allowed: another resolver (UDP and TCP 53), DNS over TLS (853) and over
/// HTTPS (TLS to 443) at the literal address, ICMP, and IP fragments.
/// Listeners on the host's address receive nothing, and each attempt has
/// its deny line with its reason.
#[tokio::test(flavor = "multi_thread")]
async fn other_resolvers_encrypted_dns_icmp_and_fragments_get_nothing_out() {
    let Some(ip) = host_ip() else {
        eprintln!("skipped: this host has no address on a default route");
        return;
    };
    let mut listeners = Vec::new();
    for (what, port, udp) in [
        ("udp 53", 53, true),
        ("tcp 53", 53, false),
        ("tcp 853", 853, false),
        ("tcp 443", 443, false),
    ] {
        let count = if udp {
            count_udp(ip, port).await
        } else {
            count_tcp(ip, port).await
        };
        match count {
            Some(count) => listeners.push((what, count)),
            None => eprintln!("{what} is taken on {ip}: nothing listens there for this test"),
        }
    }
    let home = temp_home();
    let up = boot(home.path(), &format!("dns.test={ip}"));
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    add_rule(&up, json!({"action": "allow", "target": "dns.test"})).await;
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let denied = |proto: &'static str, port: Option<u16>| {
        let addr = ip.to_string();
        move |e: &EgressLogEntry| {
            e.proto.as_str() == proto
                && e.addr.as_deref() == Some(addr.as_str())
                && e.port == port
                && e.decision.as_str() == "deny"
        }
    };

    // Another resolver, over UDP and TCP.
    let out = serial
        .run(&format!("timeout 10 nslookup dns.test {ip}"), ANSWER)
        .unwrap();
    assert!(!out.contains(&format!("Address: {ip}")), "{out}");
    wait_log(&up, "DNS to another resolver", denied("udp", Some(53))).await;
    let query = dns_tcp_query_printf("dns.test");
    serial
        .run(
            &format!("printf '{query}' | nc -w 3 {ip} 53 | hexdump -C"),
            ANSWER,
        )
        .unwrap();
    wait_log(
        &up,
        "DNS over TCP to another resolver",
        denied("tcp", Some(53)),
    )
    .await;

    // DNS over TLS and over HTTPS at the literal address (a ClientHello
    // naming the allowed name does not make the address allowed).
    let hello = client_hello_printf("dns.test");
    for port in [853, 443] {
        let out = serial
            .run(
                &format!("printf '{hello}' | nc -w 3 {ip} {port}; echo done-{port}"),
                ANSWER,
            )
            .unwrap();
        assert!(!out.contains(TLS_ACCEPTED), "{out}");
        wait_log(&up, "TLS to the literal address", denied("tcp", Some(port))).await;
    }

    // ICMP: answered by the gateway only.
    let out = serial
        .run(&format!("ping -c 1 -W 3 {ip}; echo pinged"), ANSWER)
        .unwrap();
    assert!(out.contains("0 packets received"), "{out}");
    let icmp = wait_log(&up, "ICMP to the host", denied("icmp", None)).await;
    assert!(icmp.reason.contains("ICMP"), "{icmp:?}");

    // A datagram larger than the link's MTU (65,520, from DHCP) goes in
    // fragments: dropped, never reassembled.
    serial
        .run(
            &format!("ping -c 1 -W 3 -s 65500 {ip}; echo pinged"),
            ANSWER,
        )
        .unwrap();
    let fragments = wait_log(&up, "IP fragments", denied("ip", None)).await;
    assert!(fragments.reason.contains("fragments"), "{fragments:?}");

    for (what, count) in &listeners {
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the host's {what} listener was reached"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_network_survives_warm_reset_and_supervisor_restart() {
    let server = Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    let port = server.port();
    let home = temp_home();
    let hosts = "allowed.test=127.0.0.1";
    let mut up = boot(home.path(), hosts);
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    // The rule names the port: the fetch by synthetic address below sends
    // `Host: 198.18...`, which is no name, so on a port the rule does not
    // name the gateway would refuse it (only TLS or HTTP naming the name
    // goes there).
    add_rule(
        &up,
        json!({"action": "allow", "target": "allowed.test", "ports": port}),
    )
    .await;
    add_rule(
        &up,
        json!({"action": "allow", "target": "127.0.0.1/32", "ports": port}),
    )
    .await;
    let fetch = format!("timeout 20 wget -q -O - http://allowed.test:{port}/x");

    // A warm reset (loadvm in the same VMM): new connections work.
    let (status, body) = up.post("/vms/demo/reset", json!({})).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let out = serial.run(&fetch, ANSWER).unwrap();
    assert!(out.contains(GREETING), "after warm reset: {out}");
    let udp = serial.run("nslookup allowed.test", ANSWER).unwrap();
    let synthetic = udp
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Address:"))
        .map(str::trim)
        .find(|a| a.starts_with("198.1"))
        .unwrap_or_else(|| panic!("no synthetic address in {udp}"))
        .to_string();
    drop(serial);

    // The supervisor dies; the next one re-adopts the VMM and its gateway
    // connects again. An address the guest resolved before still works.
    up.kill9();
    let up = boot(home.path(), hosts);
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = serial
            .run(
                &format!("timeout 20 wget -q -O - http://{synthetic}:{port}/x"),
                ANSWER,
            )
            .unwrap();
        if out.contains(GREETING) {
            break;
        }
        assert!(Instant::now() < deadline, "after restart: {out}");
    }
}

/// A host server that accepts connections and never reads from them:
/// whatever a guest sends piles up on the way. Counts what it accepted.
async fn sink() -> (u16, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    // A small receive buffer, so what the guest sends backs up into the
    // gateway after a few KiB instead of megabytes of the host's kernel.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let hold = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            hold.lock().unwrap().push(stream);
        }
    });
    (port, held)
}

/// The resident memory of process `pid`, in bytes (`None` once it is gone).
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// How much a guest's floods may grow the supervisor's resident memory.
/// Every queue on their way is bounded: a connection the guest fills holds
/// its 256 KiB socket buffer and two chunks of at most 64 KiB (at most
/// `MAX_FLOWS` = 256 connections: 96 MiB), the DNS outbox 16 KiB, the log
/// queue 16 Ki lines; the rest is allocator slack. (With eight chunks
/// queued per flow, as before, the same flood grew it by 155 MiB.)
const FLOOD_RSS_BOUND: u64 = 128 << 20;

/// A hostile guest floods every queue it can reach at once: 300 connections
/// pushing bytes into a host server that never reads, DNS over TCP from a
/// client that never reads its answers, and a DNS-over-TCP stream of
/// thousands of questions, each a log line. The supervisor's memory stays
/// under [`FLOOD_RSS_BOUND`], connections past the limit are refused and
/// logged, the log says how many lines it suppressed, the API answers
/// throughout, and once the floods stop the guest connects again.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_guest_leaves_the_supervisor_bounded_and_serving() {
    let (port, held) = sink().await;
    let home = temp_home();
    let up = boot(home.path(), &format!("sink.test=127.0.0.1:{port}"));
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    add_rule(
        &up,
        json!({"action": "allow", "target": "sink.test", "ports": port}),
    )
    .await;
    // The name resolves to loopback on the host, which needs its own rule
    // (the port is the sink's: the rules see the port the guest dials).
    add_rule(
        &up,
        json!({"action": "allow", "target": "127.0.0.1/32", "ports": port}),
    )
    .await;
    let pid = up.pid().unwrap();
    let before = rss(pid).expect("the supervisor's VmRSS");
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(now) = rss(pid) {
                    peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let mut serial = Serial::connect(&up.vm_dir("demo")).unwrap();
    // 2^14 framed questions for one name (half a megabyte), built by doubling.
    serial
        .run(
            &format!(
                "printf '{}' > /tmp/q; for i in $(seq 14); do cat /tmp/q /tmp/q > /tmp/q2; mv /tmp/q2 /tmp/q; done",
                dns_tcp_query_printf("flood.test")
            ),
            ANSWER,
        )
        .unwrap();
    // DNS first (its connections count towards the VM's limit too): one
    // client that never reads its answers, one that reads them all.
    serial
        .run(
            "nc 10.200.0.1 53 < /tmp/q 2>/dev/null | sleep 600 & \
             timeout 120 nc -w 3 10.200.0.1 53 < /tmp/q > /dev/null 2>&1",
            Duration::from_secs(150),
        )
        .unwrap();
    serial
        .run(
            &format!(
                "for i in $(seq 300); do nc sink.test {port} < /dev/zero > /dev/null 2>/tmp/nc.err & done; sleep 1"
            ),
            // The guest's shell competes with 300 busy senders.
            Duration::from_secs(300),
        )
        .unwrap();
    // Let the connections fill every buffer on their way (until the
    // supervisor's memory stops growing), asking the API meanwhile.
    let flooding = Instant::now();
    let (mut last_peak, mut last_growth) = (0, Instant::now());
    while flooding.elapsed() < Duration::from_secs(120)
        && last_growth.elapsed() < Duration::from_secs(15)
    {
        let now_peak = peak.load(std::sync::atomic::Ordering::Relaxed);
        if now_peak > last_peak + (1 << 20) {
            (last_peak, last_growth) = (now_peak, Instant::now());
        }
        let started = Instant::now();
        up.vm("demo").await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the API took {:?} during the flood",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let accepted = held.lock().unwrap().len();
    if accepted == 0 {
        let entries = log(&up).await;
        let tail: Vec<_> = entries.iter().rev().take(8).collect();
        eprintln!("log tail: {tail:#?}");
        let ps = serial.run("cat /tmp/nc.err; ps | wc -l", Duration::from_secs(180));
        panic!("nothing reached the sink; guest: {ps:?}");
    }
    assert!(
        accepted > 0 && accepted <= 256,
        "{accepted} connections reached the sink"
    );
    wait_log(&up, "the refused 257th connection", |e| {
        e.reason.contains("too many open connections")
    })
    .await;
    wait_log(&up, "the suppressed DNS lines", |e| {
        e.reason.contains("more log lines suppressed")
    })
    .await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let grown = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    eprintln!(
        "flood: supervisor RSS {} MiB before, peak +{} MiB; {accepted} connections held; \
         filled in {:?}",
        before >> 20,
        grown >> 20,
        flooding.elapsed()
    );
    assert!(
        grown < FLOOD_RSS_BOUND,
        "the supervisor grew by {} MiB under the flood (bound {} MiB)",
        grown >> 20,
        FLOOD_RSS_BOUND >> 20
    );

    // The floods end; the guest's next connection goes through.
    serial
        .run("killall nc sleep 2>/dev/null; sleep 2", ANSWER)
        .unwrap();
    held.lock().unwrap().clear();
    let out = serial
        .run(
            &format!("echo again | timeout 5 nc sink.test {port}; echo done"),
            ANSWER,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no connection after the flood: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How much a UDP flood at a stalled guest may grow the supervisor: the
/// relay's event queue (256 datagrams), the socket's receive buffer and the
/// frames of one gateway round. Unbounded, the flood below (240 MB) would
/// all be held.
const UDP_FLOOD_RSS_BOUND: u64 = 64 << 20;

/// Datagrams (of [`UDP_FLOOD_BYTES`]) the host answers one datagram with.
const UDP_FLOOD_DATAGRAMS: usize = 200_000;
const UDP_FLOOD_BYTES: usize = 1200;

/// A UDP server on the host's loopback that, once the test says so, answers
/// the first datagram it got with [`UDP_FLOOD_DATAGRAMS`] datagrams. Returns
/// its port, a receiver that fires when the first datagram arrived, the
/// trigger, and a receiver of how many datagrams it sent.
async fn udp_flooder() -> (
    u16,
    tokio::sync::oneshot::Receiver<()>,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<usize>,
) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let (sent_tx, sent) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let Ok((_, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let _ = asked_tx.send(());
        if go_rx.await.is_err() {
            return;
        }
        let datagram = vec![0x5a; UDP_FLOOD_BYTES];
        let mut count = 0;
        for _ in 0..UDP_FLOOD_DATAGRAMS {
            if socket.send_to(&datagram, peer).await.is_ok() {
                count += 1;
            }
        }
        let _ = sent_tx.send(count);
    });
    (port, asked, go, sent)
}

/// H8 in a real guest, beside a second VM: a host UDP server answers one
/// datagram of the guest's with 240 MB while the guest is frozen (its QEMU
/// stopped with SIGSTOP, so it takes no frames). The supervisor drops what
/// the guest cannot take and its memory stays under
/// [`UDP_FLOOD_RSS_BOUND`]; meanwhile the other VM fetches from the host and
/// its log gets its lines; thawed, the flooded guest is on the network again.
#[tokio::test(flavor = "multi_thread")]
async fn a_udp_flood_at_a_stalled_guest_is_dropped_while_another_vm_carries_on() {
    let server = Server::start(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
    let web = server.port();
    let (flood, asked, go, sent) = udp_flooder().await;
    let home = temp_home();
    let up = boot(home.path(), "flood.test=127.0.0.1,web.test=127.0.0.1");
    up.wait_state("demo", "Running", BOOT).await.unwrap();
    for target in ["flood.test", "127.0.0.1/32"] {
        add_rule(
            &up,
            json!({"action": "allow", "target": target, "proto": "udp", "ports": flood}),
        )
        .await;
    }
    let (status, body) = up
        .post(
            "/vms",
            json!({"name": "other", "image": "test-guest", "memory_mib": 256}),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    for target in ["web.test", "127.0.0.1/32"] {
        let rule = json!({"action": "allow", "target": target, "ports": web});
        let (status, body) = up
            .post("/vms/other/egress/rules", rule.clone())
            .await
            .unwrap();
        assert_eq!(status, 201, "{rule}: {body}");
    }
    let (status, body) = up.post("/vms/other/start", json!({})).await.unwrap();
    assert!(status.is_success(), "{status} {body}");
    up.wait_state("other", "Running", BOOT).await.unwrap();
    let mut other = Serial::connect(&up.vm_dir("other")).unwrap();
    let fetch = format!("timeout 20 wget -q -O - http://web.test:{web}/x");
    let out = other.run(&fetch, ANSWER).unwrap();
    assert!(out.contains(GREETING), "before the flood: {out}");

    // The flooded guest asks once (TFTP's read request is one datagram).
    let mut demo = Serial::connect(&up.vm_dir("demo")).unwrap();
    demo.run(
        &format!("(timeout 3 tftp -g -r x -l /tmp/x flood.test {flood}; true)"),
        ANSWER,
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), asked)
        .await
        .expect("the guest's datagram reached the host")
        .unwrap();

    let qemu = up.vm("demo").await.unwrap().pid.expect("demo's VMM pid");
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &qemu.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {qemu}");
    };
    let pid = up.pid().unwrap();
    let before = rss(pid).expect("the supervisor's VmRSS");
    signal("-STOP");
    go.send(()).unwrap();
    let flooding = Instant::now();
    let mut peak = before;
    let mut sent = sent;
    let count = loop {
        if let Some(now) = rss(pid) {
            peak = peak.max(now);
        }
        match sent.try_recv() {
            Ok(count) => break count,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
            Err(e) => panic!("the flooder ended: {e}"),
        }
        assert!(
            flooding.elapsed() < Duration::from_secs(180),
            "the flood did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The other VM goes on while the flood drains; so does its log.
    let out = other.run(&fetch, ANSWER).unwrap();
    assert!(out.contains(GREETING), "during the flood: {out}");
    for _ in 0..20 {
        if let Some(now) = rss(pid) {
            peak = peak.max(now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "UDP flood: {count} datagrams of {UDP_FLOOD_BYTES} B sent in {:?}; supervisor RSS {} MiB \
         before, peak +{} KiB",
        flooding.elapsed(),
        before >> 20,
        grown >> 10
    );
    assert_eq!(count, UDP_FLOOD_DATAGRAMS, "the flood was sent whole");
    assert!(
        grown < UDP_FLOOD_RSS_BOUND,
        "the supervisor grew by {} MiB under the flood (bound {} MiB)",
        grown >> 20,
        UDP_FLOOD_RSS_BOUND >> 20
    );
    let other_log: Vec<EgressLogEntry> = up
        .get_json("/vms/other/egress/log?limit=10000")
        .await
        .unwrap();
    let fetched = other_log
        .iter()
        .filter(|e| e.name.as_deref() == Some("web.test") && e.decision.as_str() == "allow")
        .count();
    assert!(fetched >= 2, "the other VM's log: {other_log:#?}");

    // Thawed, the flooded guest answers and resolves names again.
    signal("-CONT");
    let out = demo
        .run("nslookup flood.test 10.200.0.1 && echo resolved", ANSWER)
        .unwrap();
    assert!(out.contains("resolved"), "after the flood: {out}");
    assert_eq!(up.vm("demo").await.unwrap().state.label(), "Running");
}
