//! Harness for clawpen's end-to-end tests: runs the real `clawpen` binary on a
//! private state directory, talks to it over HTTP, types into guests over
//! their serial console and looks for VMM processes in `/proc`.
//!
//! Every test gets its own state directory and ports; the test guest image is
//! built once into `target/clawpen-test-images` and shared (the image store
//! locks while building).

pub mod browser;
pub mod events;
pub mod serial;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clawpen_api::VmInfo;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `clawpen` binary, built (once per test process) if it is missing or
/// stale, in the profile this crate was built in: tests get a debug build
/// (fast to build, with debug assertions), benches an optimized one, as users
/// run it (a debug gateway would measure the compiler, not the code).
pub fn clawpen_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let (profile_args, profile_dir): (&[&str], &str) = if cfg!(debug_assertions) {
            (&[], "debug")
        } else {
            (&["--release"], "release")
        };
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "clawpen-supervisor",
                "--bin",
                "clawpen",
            ])
            .args(profile_args)
            .current_dir(workspace_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building clawpen failed");
        target_dir().join(profile_dir).join("clawpen")
    })
    .clone()
}

pub fn test_images_dir() -> PathBuf {
    target_dir().join("clawpen-test-images")
}

/// A short private state directory (unix socket paths must stay < 108 bytes).
pub fn temp_home() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("cp")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

/// A running `clawpen inference serve --listen 127.0.0.1:0 ARGS...` on its
/// own state directory; killed on drop.
pub struct Serve {
    child: Child,
    /// `http://127.0.0.1:PORT/v1`, as it printed.
    pub base: String,
    pub home: tempfile::TempDir,
}

impl Serve {
    /// Starts it and waits for the base URL it prints first.
    pub fn start<I, S>(args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let home = temp_home();
        let mut child = Command::new(clawpen_bin())
            .args(["inference", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("CLAWPEN_HOME", home.path())
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn clawpen inference serve")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?)
            .read_line(&mut line)
            .context("read its first line")?;
        let Some(base) = line.trim().strip_prefix("inference: ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("inference serve printed {line:?}");
        };
        Ok(Self {
            base: base.to_owned(),
            child,
            home,
        })
    }

    /// Stops it and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `clawpen up`.
pub struct Up {
    pub home: PathBuf,
    pub url: String,
    pub token: String,
    pub inference_url: String,
    /// What `clawpen up` printed up to its URLs.
    pub startup: Vec<String>,
    child: Option<Child>,
    http: reqwest::Client,
    /// After a simulated crash the VMMs are meant to outlive this process.
    keep_vmms: bool,
}

impl Up {
    /// Starts `clawpen up` on `home` with free ports and waits for its login URL.
    pub fn start(home: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::start_with_env(home, extra_args, &[])
    }

    /// [`Up::start`] with extra environment variables (test hooks).
    pub fn start_with_env(home: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut child = Command::new(clawpen_bin())
            .args([
                "up",
                "--listen",
                "127.0.0.1:0",
                "--inference-listen",
                "127.0.0.1:0",
            ])
            .args(extra_args)
            .env("CLAWPEN_HOME", home)
            .env("CLAWPEN_IMAGES", test_images_dir())
            .env("CLAWPEN_ACCEL", "tcg")
            .env(
                "RUST_LOG",
                std::env::var("CLAWPEN_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn clawpen up")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[clawpen up] {line}");
                let _ = tx.send(line);
            }
        });
        let mut url = None;
        let mut inference_url = None;
        let mut startup = Vec::new();
        // The first run builds the test guest image: allow for it.
        let deadline = Instant::now() + Duration::from_secs(600);
        while url.is_none() || inference_url.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .context("clawpen up printed no login URL")?;
            startup.push(line.clone());
            if let Some(rest) = line.trim().strip_prefix("console:") {
                url = Some(rest.trim().to_string());
            }
            if let Some(rest) = line.trim().strip_prefix("inference:") {
                inference_url = Some(rest.trim().to_string());
            }
        }
        let login = url.expect("loop ends with a url");
        let (base, token) = login
            .split_once("/login?token=")
            .context("login URL shape")?;
        Ok(Self {
            home: home.to_owned(),
            url: base.to_string(),
            token: token.to_string(),
            inference_url: inference_url.expect("loop ends with it"),
            startup,
            child: Some(child),
            http: reqwest::Client::new(),
            keep_vmms: false,
        })
    }

    pub fn login_url(&self) -> String {
        format!("{}/login?token={}", self.url, self.token)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{}", self.url, path)
    }

    /// An authorised request builder.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.api(path))
            .bearer_auth(&self.token)
    }

    pub async fn vm(&self, name: &str) -> Result<VmInfo> {
        self.get_json(&format!("/vms/{name}")).await
    }

    /// GETs an API path and parses its JSON answer (a non-2xx status is an
    /// error).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.request(reqwest::Method::GET, path).send().await?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        Ok(resp.json().await?)
    }

    /// Polls until the VM's state label is `label` (fails early on `Failed`).
    pub async fn wait_state(&self, name: &str, label: &str, limit: Duration) -> Result<VmInfo> {
        let deadline = Instant::now() + limit;
        loop {
            match self.vm(name).await {
                Ok(info) if info.state.label() == label => return Ok(info),
                Ok(info) if info.state.label() == "Failed" && label != "Failed" => {
                    bail!("VM {name} failed: {}", info.state)
                }
                _ if Instant::now() > deadline => bail!("VM {name} not {label} within {limit:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub fn vm_dir(&self, name: &str) -> PathBuf {
        self.home.join("vms").join(name)
    }

    /// POSTs a JSON body and returns status and parsed JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(reqwest::StatusCode, serde_json::Value)> {
        let resp = self
            .request(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, json))
    }

    /// True once the `clawpen up` process has exited (after a crash hook fired).
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                self.keep_vmms = true;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// SIGKILL, as a crash would (its VMMs are left running, as they would be).
    pub fn kill9(&mut self) {
        self.keep_vmms = true;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (bounded).
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("clawpen did not exit within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        if self.keep_vmms {
            return;
        }
        // Never leave a VMM behind, even when a test failed half-way.
        for pid in vmm_pids(&self.home) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Live (non-zombie) `qemu-system-*` processes whose command line mentions `home`.
pub fn vmm_pids(home: &Path) -> Vec<u32> {
    let needle = home.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let alive = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|s| s != "Z" && s != "X");
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            alive && cmdline.starts_with("qemu-system") && cmdline.contains(&needle)
        })
        .collect()
}
