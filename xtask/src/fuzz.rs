//! `cargo xtask fuzz [--seconds N] [TARGET...]`: builds the fuzz targets
//! (`fuzz/fuzz_targets/`) with libFuzzer's coverage instrumentation and
//! runs each for N seconds on its corpus, then prints a table.
//!
//! No cargo-fuzz and no nightly toolchain: the instrumentation is LLVM's
//! `sancov-module` pass with the same options cargo-fuzz passes, all stable
//! `-C` flags. AddressSanitizer (nightly's `-Zsanitizer`) is left out: the
//! targets are safe Rust, where a bad index or length panics by itself.
//!
//! Files, all under `target/fuzz/`: `corpus/TARGET/` (inputs libFuzzer
//! found, kept between runs and grown), `artifacts/TARGET/` (a failing
//! input, if any), `logs/TARGET.log` (libFuzzer's output). Seeds live in
//! `fuzz/seeds/TARGET/` and are read, never written.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Every target: the binaries of the `clawpen-fuzz` package, one file each
/// in `fuzz/fuzz_targets/` (their checks are `clawpen_fuzz::targets`).
fn all_targets() -> Result<Vec<String>> {
    let dir = crate::workspace_root().join("fuzz/fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry.with_context(|| format!("{}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// What cargo-fuzz passes to instrument for libFuzzer (without a sanitizer),
/// plus `--cfg fuzzing`, debug assertions and overflow checks.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
];

/// Largest input libFuzzer makes: room for a small GGUF file.
const MAX_LEN: usize = 64 * 1024;
/// A target whose memory grows past this fails: input must never buy
/// unbounded memory. (libFuzzer's per-allocation `-malloc_limit_mb` needs a
/// sanitizer's malloc hooks; an allocation that cannot be had aborts anyway.)
const RSS_LIMIT_MB: usize = 2048;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run (all when none is named).
    pub targets: Vec<String>,
}

/// libFuzzer's closing numbers for one target.
#[derive(Debug, Default, PartialEq)]
struct Stats {
    runs: u64,
    per_second: u64,
    coverage: u64,
    corpus: u64,
    peak_rss_mb: u64,
}

pub fn run(args: &Args) -> Result<()> {
    let all = all_targets()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        all.iter().map(String::as_str).collect()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target '{t}' (targets: {})", all.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let bin_dir = build()?;
    let root = crate::workspace_root();
    let work = crate::target_dir().join("fuzz");
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        eprintln!(
            "xtask fuzz: [{}/{}] {target} for {} s",
            i + 1,
            targets.len(),
            args.seconds
        );
        let corpus = work.join("corpus").join(target);
        let artifacts = work.join("artifacts").join(target);
        let logs = work.join("logs");
        for dir in [&corpus, &artifacts, &logs] {
            std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
        }
        let log = logs.join(format!("{target}.log"));
        let seeds = root.join("fuzz/seeds").join(target);
        let mut cmd = Command::new(bin_dir.join(target));
        cmd.arg(format!("-max_total_time={}", args.seconds))
            .arg(format!("-max_len={MAX_LEN}"))
            .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running fuzz target {target}"))?;
        std::fs::write(&log, [&out.stdout[..], &out.stderr[..]].concat())
            .with_context(|| format!("{}", log.display()))?;
        let stats = parse_stats(&String::from_utf8_lossy(&out.stderr));
        let verdict = if out.status.success() {
            "ok".to_string()
        } else {
            failed.push(*target);
            format!("FAILED: see {}", log.display())
        };
        rows.push((target.to_string(), stats, verdict));
    }
    print_table(&rows);
    if !failed.is_empty() {
        eprintln!(
            "xtask fuzz: a failing input is kept in target/fuzz/artifacts/TARGET/; replay one with"
        );
        eprintln!(
            "  {}/TARGET target/fuzz/artifacts/TARGET/crash-...",
            bin_dir.display()
        );
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Builds every target instrumented; returns the folder of the binaries.
fn build() -> Result<PathBuf> {
    let host = host_triple()?;
    let target_dir = crate::target_dir().join("fuzz");
    let mut flags = RUSTFLAGS.join(" ");
    if let Ok(extra) = std::env::var("RUSTFLAGS") {
        flags = format!("{extra} {flags}");
    }
    // An explicit --target keeps RUSTFLAGS off build scripts and proc
    // macros, which must not be instrumented (they do not link libFuzzer).
    crate::run_ok(
        crate::cargo()
            .args(["build", "--release", "-p", "clawpen-fuzz", "--target"])
            .arg(&host)
            .arg("--target-dir")
            .arg(&target_dir)
            .env("RUSTFLAGS", flags)
            // No debug info: a panic still prints its file and line, and the
            // binaries (each links the supervisor, console included) shrink.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"),
        &format!(
            "cargo build --release -p clawpen-fuzz --target {host} --target-dir {} (instrumented for libFuzzer)",
            target_dir.display()
        ),
    )?;
    Ok(target_dir.join(host).join("release"))
}

/// The toolchain's host target triple (`rustc -vV`'s `host:` line).
fn host_triple() -> Result<String> {
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("-vV")
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host line")
}

/// The numbers libFuzzer prints at the end: `stat::...` lines from
/// `-print_final_stats=1`, coverage and corpus size from its last status
/// line (`#N DONE cov: C ft: F corp: K/...`).
fn parse_stats(stderr: &str) -> Stats {
    let mut s = Stats::default();
    for line in stderr.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next_back()) {
            (Some("stat::number_of_executed_units:"), Some(n)) => s.runs = n.parse().unwrap_or(0),
            (Some("stat::average_exec_per_sec:"), Some(n)) => s.per_second = n.parse().unwrap_or(0),
            (Some("stat::peak_rss_mb:"), Some(n)) => s.peak_rss_mb = n.parse().unwrap_or(0),
            _ => {}
        }
        if line.starts_with('#') {
            let field = |name: &str| {
                line.split_whitespace()
                    .skip_while(|w| *w != name)
                    .nth(1)
                    .and_then(|v| v.split('/').next())
                    .and_then(|v| v.parse().ok())
            };
            if let Some(c) = field("cov:") {
                s.coverage = c;
            }
            if let Some(c) = field("corp:") {
                s.corpus = c;
            }
        }
    }
    s
}

fn print_table(rows: &[(String, Stats, String)]) {
    println!(
        "\n{:<12} {:>10} {:>9} {:>9} {:>7} {:>8}  result",
        "target", "runs", "runs/s", "coverage", "corpus", "rss MB"
    );
    for (target, s, verdict) in rows {
        println!(
            "{:<12} {:>10} {:>9} {:>9} {:>7} {:>8}  {verdict}",
            target, s.runs, s.per_second, s.coverage, s.corpus, s.peak_rss_mb
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_closing_numbers() {
        let stderr = "\
#2\tINITED cov: 120 ft: 130 corp: 1/1b exec/s: 0 rss: 40Mb
#4096\tpulse  cov: 150 ft: 200 corp: 12/340b lim: 43 exec/s: 2048 rss: 45Mb
#60000\tDONE   cov: 161 ft: 240 corp: 17/512b lim: 400 exec/s: 30000 rss: 47Mb
Done 60000 runs in 2 second(s)
stat::number_of_executed_units: 60000
stat::average_exec_per_sec:     30000
stat::new_units_added:          16
stat::slowest_unit_time_sec:    0
stat::peak_rss_mb:              47
";
        assert_eq!(
            parse_stats(stderr),
            Stats {
                runs: 60000,
                per_second: 30000,
                coverage: 161,
                corpus: 17,
                peak_rss_mb: 47,
            }
        );
    }
}
