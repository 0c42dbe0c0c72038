//! Running the client scripts in `tests/clients/` and the Python tools
//! the tests need; a missing tool fails with the command that installs it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The Python interpreter: `CLAWPEN_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("CLAWPEN_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `tests/clients` of the workspace.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/clients")
}

/// Fails the test unless Python can `import` each of `modules`; `install`
/// is the command that fixes it.
pub fn require_python(modules: &[&str], install: &str) {
    let py = python();
    let code = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = Command::new(&py)
        .args(["-c", &code])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs `{py}` with {modules:?}: run `{install}` \
         (or set CLAWPEN_PYTHON to an interpreter that has them)"
    );
}

/// Runs `tests/clients/python/SCRIPT ARGS`; its stdout is one JSON object.
pub fn run_python(script: &str, args: &[&str]) -> Value {
    let mut command = Command::new(python());
    command
        .arg(clients_dir().join("python").join(script))
        .args(args);
    python_json(&mut command, script)
}

/// Runs Python `code` with `args` in `sys.argv[1:]`; its stdout is one
/// JSON object.
pub fn run_python_code(code: &str, args: &[&str]) -> Value {
    let mut command = Command::new(python());
    command.args(["-c", code]).args(args);
    python_json(&mut command, "python -c")
}

/// Runs `command` (Python with `openai`), which must succeed and print one
/// JSON object; `what` names it in failures.
fn python_json(command: &mut Command, what: &str) -> Value {
    require_python(&["openai"], "pip install openai");
    let out = command.output().expect("run the python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stderr}\n{stdout}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what} printed no JSON ({e}):\n{stdout}\n{stderr}"))
}
