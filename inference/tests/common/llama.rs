//! A real upstream: llama.cpp's server (from the `llama-cpp-python`
//! package) on a tiny random-weight GGUF that `tiny_gguf.py` writes.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::clients::{clients_dir, python, require_python};

/// The install line for everything the real-upstream tests need.
pub const INSTALL: &str = "pip install 'llama-cpp-python[server]' gguf numpy openai";

/// A running llama.cpp server; killed (by pid) when dropped.
pub struct LlamaServer {
    child: Child,
    /// Base URL with `/v1`.
    pub url: String,
    pub model: String,
    /// What [`Self::restart`] starts again.
    port: u16,
    model_path: std::path::PathBuf,
    n_ctx: u32,
    threads: u32,
    _dir: tempfile::TempDir,
}

impl LlamaServer {
    /// Writes the tiny model, starts the server, waits until it answers.
    pub fn start() -> Self {
        Self::start_sized(None)
    }

    /// As [`Self::start`], serving the tiny model as `alias`.
    pub fn start_as(alias: &str) -> Self {
        Self::start_sized_as(None, alias)
    }

    /// As [`Self::start`], with model sizes `(n_embd, n_layer, n_ff)`.
    pub fn start_sized(sizes: Option<(u32, u32, u32)>) -> Self {
        Self::start_sized_as(sizes, "tiny")
    }

    fn start_sized_as(sizes: Option<(u32, u32, u32)>, alias: &str) -> Self {
        require_python(&["llama_cpp.server", "gguf", "numpy"], INSTALL);
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.gguf");
        let out = Command::new(python())
            .arg(clients_dir().join("python/tiny_gguf.py"))
            .arg(&model)
            .args(sizes.map_or_else(Vec::new, |(e, l, f)| {
                vec![e.to_string(), l.to_string(), f.to_string()]
            }))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tiny_gguf.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::serve(dir, &model, alias, 2048, 1)
    }

    /// Serves the GGUF at `model` as `alias`, with a context of `n_ctx`
    /// tokens on `threads` threads.
    pub fn start_model(model: &std::path::Path, alias: &str, n_ctx: u32, threads: u32) -> Self {
        require_python(&["llama_cpp.server"], INSTALL);
        Self::serve(tempfile::tempdir().unwrap(), model, alias, n_ctx, threads)
    }

    fn serve(
        dir: tempfile::TempDir,
        model: &std::path::Path,
        alias: &str,
        n_ctx: u32,
        threads: u32,
    ) -> Self {
        let port = free_port();
        let child = spawn(dir.path(), model, alias, port, n_ctx, threads);
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}/v1"),
            model: alias.into(),
            port,
            model_path: model.to_owned(),
            n_ctx,
            threads,
            _dir: dir,
        };
        server.wait_ready();
        server
    }

    /// Kills the server (it stops answering at once).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(
            self._dir.path(),
            &self.model_path,
            &self.model,
            self.port,
            self.n_ctx,
            self.threads,
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        let models = format!("{}/models", self.url);
        while started.elapsed() < Duration::from_secs(120) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self._dir.path().join("server.log"))
                    .unwrap_or_default();
                panic!("llama.cpp server exited ({status}):\n{log}");
            }
            if http_ok(&self.url) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("llama.cpp server did not answer {models} within 120 s");
    }
}

/// llama.cpp's server for `model` as `alias` on `port`, logging to
/// `dir/server.log`.
fn spawn(
    dir: &std::path::Path,
    model: &std::path::Path,
    alias: &str,
    port: u16,
    n_ctx: u32,
    threads: u32,
) -> Child {
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    Command::new(python())
        .args([
            "-m",
            "llama_cpp.server",
            "--host",
            "127.0.0.1",
            "--n_ctx",
            &n_ctx.to_string(),
        ])
        .args([
            "--n_threads",
            &threads.to_string(),
            "--model_alias",
            alias,
            "--port",
        ])
        .arg(port.to_string())
        .arg("--model")
        .arg(model)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// A loopback port nothing listens on (for a server the test spawns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET {base}/models` answers 200 (plain std, no client needed).
pub fn http_ok(base: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = base.strip_prefix("http://") else {
        return false;
    };
    let (addr, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /{prefix}/models HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
