//! Tool calls from real trained models (Qwen2.5-Coder 0.5B and 1.5B, fetched
//! from PyPI by `scripts/test-models.sh`), through the official Python SDK
//! (`tests/clients/python/real_tools.py`), against the `clawpen` binary:
//! the local engine's constrained decoding, and clawpen in front of
//! llama.cpp's server on the same GGUF (repair of calls left in text);
//! and the real OpenClaw agent (`openclaw agent --local`, on Node 24, both
//! pinned as in the guest image, installed by `scripts/openclaw-host.sh`)
//! configured by the file the guest image renders, doing a task that needs
//! a tool.
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
pub(crate) fn real_model(name: &str) -> PathBuf {
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

/// The real OpenClaw agent on the host, configured exactly as the guest
/// image configures it (`RENDER_CONFIG_JS` reading a config disk), asked for
/// something only a tool can do: the file appears in its workspace, and
/// clawpen saw the turn's requests in one session, a `write` call among
/// them, and the second continuing the first from the prefix cache.
#[test]
fn real_openclaw_agent_writes_a_file_with_qwen_05b() {
    use clawpen_vmimage::openclaw::{
        GuestConfig, InferenceConfig, DEFAULT_REQUEST_TIMEOUT_SECONDS, NODE_VERSION,
        OPENCLAW_VERSION, RENDER_CONFIG_JS,
    };

    let install = Command::new("bash")
        .arg(workspace().join("scripts/openclaw-host.sh"))
        .args([OPENCLAW_VERSION, NODE_VERSION])
        .current_dir(workspace())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/openclaw-host.sh");
    assert!(install.status.success(), "scripts/openclaw-host.sh failed");
    let paths = String::from_utf8_lossy(&install.stdout);
    let (node, openclaw) = paths
        .trim()
        .split_once(' ')
        .map(|(n, o)| (workspace().join(n), workspace().join(o)))
        .expect("openclaw-host.sh prints NODE OPENCLAW");

    let name = "qwen2.5-coder-0.5b-instruct";
    let dir = named(&real_model(name), name);
    let file = dir.path().join(format!("{name}.gguf"));
    let facts = clawpen_inference::engine::local::facts(&file).unwrap();
    // Greedy for requests that set no temperature (OpenClaw sends none):
    // at the default 0.8, the 0.5B model now and then describes the call in
    // prose instead of making it, which tests the model's dice, not clawpen.
    let serve = Serve::start(&["--model", file.to_str().unwrap(), "--temperature", "0"]);

    // The guest's config disk, pointing at this host's service.
    let home = tempfile::tempdir().unwrap();
    let state = home.path().join("state");
    let config = GuestConfig {
        vm: "host".into(),
        inference: InferenceConfig {
            base_url: format!("{}/v1", serve.url),
            api_key: "host-test".into(),
            model: name.into(),
            context_window: facts.context_length as u64,
            max_tokens: 4096,
            reasoning: facts.reasoning,
            timeout_seconds: DEFAULT_REQUEST_TIMEOUT_SECONDS,
        },
        gateway_port: clawpen_vmimage::openclaw::DEFAULT_GATEWAY_PORT,
        gateway_token: None,
        shares: vec![],
    };
    let disk = home.path().join("config.img");
    std::fs::write(&disk, config.to_config_disk().unwrap()).unwrap();
    let render = home.path().join("render-config.mjs");
    std::fs::write(&render, RENDER_CONFIG_JS).unwrap();
    let config_path = state.join("openclaw.json");
    let rendered = Command::new(&node)
        .arg(&render)
        .arg(&disk)
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "render-config.mjs: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );

    // The provider is the guest's; the agent's tools are narrowed to the
    // files ones (OpenClaw's `tools.allow`): with all fourteen, the 0.5B
    // model sometimes hands the task to the `openclaw` sub-agent tool
    // instead, which tests the model, not clawpen's tool calls.
    let mut openclaw_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    openclaw_json["tools"] = serde_json::json!({"allow": ["read", "write", "edit", "ls"]});
    std::fs::write(&config_path, openclaw_json.to_string()).unwrap();

    let session = "host-test";
    let started = Instant::now();
    let mut agent = Command::new(&node)
        .arg(&openclaw)
        .args(["agent", "--local", "--json", "--session-id", session])
        .args(["--timeout", &AGENT_LIMIT.as_secs().to_string()])
        .args([
            "-m",
            "Create a file named hello.txt whose whole content is the word clawpen. \
             Use the write tool.",
        ])
        .env("HOME", home.path())
        .env("OPENCLAW_STATE_DIR", &state)
        .env("OPENCLAW_CONFIG_PATH", &config_path)
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(home.path().join("agent.out")).unwrap())
        .stderr(std::fs::File::create(home.path().join("agent.err")).unwrap())
        .spawn()
        .expect("run openclaw");
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > AGENT_LIMIT + Duration::from_secs(60) {
            let _ = agent.kill();
            break agent.wait().unwrap();
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let wall = started.elapsed();
    let read = |f: &str| std::fs::read_to_string(home.path().join(f)).unwrap_or_default();
    let records = requests(&serve.log());
    let report = format!(
        "openclaw agent: {status} after {wall:?}\nstdout:\n{}\nstderr (tail):\n{}\nrequests: {records:#?}",
        read("agent.out"),
        tail(&read("agent.err"), 4000)
    );
    eprintln!("{report}");
    assert!(status.success(), "{report}");

    let written = std::fs::read_to_string(state.join("workspace/hello.txt"))
        .unwrap_or_else(|e| panic!("no hello.txt in the agent's workspace ({e})\n{report}"));
    // The 0.5B model sometimes writes a sentence around the word.
    assert!(
        written.to_lowercase().contains("clawpen"),
        "hello.txt holds {written:?}\n{report}"
    );

    // The agent's turn is one session, OpenClaw's `prompt_cache_key`
    // (`<session>:<compactions>`); OpenClaw's small side requests (titles)
    // carry keys of their own.
    let turn: Vec<&Record> = records
        .iter()
        .filter(|r| r.session.starts_with(&format!("{session}:")))
        .collect();
    assert!(turn.len() >= 2, "a tool call and an answer: {report}");
    assert!(
        turn[0].tool_calls.len() > 2,
        "the first answer calls a tool: {report}"
    );
    assert!(
        turn.iter().any(|r| r.tool_calls.contains("\"write\"")),
        "a write call: {report}"
    );
    // Within the tool loop OpenClaw continues the stored response
    // (`supportsResponsesContinuation`): it sends only the tool's result,
    // which it does only when clawpen's output items are what it replays.
    assert!(
        !turn[1].continues.is_empty(),
        "the tool loop's second request continues the first: {report}"
    );
    // The tool loop's next request extends the first: its prompt is
    // served from the prefix cache, not prefilled again.
    assert!(
        turn[1].cached_tokens * 10 >= turn[0].prompt_tokens * 9,
        "the second request reuses the first's prefix: {report}"
    );
}

/// How long the agent's one turn may take: an agent's first prompt is
/// ~12k tokens, a few minutes of prefill on 2 cores.
const AGENT_LIMIT: Duration = Duration::from_secs(25 * 60);

/// One `inference request` line of the service's log.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug in failure reports
struct Record {
    session: String,
    /// The `previous_response_id` the request continues, if any.
    continues: String,
    status: String,
    prompt_tokens: u64,
    cached_tokens: u64,
    ttft_ms: f64,
    tool_calls: String,
}

/// The requests `log` records, in order (the fields `metrics.rs` logs).
fn requests(log: &str) -> Vec<Record> {
    let field = |line: &str, key: &str| -> String {
        let Some(at) = line.find(&format!(" {key}=")) else {
            return String::new();
        };
        let rest = &line[at + key.len() + 2..];
        if let Some(quoted) = rest.strip_prefix('"') {
            quoted.split('"').next().unwrap_or("").to_owned()
        } else if rest.starts_with('[') {
            rest[..rest.find(']').map_or(rest.len(), |e| e + 1)].to_owned()
        } else {
            rest.split(' ').next().unwrap_or("").to_owned()
        }
    };
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("inference request"))
        .map(|l| Record {
            session: field(&l, "session"),
            continues: field(&l, "continues"),
            status: field(&l, "status"),
            prompt_tokens: field(&l, "prompt_tokens").parse().unwrap_or(0),
            cached_tokens: field(&l, "cached_tokens").parse().unwrap_or(0),
            ttft_ms: field(&l, "ttft_ms").parse().unwrap_or(0.0),
            tool_calls: field(&l, "tool_calls"),
        })
        .collect()
}

