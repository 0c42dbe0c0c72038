//! Tool calls from real trained models (Qwen2.5-Coder 0.5B and 1.5B, fetched
//! from PyPI by `scripts/test-models.sh`), through the official Python SDK
//! (`tests/clients/python/real_tools.py`), against the `clawpen` binary:
//! the local engine's constrained decoding, and clawpen in front of
//! llama.cpp's server on the same GGUF (repair of calls left in text).
//!
//! The binary is the one of this test's own profile, which `cargo xtask
//! test` builds: dev builds optimise the dependencies and the engine (root
//! Cargo.toml), without which a real model decodes at under 1 token/s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::clients::{clients_dir, python, require_python};
use crate::common::llama::{free_port, http_ok, LlamaServer};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of real model `name` (downloaded once, sha256-checked).
fn real_model(name: &str) -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace().join("scripts/test-models.sh"))
        .arg(name)
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/test-models.sh");
    assert!(out.status.success(), "scripts/test-models.sh {name} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("scripts/test-models.sh printed no {name}: {stdout}"));
    workspace().join(path.trim())
}

fn built_clawpen() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let (profile, flag) = if cfg!(debug_assertions) {
        ("debug", "")
    } else {
        ("release", " --release")
    };
    let bin = target.join(profile).join("clawpen");
    assert!(
        bin.exists(),
        "{} is missing: `cargo xtask test` builds it \
         (or `cargo build{flag} -p clawpen-supervisor --bin clawpen`)",
        bin.display()
    );
    bin
}

/// `clawpen inference serve`, killed when dropped.
struct Serve {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Serve {
    /// Serves `args` (`--model FILE` or `--upstream URL --model NAME`).
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(built_clawpen())
            .args(["inference", "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("CLAWPEN_HOME", dir.path())
            .env("RAYON_NUM_THREADS", "2")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut serve = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let started = Instant::now();
        while !http_ok(&format!("{}/v1", serve.url)) {
            if let Ok(Some(status)) = serve.child.try_wait() {
                panic!(
                    "clawpen inference serve exited ({status}):\n{}",
                    serve.log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "clawpen inference serve did not answer:\n{}",
                serve.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        serve
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A folder holding `model` as `NAME.gguf` (the served model's id).
fn named(model: &Path, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(model, dir.path().join(format!("{name}.gguf"))).unwrap();
    dir
}

/// Runs `real_tools.py SUITE` (`full`, `quick`, `upstream`) against `url`
/// and fails with its findings.
fn tool_suite(url: &str, model: &str, suite: &str, serve: &Serve) {
    require_python(&["openai", "jsonschema"], "pip install openai jsonschema");
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("python/real_tools.py"))
        .args([url, model, suite]);
    let out = cmd.output().expect("run real_tools.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "real_tools.py found failures:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        serve.log()
    );
}

/// The local engine serving real model `name`, under suite `suite`.
fn local_suite(name: &str, suite: &str) {
    let dir = named(&real_model(name), name);
    let file = dir.path().join(format!("{name}.gguf"));
    let serve = Serve::start(&["--model", file.to_str().unwrap()]);
    tool_suite(&serve.url, name, suite, &serve);
}

#[test]
fn real_qwen_05b_calls_tools_on_the_local_engine() {
    local_suite("qwen2.5-coder-0.5b-instruct", "full");
}

#[test]
fn real_qwen_15b_calls_tools_on_the_local_engine() {
    local_suite("qwen2.5-coder-1.5b-instruct", "full");
}

#[test]
fn real_qwen_05b_calls_tools_through_llama_cpp_upstream() {
    let name = "qwen2.5-coder-0.5b-instruct";
    let llama = LlamaServer::start_model(&real_model(name), name, 4096, 2);
    let serve = Serve::start(&["--upstream", &llama.url, "--model", name]);
    tool_suite(&serve.url, name, "upstream", &serve);
}
