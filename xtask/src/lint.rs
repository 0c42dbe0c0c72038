//! `cargo xtask lint`: formatting, clippy with warnings as errors, clippy of
//! the inference crate's `cuda` feature (nvcc from PyPI, no GPU needed), and
//! clippy of the macOS target with `metal` (the VZ backend and Metal cannot
//! run here, so this is what keeps them building).

use anyhow::{bail, Context, Result};

use crate::cargo_ok;

/// The Mac target the VZ backend and the `metal` inference feature are
/// checked for. `cargo check` needs no Mac SDK for it: nothing links, and
/// no crate compiles C for macOS (SQLite is the system's there, see the
/// root Cargo.toml).
const MAC_TARGET: &str = "aarch64-apple-darwin";

/// Installs the Mac target's standard library (idempotent, no-op when present).
fn ensure_target(target: &str) -> Result<()> {
    crate::run_ok(
        std::process::Command::new("rustup").args(["target", "add", target]),
        &format!("rustup target add {target}"),
    )
}

/// The fuzz targets' package (see [`crate::fuzz`]).
const FUZZ: &str = "clawpen-fuzz";

/// GPU architecture the CUDA kernels are compiled for in the check: there is
/// no GPU here to ask (the H100/H200 generation; any value nvcc knows does).
const CUDA_COMPUTE_CAP: &str = "90";

/// `cargo clippy -p clawpen-inference --features cuda`: nvcc from PyPI
/// (`scripts/cuda-toolchain.sh`) compiles candle's kernels, so the `cuda`
/// build is checked on machines without a GPU or NVIDIA's apt repository.
fn check_cuda() -> Result<()> {
    let root = crate::workspace_root();
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/cuda-toolchain.sh"))
        .current_dir(&root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("scripts/cuda-toolchain.sh")?;
    if !out.status.success() {
        bail!("scripts/cuda-toolchain.sh failed ({})", out.status);
    }
    let cuda_root = String::from_utf8(out.stdout)
        .context("CUDA root path")?
        .trim()
        .to_string();
    let path = format!(
        "{cuda_root}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    let args = [
        "clippy",
        "-p",
        "clawpen-inference",
        "--features",
        "cuda",
        "--",
        "-D",
        "warnings",
    ];
    crate::run_ok(
        crate::cargo()
            .args(args)
            .env("PATH", path)
            .env("CUDA_ROOT", &cuda_root)
            .env("CUDA_COMPUTE_CAP", CUDA_COMPUTE_CAP),
        &format!("cargo {} (CUDA_ROOT={cuda_root})", args.join(" ")),
    )
}

pub fn run() -> Result<()> {
    cargo_ok(&["fmt", "--all", "--check"], &[])?;
    cargo_ok(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    check_cuda()?;
    ensure_target(MAC_TARGET)?;
    // One clippy pass for the Mac (the VZ backend, and the inference crate
    // with `metal`, which only adds code): clippy checks everything `cargo
    // check` does, so a separate check would compile the workspace twice.
    // The fuzz targets link libFuzzer (C++, built for the target): Linux only.
    cargo_ok(
        &[
            "clippy",
            "--workspace",
            "--exclude",
            FUZZ,
            "--features",
            "clawpen-inference/metal",
            "--target",
            MAC_TARGET,
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )
}
