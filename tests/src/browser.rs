//! A real headless Chromium driven through chromedriver (WebDriver).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A chromedriver process and a WebDriver session on it; both end on drop.
pub struct Browser {
    pub client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn launch() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver (apt-get install chromium-driver)")?;
        let profile = tempfile::tempdir()?;
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", "--disable-sync", "--disable-quic",
                    "--window-size=1200,800",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match fantoccini::ClientBuilder::native()
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => bail!("no WebDriver session: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Text of the first element matching `css`, if there is one.
    pub async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(fantoccini::Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    pub async fn wait_for(&self, css: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self
            .client
            .find(fantoccini::Locator::Css(css))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("no element {css:?} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Opens `login_url` (the URL `clawpen up` prints) and waits until the
    /// page is hydrated and follows the event stream.
    pub async fn login(&self, login_url: &str) -> Result<()> {
        self.client.goto(login_url).await?;
        self.wait_for("body[data-hydrated=true]", Duration::from_secs(60))
            .await?;
        self.wait_for("body[data-live=true]", Duration::from_secs(30))
            .await
    }

    /// Clicks the first element matching `css`; panics naming it if there
    /// is none or it cannot be clicked. A live update may re-render the
    /// element between finding and clicking it (webdriver's "stale element
    /// reference"): then it is found again, a few times at most, as a user
    /// would click the new one.
    pub async fn click(&self, css: &str) {
        const TRIES: usize = 5;
        for attempt in 1..=TRIES {
            let element = self
                .client
                .find(fantoccini::Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            match element.click().await {
                Ok(_) => return,
                Err(e) if attempt < TRIES && e.is_stale_element_reference() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot click {css}: {e}"),
            }
        }
    }

    /// Attribute `name` of the first element matching `css`, if both exist.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client.find(fantoccini::Locator::Css(css)).await.ok()?;
        element.attr(name).await.ok().flatten()
    }

    /// Follows the label (the text before any `:`) of the element matching
    /// `css` until `through` was seen and it reads `end`; answers the
    /// labels seen in order, each change once. Panics with them after `limit`.
    pub async fn states_through(
        &self,
        css: &str,
        through: &str,
        end: &str,
        limit: Duration,
    ) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        let deadline = Instant::now() + limit;
        loop {
            let text = self.text(css).await.unwrap_or_default();
            let label = text.split(':').next().unwrap_or("").trim().to_string();
            if seen.last() != Some(&label) {
                seen.push(label.clone());
            }
            if seen.iter().any(|s| s == through) && label == end {
                return seen;
            }
            assert!(Instant::now() < deadline, "{css}: states seen: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks the page, so [`Browser::same_page`] can tell a reload.
    pub async fn mark_page(&self) {
        self.client
            .execute("window.__clawpen_same_page = 42; return true;", vec![])
            .await
            .expect("mark the page");
    }

    /// Whether the page marked by [`Browser::mark_page`] is still the one shown.
    pub async fn same_page(&self) -> bool {
        let same = self
            .client
            .execute("return window.__clawpen_same_page === 42;", vec![])
            .await
            .expect("read the page mark");
        same == serde_json::json!(true)
    }

    /// Whether the page fits the window's width (tables may scroll
    /// sideways inside it; the page itself must not).
    pub async fn fits_width(&self) -> bool {
        let fits = self
            .client
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
                vec![],
            )
            .await
            .expect("measure the page");
        fits == serde_json::json!(true)
    }

    /// Resizes the window to `width` × `height`, runs `scroll` (JavaScript
    /// that brings the part to show into view), and saves a screenshot as
    /// `target/screenshots/NAME`; prints and answers its path.
    pub async fn screenshot_at(
        &self,
        name: &str,
        (width, height): (u32, u32),
        scroll: &str,
    ) -> std::path::PathBuf {
        self.client
            .set_window_size(width, height)
            .await
            .expect("resize the window");
        self.client
            .execute(&format!("{scroll}; return true;"), vec![])
            .await
            .expect("scroll for the screenshot");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shot = self.screenshot(name).await.expect("screenshot");
        println!("screenshot: {}", shot.display());
        shot
    }

    pub async fn screenshot(&self, name: &str) -> Result<std::path::PathBuf> {
        let png = self.client.screenshot().await?;
        let dir = crate::target_dir().join("screenshots");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, png)?;
        Ok(path)
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Polls `check` every 50 ms until it answers `Some`, for at most `limit`;
/// panics naming `what` after that.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds the console's browser assets (`cargo xtask console`) once per process.
pub fn build_console_assets() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["run", "--quiet", "-p", "xtask", "--", "console"])
            .current_dir(crate::workspace_root())
            .status()
            .expect("run cargo xtask console");
        assert!(status.success(), "building the console assets failed");
    });
}