/// `line` without terminal colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `max` bytes of `text` (at a character boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut at = text.len().saturating_sub(max);
    while !text.is_char_boundary(at) {
        at += 1;
    }
    &text[at..]
}

/// The independent conformance suite `llmprobe` (npm, pinned in
/// `tests/clients/node`) against clawpen serving the real 0.5B model, as
/// the issue asks for it (`--quick --no-bench --no-save`): every MUST
/// assertion of every surface clawpen implements (models, chat, responses)
/// passes.
#[test]
fn llmprobe_finds_every_must_assertion_met_on_the_real_model() {
    let probe = clients_dir().join("node/node_modules/llmprobe/bin/dist/llmprobe.mjs");
    assert!(
        probe.is_file(),
        "{} is missing: `npm ci` in tests/clients/node (scripts/test-clients.sh) installs it",
        probe.display()
    );
    let name = "qwen2.5-coder-0.5b-instruct";
    let dir = named(&real_model(name), name);
    let file = dir.path().join(format!("{name}.gguf"));
    let serve = Serve::start(&["--model", file.to_str().unwrap(), "--temperature", "0"]);
    let home = tempfile::tempdir().unwrap();
    let out = Command::new("node")
        .arg(&probe)
        .arg(format!("{}/v1", serve.url))
        .args(["-m", name, "--quick", "--no-bench", "--no-save", "--json"])
        // Its library of past runs stays out of the user's home.
        .env("HOME", home.path())
        .output()
        .expect("run llmprobe with node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "llmprobe printed no JSON report ({e}):\n{}\n{}",
            tail(&stdout, 4000),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let conformance = &report["conformance"];
    let surfaces: Vec<(String, u64, u64)> = conformance["bySurface"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["surface"].as_str().unwrap_or_default().to_owned(),
                s["passed"].as_u64().unwrap_or(0),
                s["total"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    eprintln!("llmprobe {}: {surfaces:?}", report["version"]);
    let failed: Vec<&serde_json::Value> = conformance["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "fail")
        .collect();
    assert!(
        failed.is_empty(),
        "llmprobe's failed assertions: {failed:#?}\nserver log:\n{}",
        tail(&serve.log(), 4000)
    );
    for surface in ["models", "chat", "responses"] {
        let found = surfaces.iter().find(|s| s.0 == surface);
        assert!(
            matches!(found, Some((_, passed, total)) if passed == total && *total > 0),
            "{surface}: {found:?}"
        );
    }
}
