//! Server side (feature `ssr`): where the page's data comes from, and the axum
//! router the supervisor nests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use clawpen_api::{InferenceRecord, VmInfo};
use leptos::config::LeptosOptions;
use leptos::prelude::provide_context;
use leptos_axum::{generate_route_list, LeptosRoutes};
use tower_http::services::ServeDir;

use crate::app::{shell, App};

/// What the console asks the supervisor while rendering a page on the server.
/// In the browser the same data comes from the HTTP API instead.
pub trait VmSource: Send + Sync + 'static {
    /// Every VM with its current state, as `GET /api/v1/vms` would answer.
    fn list_vms(&self) -> Pin<Box<dyn Future<Output = Result<Vec<VmInfo>, String>> + Send + '_>>;

    /// The inference records the supervisor still has, oldest first, as
    /// `GET /api/v1/inference/recent` answers: the sessions panels start
    /// from them.
    fn recent_inference(&self) -> Vec<InferenceRecord> {
        Vec::new()
    }
}

/// The [`VmSource`] as it travels through Leptos' context during a render.
#[derive(Clone)]
pub(crate) struct SourceCtx(pub(crate) Arc<dyn VmSource>);

/// Leptos options for a site whose wasm bundle lies in `site_dir/pkg`
/// (as `cargo xtask console` writes it).
pub fn leptos_options(site_dir: &Path) -> LeptosOptions {
    LeptosOptions::builder()
        .output_name(crate::OUTPUT_NAME)
        .site_root(site_dir.to_string_lossy().as_ref())
        .site_pkg_dir("pkg")
        .build()
}

/// The console's routes: `GET /` (the server-rendered page with the hydration
/// scripts) and `GET /pkg/*` (the wasm bundle from `site_dir/pkg`).
///
/// No authentication here: the supervisor nests this router behind its own.
pub fn router(site_dir: PathBuf, source: Arc<dyn VmSource>) -> axum::Router {
    let options = leptos_options(&site_dir);
    let routes = generate_route_list(App);
    let ctx = SourceCtx(source);
    let shell_options = options.clone();
    axum::Router::<LeptosOptions>::new()
        .leptos_routes_with_context(
            &options,
            routes,
            move || provide_context(ctx.clone()),
            move || shell(shell_options.clone()),
        )
        .nest_service("/pkg", ServeDir::new(site_dir.join("pkg")))
        .with_state(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use clawpen_api::{VmName, VmSpec, VmState};
    use tower::ServiceExt;

    struct Fixed(Result<Vec<VmInfo>, String>);

    impl VmSource for Fixed {
        fn list_vms(
            &self,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<VmInfo>, String>> + Send + '_>> {
            let answer = self.0.clone();
            Box::pin(async move { answer })
        }
    }

    fn vm(name: &str, state: VmState) -> VmInfo {
        VmInfo {
            spec: VmSpec {
                name: VmName::parse(name).unwrap(),
                image: "tiny".into(),
                cpus: 1,
                memory_mib: 256,
                disk_gib: None,
            },
            state,
            pid: None,
            accel: None,
        }
    }

    async fn get(router: axum::Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_page_is_rendered_with_the_vms_and_the_hydration_scripts() {
        let site = std::env::temp_dir().join("clawpen-console-test-site");
        let source = Arc::new(Fixed(Ok(vec![
            vm("demo", VmState::Running),
            vm(
                "broken",
                VmState::Failed {
                    reason: "disk full".into(),
                },
            ),
            vm("busy", VmState::Resetting),
        ])));
        let (status, html) = get(router(site, source), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<title>clawpen</title>"), "{html}");
        assert!(html.contains(r#"<tr data-vm="demo">"#), "{html}");
        // Leptos writes the static class after the dynamic attributes
        assert!(
            html.contains(r#"<td data-state="Running" class="vm-state">Running</td>"#),
            "{html}"
        );
        assert!(html.contains("disk full"), "{html}");
        assert!(html.contains("/pkg/clawpen_console.js"), "{html}");
        assert!(html.contains("/pkg/clawpen_console_bg.wasm"), "{html}");
        // the busy VM's reset buttons are disabled, the running one's are not
        let row = |name: &str| {
            let start = format!(r#"<tr data-vm="{name}">"#);
            let rest = html.split(start.as_str()).nth(1).unwrap();
            rest.split("</tr>").next().unwrap().to_string()
        };
        // the opening tag of the button with class `class` in `row`
        let button = |row: &str, class: &str| {
            let end = format!(r#"class="{class}">"#);
            let head = row.split(end.as_str()).next().unwrap();
            head.rsplit("<button").next().unwrap().to_string()
        };
        let (busy, demo) = (row("busy"), row("demo"));
        for class in ["reset", "reset-cold", "snapshot"] {
            assert!(busy.contains(&format!(r#"class="{class}">"#)), "{busy}");
            assert!(button(&busy, class).contains("disabled"), "{busy}");
            assert!(demo.contains(&format!(r#"class="{class}">"#)), "{demo}");
            assert!(!button(&demo, class).contains("disabled"), "{demo}");
        }
        // the other panels are there, empty until the browser fills them
        assert!(
            html.contains(r#"<section data-vm="demo" class="egress">"#),
            "{html}"
        );
        assert!(html.contains(r#"<table class="inference">"#), "{html}");
        assert!(html.contains("No requests yet."), "{html}");
        // the inference charts are there from the start, empty
        for metric in ["rate", "queue", "ttft", "prefill", "decode", "cache-hit"] {
            assert!(
                html.contains(&format!(r#"data-metric="{metric}""#)),
                "{metric}: {html}"
            );
        }
        assert!(html.contains(r#"<td class="vm-forwards">"#), "{html}");
    }

    #[tokio::test]
    async fn a_failing_source_shows_an_error_instead_of_rows() {
        let site = std::env::temp_dir().join("clawpen-console-test-site");
        let source = Arc::new(Fixed(Err("store is locked".into())));
        let (status, html) = get(router(site, source), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("store is locked"), "{html}");
        assert!(!html.contains("data-vm="), "{html}");
    }

    #[tokio::test]
    async fn pkg_files_are_served_from_the_site_dir() {
        let site = std::env::temp_dir().join(format!("clawpen-console-pkg-{}", std::process::id()));
        std::fs::create_dir_all(site.join("pkg")).unwrap();
        std::fs::write(site.join("pkg/clawpen_console.js"), "export default 1;").unwrap();
        let (status, body) = get(
            router(site.clone(), Arc::new(Fixed(Ok(vec![])))),
            "/pkg/clawpen_console.js",
        )
        .await;
        std::fs::remove_dir_all(&site).unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "export default 1;");
    }
}
