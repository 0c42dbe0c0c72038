//! `clawpen up --tls`: the console over HTTPS with a self-signed certificate
//! whose fingerprint `up` prints; a real TLS client (curl) that trusts only
//! that certificate logs in, one that trusts nothing refuses it, and the CLI
//! keeps working; the session cookie login sets is `Secure`. Serving beyond
//! loopback without TLS is refused, and so is serving the console where
//! forwards into guests listen.

use std::process::Command;

use clawpen_tests::{clawpen_bin, temp_home, Up};

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn console_over_https_with_the_printed_fingerprint() {
    let home = temp_home();
    let up = Up::start(home.path(), &["--tls", "--no-demo"]).unwrap();
    assert!(up.url.starts_with("https://127.0.0.1:"), "{}", up.url);
    let cert = home.path().join("tls/cert.pem");
    let cert = cert.to_str().unwrap();

    // The fingerprint printed is the certificate's own.
    let printed = up
        .startup
        .iter()
        .find_map(|l| {
            l.split_once("SHA-256 ")
                .map(|(_, f)| f.trim_end_matches(')'))
        })
        .unwrap_or_else(|| panic!("no fingerprint printed: {:#?}", up.startup))
        .to_string();
    let openssl = Command::new("openssl")
        .args(["x509", "-in", cert, "-noout", "-fingerprint", "-sha256"])
        .output()
        .expect("openssl runs");
    let actual = String::from_utf8_lossy(&openssl.stdout);
    assert!(actual.trim().ends_with(&printed), "{actual} vs {printed}");

    // Trusting exactly that certificate: logged in (the cookie is set).
    let login = up.login_url();
    let out = curl(&["--cacert", cert, "-D", "-", "-o", "/dev/null", &login]);
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(out.status.success(), "{out:?}");
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie set: {head}"));
    // a session of its own, never the token, and never sent over plain HTTP
    assert!(cookie.contains("clawpen_session="), "{cookie}");
    assert!(!cookie.contains(&up.token.to_lowercase()), "{cookie}");
    for attribute in ["; httponly", "; samesite=strict", "; secure"] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    let api = format!("{}/api/v1/vms", up.url);
    let auth = format!("Authorization: Bearer {}", up.token);
    let out = curl(&["--cacert", cert, "-H", &auth, &api]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    // No token over TLS: still refused.
    let out = curl(&[
        "--cacert",
        cert,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &api,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    // Trusting nothing: the self-signed certificate is refused.
    let out = curl(&["-o", "/dev/null", &api]);
    assert_eq!(out.status.code(), Some(60), "{out:?}");

    // The CLI still finds the supervisor.
    let out = Command::new(clawpen_bin())
        .args(["vm", "ls"])
        .env("CLAWPEN_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `clawpen up --listen ADDR` exits with the bad-input code (2), saying `says`.
fn up_refuses_to_listen_on(addr: &str, says: &str) {
    let home = temp_home();
    let out = Command::new(clawpen_bin())
        .args(["up", "--listen", addr, "--no-demo"])
        .env("CLAWPEN_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(says),
        "{out:?}"
    );
}

#[test]
fn beyond_loopback_without_tls_is_refused() {
    up_refuses_to_listen_on("0.0.0.0:0", "--tls");
}

#[test]
fn the_console_is_not_served_where_forwards_listen() {
    up_refuses_to_listen_on("127.0.0.2:0", "forwards into guests");
}
