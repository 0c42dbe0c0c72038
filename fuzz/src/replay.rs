//! Every target on its committed seeds and on a fixed set of mutations of
//! them, in the ordinary test build: a quick guard in `cargo xtask test`
//! that needs no instrumented build (which costs more than a quarter of
//! CI's time). It finds regressions near the seeds, not new bugs far from
//! them; `cargo xtask fuzz` is the coverage-guided search.

use std::path::{Path, PathBuf};

use crate::targets::{Target, ALL};

/// Mutated inputs per target: a few seconds for the slowest (GGUF) target
/// in a debug build.
const MUTATIONS: usize = 2_000;
/// Largest mutated input (libFuzzer's limit in `cargo xtask fuzz`).
const MAX_LEN: usize = 64 * 1024;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = seeds_dir().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect()
}

/// xorshift64*: the same mutations on every run, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One of libFuzzer's basic mutations (bit flip, interesting byte, insert,
/// erase, truncate, copy within, splice with another seed) of `input`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    match rng.below(7) {
        0 if len > 0 => {
            let at = rng.below(len);
            input[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            input[at] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\n'][rng.below(8)];
        }
        2 => {
            let at = rng.below(len + 1);
            let count = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..count).map(|_| rng.next() as u8).collect();
            input.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            input.drain(at..end);
        }
        4 => input.truncate(rng.below(len + 1)),
        5 if len > 1 => {
            let from = rng.below(len);
            let count = 1 + rng.below(len - from);
            let to = rng.below(len);
            let chunk = input[from..from + count].to_vec();
            input.splice(to..to, chunk);
        }
        _ if !other.is_empty() => {
            let at = rng.below(len + 1);
            let from = rng.below(other.len());
            input.truncate(at);
            input.extend_from_slice(&other[from..]);
        }
        _ => input.push(rng.next() as u8),
    }
    input.truncate(MAX_LEN);
}

fn replay(target: &Target) {
    let seeds = seeds(target.name);
    assert!(!seeds.is_empty(), "{}: no seeds", target.name);
    for seed in &seeds {
        (target.run)(seed);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.name.len() as u64);
    for i in 0..MUTATIONS {
        let mut input = seeds[i % seeds.len()].clone();
        let other = &seeds[rng.below(seeds.len())];
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, other);
        }
        let outcome = std::panic::catch_unwind(|| (target.run)(&input));
        assert!(
            outcome.is_ok(),
            "{}: mutation {i} failed; its input (hex): {}",
            target.name,
            input.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
}

#[test]
fn every_seed_folder_has_a_target_and_every_target_seeds() {
    let mut folders: Vec<String> = std::fs::read_dir(seeds_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let mut names: Vec<&str> = ALL.iter().map(|t| t.name).collect();
    names.sort();
    assert_eq!(folders, names);
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let target = ALL
                .iter()
                .find(|t| t.name == stringify!($name))
                .expect("a target of this name");
            replay(target);
        }
    )*};
}

replay_tests!(
    guest_frame,
    dns,
    dhcp,
    sniff,
    http_stream,
    gguf,
    tool_calls,
    sse,
    config_disk
);
