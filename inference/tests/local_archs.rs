//! The local engine's own transformer against candle-transformers' models
//! of each architecture, on the same tiny GGUF: the same logits, token
//! after token, whether the prompt is fed at once or continued from a KV
//! cache cut back to a prefix (what the prefix cache does).

use crate::local_common;

use std::io::BufReader;

use candle_core::quantized::gguf_file::Content as Gguf;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
use clawpen_inference::engine::local::gguf;
use clawpen_inference::engine::local::model::KvCache;
use local_common::{limit_threads, TinyModel};

/// candle's model of one architecture, fed like ours.
trait Reference {
    fn forward(&mut self, tokens: &Tensor, pos: usize) -> Tensor;
}

impl Reference for quantized_llama::ModelWeights {
    fn forward(&mut self, tokens: &Tensor, pos: usize) -> Tensor {
        quantized_llama::ModelWeights::forward(self, tokens, pos).unwrap()
    }
}

impl Reference for quantized_qwen2::ModelWeights {
    fn forward(&mut self, tokens: &Tensor, pos: usize) -> Tensor {
        quantized_qwen2::ModelWeights::forward(self, tokens, pos).unwrap()
    }
}

impl Reference for quantized_qwen3::ModelWeights {
    fn forward(&mut self, tokens: &Tensor, pos: usize) -> Tensor {
        quantized_qwen3::ModelWeights::forward(self, tokens, pos).unwrap()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.flatten_all().unwrap() - b.flatten_all().unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn input(tokens: &[u32]) -> Tensor {
    Tensor::new(tokens, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Feeds 12 prompt tokens then 4 single tokens to both models and
/// compares every step's logits; then continues from our cache cut back to
/// 7 tokens and compares with feeding those 7 afresh.
fn agree(path: &std::path::Path, reference: &mut dyn Reference) {
    let ours = gguf::load(path, &Device::Cpu).unwrap();
    let tokens: Vec<u32> = (0..16).map(|i| (i * 37 + 11) % 300).collect();
    let mut kv = KvCache::default();
    let a = ours
        .weights
        .forward(&input(&tokens[..12]), &mut kv)
        .unwrap();
    let b = reference.forward(&input(&tokens[..12]), 0);
    assert!(max_diff(&a, &b) < 1e-3, "prefill: {}", max_diff(&a, &b));
    for pos in 12..16 {
        let a = ours
            .weights
            .forward(&input(&tokens[pos..=pos]), &mut kv)
            .unwrap();
        let b = reference.forward(&input(&tokens[pos..=pos]), pos);
        assert!(max_diff(&a, &b) < 1e-3, "step {pos}: {}", max_diff(&a, &b));
    }
    assert_eq!(kv.len(), 16);
    let mut cut = kv.truncated(7);
    let from_cut = ours
        .weights
        .forward(&input(&tokens[7..10]), &mut cut)
        .unwrap();
    let mut fresh = KvCache::default();
    let whole = ours
        .weights
        .forward(&input(&tokens[..10]), &mut fresh)
        .unwrap();
    assert!(
        max_diff(&from_cut, &whole) < 1e-4,
        "continued from a cut cache: {}",
        max_diff(&from_cut, &whole)
    );
}

fn read(path: &std::path::Path) -> (Gguf, BufReader<std::fs::File>) {
    let mut r = BufReader::new(std::fs::File::open(path).unwrap());
    (Gguf::read(&mut r).unwrap(), r)
}

#[test]
fn llama_matches_candle() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("llama").write(dir.path(), "tiny-llama");
    let (c, mut r) = read(&path);
    let mut reference = quantized_llama::ModelWeights::from_gguf(c, &mut r, &Device::Cpu).unwrap();
    agree(&path, &mut reference);
}

#[test]
fn qwen2_matches_candle() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen2").write(dir.path(), "tiny-qwen2");
    let (c, mut r) = read(&path);
    let mut reference = quantized_qwen2::ModelWeights::from_gguf(c, &mut r, &Device::Cpu).unwrap();
    agree(&path, &mut reference);
}

#[test]
fn qwen3_matches_candle() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::new("qwen3").write(dir.path(), "tiny-qwen3");
    let (c, mut r) = read(&path);
    let mut reference = quantized_qwen3::ModelWeights::from_gguf(c, &mut r, &Device::Cpu).unwrap();
    agree(&path, &mut reference);
}

/// candle's Qwen3-MoE runs on CUDA only, so the mixture of experts is
/// checked by equivalence: every expert a copy of a dense qwen3's
/// feed-forward gives that dense model's logits, whatever the router picks
/// (the chosen experts' weights sum to one). Routing itself is unit-tested
/// in `model.rs` and compared with llama.cpp in `local_llama_cpp.rs`.
#[test]
fn qwen3moe_with_identical_experts_is_its_dense_model() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let dense = TinyModel::new("qwen3");
    let dense_path = dense.write(dir.path(), "dense");
    let moe_path = local_common::experts_of(&dense).write(dir.path(), "moe");
    let a = gguf::load(&dense_path, &Device::Cpu).unwrap();
    let b = gguf::load(&moe_path, &Device::Cpu).unwrap();
    assert_eq!(b.architecture.as_str(), "qwen3moe");
    let tokens: Vec<u32> = (0..9).map(|i| (i * 53 + 7) % 300).collect();
    let (mut ka, mut kb) = (KvCache::default(), KvCache::default());
    for chunk in [&tokens[..6], &tokens[6..7], &tokens[7..9]] {
        let la = a.weights.forward(&input(chunk), &mut ka).unwrap();
        let lb = b.weights.forward(&input(chunk), &mut kb).unwrap();
        assert!(max_diff(&la, &lb) < 1e-4, "{}", max_diff(&la, &lb));
    }
}

/// A prompt long enough for the batched prefill matmul
/// (`engine::local::batched`, from `MIN_ROWS` tokens) on Q8_0 weights:
/// candle's model, which runs its own quantized kernel on every row, gives
/// the same logits, and so does our model fed one token at a time (what
/// the prefix cache amounts to when most of a prompt was cached).
#[test]
fn a_batched_prefill_matches_candle_and_token_by_token() {
    limit_threads();
    let dir = tempfile::tempdir().unwrap();
    let path = TinyModel::with_dtype("qwen2", candle_core::quantized::GgmlDType::Q8_0)
        .write(dir.path(), "q8-qwen2");
    let n = 3 * clawpen_inference::engine::local::batched::MIN_ROWS;
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 29 + 5) % 250).collect();
    let ours = gguf::load(&path, &Device::Cpu).unwrap();
    let at_once = ours
        .weights
        .forward(&input(&tokens), &mut KvCache::default())
        .unwrap();
    let (c, mut r) = read(&path);
    let mut reference = quantized_qwen2::ModelWeights::from_gguf(c, &mut r, &Device::Cpu).unwrap();
    let theirs = Reference::forward(&mut reference, &input(&tokens), 0);
    assert!(
        max_diff(&at_once, &theirs) < 1e-3,
        "against candle: {}",
        max_diff(&at_once, &theirs)
    );
    let mut kv = KvCache::default();
    let mut one_by_one = None;
    for t in &tokens {
        one_by_one = Some(ours.weights.forward(&input(&[*t]), &mut kv).unwrap());
    }
    let one_by_one = one_by_one.unwrap();
    assert!(
        max_diff(&at_once, &one_by_one) < 1e-3,
        "token by token: {}",
        max_diff(&at_once, &one_by_one)
    );
}
