//! The HTTP API refuses what it should, clearly, and a bad call changes nothing.

use clawpen_api::ErrorBody;
use clawpen_tests::{temp_home, vmm_pids, Up};
use reqwest::{Method, StatusCode};

#[tokio::test(flavor = "multi_thread")]
async fn bad_calls_get_clear_errors_and_change_nothing() {
    let home = temp_home();
    // --no-start: `demo` exists (Created) but nothing boots, so any VMM or disk
    // that appears was caused by a call that should have been refused.
    let up = Up::start(home.path(), &["--no-start"]).unwrap();
    let before = up.vm("demo").await.unwrap();
    assert_eq!(before.state.label(), "Created");
    let http = reqwest::Client::new();

    // No token: 401 everywhere but the login page.
    for path in [
        "/api/v1/vms",
        "/api/v1/vms/demo",
        "/api/v1/events",
        "/",
        "/pkg/x.js",
    ] {
        let resp = http.get(format!("{}{path}", up.url)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let resp = http
        .post(up.api("/vms/demo/reset"))
        .bearer_auth("0".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.code, "unauthorized");

    // Wrong login token: no cookie.
    let resp = http
        .get(format!("{}/login?token=nope", up.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("set-cookie").is_none());

    // The right one: a session cookie (not the token, no `Secure` on plain
    // loopback HTTP) that opens the API as a cookie; the token itself is no
    // cookie, and a made-up session is refused.
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirect.get(up.login_url()).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    let pair = cookie.split(';').next().unwrap().to_string();
    assert!(pair.starts_with("clawpen_session="), "{cookie}");
    assert!(!cookie.contains(&up.token), "{cookie}");
    assert!(!cookie.to_lowercase().contains("secure"), "{cookie}");
    for (cookie, status) in [
        (pair.clone(), StatusCode::OK),
        (
            format!("clawpen_session={}", up.token),
            StatusCode::UNAUTHORIZED,
        ),
        (
            format!("clawpen_token={}", up.token),
            StatusCode::UNAUTHORIZED,
        ),
        ("clawpen_session=0123".to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let resp = http
            .get(up.api("/vms"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{cookie}");
    }

    // A state change from another origin (another local web page using the
    // browser's cookie) is refused; the same origin and the CLI (no Origin)
    // are not.
    let resp = up
        .request(Method::POST, "/vms/demo/stop")
        .header("origin", "http://localhost:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.code, "cross_origin");
    let own = up.url.clone();
    let resp = up
        .request(Method::POST, "/vms/demo/stop")
        .header("origin", own)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::CONFLICT,
        "same origin passes to the handler"
    );

    // Missing VM: 404 naming the field.
    let resp = up
        .request(Method::POST, "/vms/nope/reset")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: ErrorBody = resp.json().await.unwrap();
    assert_eq!(body.error.code, "not_found");
    assert!(body.error.message.contains("nope"));

    // Bad names: 422.
    for bad in ["..%2Fx", "UPPER", &"a".repeat(300)] {
        let resp = up
            .request(Method::POST, &format!("/vms/{bad}/start"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let body: ErrorBody = resp.json().await.unwrap();
        assert_eq!(body.error.field.as_deref(), Some("name"));
    }

    // Bad bodies: 422 saying where.
    for (body, field) in [
        (r#"{"cold": "yes"}"#, "body.cold"),
        (r#"{"warp": true}"#, "body.warp"),
        ("{not json", "body"),
    ] {
        let resp = up
            .request(Method::POST, "/vms/demo/reset")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let err: ErrorBody = resp.json().await.unwrap();
        assert_eq!(err.error.code, "invalid_body", "{body}");
        assert_eq!(err.error.field.as_deref(), Some(field), "{body}: {err:?}");
    }

    // Stop of a VM that is not running: 409 with the state.
    let resp = up
        .request(Method::POST, "/vms/demo/stop")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    // Unknown API route: JSON 404.
    let resp = up.request(Method::GET, "/nothing").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let _: ErrorBody = resp.json().await.unwrap();

    // Nothing changed: same state, no VMM, no disk made.
    let after = up.vm("demo").await.unwrap();
    assert_eq!(after, before);
    assert!(vmm_pids(home.path()).is_empty());
    assert!(!up.vm_dir("demo").join("disk.qcow2").exists());

    // The CLI maps a 4xx to exit code 2 with one line.
    let out = std::process::Command::new(clawpen_tests::clawpen_bin())
        .args(["vm", "stop", "nope"])
        .env("CLAWPEN_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");

    // And `vm ls` works against the same supervisor.
    let out = std::process::Command::new(clawpen_tests::clawpen_bin())
        .args(["vm", "ls"])
        .env("CLAWPEN_HOME", home.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
}

#[tokio::test(flavor = "multi_thread")]
async fn inference_service_answers_next_to_the_supervisor() {
    let home = temp_home();
    let up = Up::start(home.path(), &["--no-demo"]).unwrap();
    let base = up.inference_url.trim_end_matches("/v1");
    let health: serde_json::Value = reqwest::get(format!("{base}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let models: serde_json::Value = reqwest::get(format!("{}/models", up.inference_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert!(models["data"].is_array());
}
