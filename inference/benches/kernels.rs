//! `cargo bench -p clawpen-inference --bench kernels [-- matvec|batched|interleaved]`:
//! the local engine's CPU matmul kernels against candle's own on Qwen2.5's
//! matrix shapes, one line per shape and row count (what `--bench local`
//! measures end to end, taken apart), for choosing and tuning a kernel.
//! Random weights; every time is the median of several runs after a
//! warm-up. Without a section name all three run:
//! - `matvec`: decoding (1-15 rows), the per-row kernel
//!   (`engine::local::matvec`) against candle, at 0.5B's and 1.5B's shapes
//!   (the vocabulary-sized output cut to 32768 rows for Q6_K: quantizing
//!   151936 rows of it takes minutes).
//! - `batched`: prefill (8-256 rows), dequantized tiles
//!   (`engine::local::batched::forward_cpu`) against candle.
//! - `interleaved`: GB/s of weights, the four-row interleaved kernels
//!   (`engine::local::interleaved`, x86 with AVX2, FMA and F16C) against
//!   the per-row kernel for decoding and candle (its VNNI tiles where rows
//!   are whole 256-blocks) for prefill.
// A bench is test code: a panic is its failure report.
#![allow(clippy::unwrap_used)]

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use clawpen_inference::engine::local::{batched, interleaved, matvec};
use rand::{Rng, SeedableRng};

fn main() {
    let asked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| asked.is_empty() || asked.iter().any(|a| a == name);
    if run("matvec") {
        matvec_speed();
    }
    if run("batched") {
        batched_speed();
    }
    if run("interleaved") {
        interleaved_speed();
    }
}

/// `len` values uniform in [-1, 1).
fn random(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Median seconds of `runs` calls of `f`, after one warm-up call.
fn median_seconds(runs: usize, f: &dyn Fn()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = std::time::Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn quantized(rng: &mut rand::rngs::StdRng, dtype: GgmlDType, n: usize, k: usize) -> QTensor {
    let w = Tensor::from_vec(random(rng, n * k), (n, k), &Device::Cpu).unwrap();
    QTensor::quantize(&w, dtype).unwrap()
}

/// Candle's kernel and the per-row one on Qwen2.5-0.5B's and 1.5B's
/// decode shapes.
fn matvec_speed() {
    println!("matvec (decoding): candle against the per-row kernel");
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let time = |f: &dyn Fn()| median_seconds(9, f);
    for (dtype, k, n) in [
        (GgmlDType::Q5_0, 896, 896),
        (GgmlDType::Q5_0, 896, 128),
        (GgmlDType::Q5_0, 896, 4864),
        (GgmlDType::Q8_0, 896, 896),
        (GgmlDType::Q8_0, 896, 4864),
        (GgmlDType::Q8_0, 4864, 896),
        (GgmlDType::Q8_0, 896, 151936),
        (GgmlDType::Q4K, 4864, 896),
        (GgmlDType::Q4K, 1536, 256),
        (GgmlDType::Q4K, 1536, 1536),
        (GgmlDType::Q4K, 1536, 8960),
        (GgmlDType::Q4K, 8960, 1536),
        (GgmlDType::Q6K, 4864, 896),
        (GgmlDType::Q6K, 1536, 256),
        (GgmlDType::Q6K, 8960, 1536),
        (GgmlDType::Q6K, 1536, 32768),
    ] {
        let q = quantized(&mut rng, dtype, n, k);
        let data = q.data().unwrap().into_owned();
        let theirs = QMatMul::from_qtensor(q).unwrap();
        for m in [1, 4, 15] {
            let xv = random(&mut rng, m * k);
            let x = Tensor::from_vec(xv.clone(), (m, k), &Device::Cpu).unwrap();
            let a = time(&|| {
                theirs.forward(&x).unwrap();
            });
            let b = time(&|| {
                let mut dst = vec![0f32; m * n];
                assert!(matvec::matmul(dtype, &data, &xv, m, k, n, &mut dst));
            });
            let gflop = 2.0 * (m * k * n) as f64 / 1e9;
            println!(
                "{dtype:?} m={m} k={k} n={n}: candle {:.3} ms ({:.1} GFLOP/s), ours {:.3} ms ({:.1} GFLOP/s), {:.2}x",
                a * 1e3,
                gflop / a,
                b * 1e3,
                gflop / b,
                a / b
            );
        }
    }
}

/// Candle's kernel and the dequantized tiles on Qwen2.5-0.5B's matrix
/// shapes.
fn batched_speed() {
    println!("batched (prefill): candle against dequantized tiles");
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let time = |f: &dyn Fn()| median_seconds(5, f);
    for (dtype, k, n) in [
        (GgmlDType::Q8_0, 896, 896),
        (GgmlDType::Q8_0, 896, 4864),
        (GgmlDType::Q8_0, 4864, 896),
        (GgmlDType::Q5_0, 896, 4864),
        (GgmlDType::Q4K, 4864, 896),
        (GgmlDType::Q6K, 4864, 896),
    ] {
        let q = std::sync::Arc::new(quantized(&mut rng, dtype, n, k));
        let theirs = QMatMul::from_arc(q.clone()).unwrap();
        for m in [8, 16, 32, 256] {
            let x = Tensor::from_vec(random(&mut rng, m * k), (1, m, k), &Device::Cpu).unwrap();
            let a = time(&|| {
                theirs.forward(&x).unwrap();
            });
            let b = time(&|| {
                batched::forward_cpu(&q, &x).unwrap().unwrap();
            });
            let gflop = 2.0 * (m * k * n) as f64 / 1e9;
            println!(
                "{dtype:?} m={m} k={k} n={n}: candle {:.2} ms ({:.1} GFLOP/s), tiled {:.2} ms ({:.1} GFLOP/s), {:.2}x",
                a * 1e3,
                gflop / a,
                b * 1e3,
                gflop / b,
                a / b
            );
        }
    }
}

/// GB/s of weights per matmul on Qwen2.5 shapes: the interleaved kernels
/// against the per-row kernel (decoding) and candle (prefill).
fn interleaved_speed() {
    if !interleaved::available() {
        println!("interleaved: skipped, this CPU lacks AVX2, FMA or F16C");
        return;
    }
    println!("interleaved: GB/s of weights against the per-row kernel (m < 16) or candle");
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for (dtype, k, n) in [
        (GgmlDType::Q8_0, 896, 4864),
        (GgmlDType::Q8_0, 4864, 896),
        (GgmlDType::Q8_0, 896, 151936),
        (GgmlDType::Q8_0, 1536, 8960),
        (GgmlDType::Q4K, 1536, 8960),
        (GgmlDType::Q4K, 8960, 1536),
        (GgmlDType::Q6K, 8960, 1536),
        (GgmlDType::Q6K, 1536, 151936),
    ] {
        let q = quantized(&mut rng, dtype, n, k);
        let data = q.data().unwrap().to_vec();
        let w = interleaved::Interleaved::new(dtype, &data, n, k).unwrap();
        let candle = QMatMul::from_qtensor(q).unwrap();
        for m in [1, 4, 16, 256] {
            let x = random(&mut rng, m * k);
            let ours = median_seconds(5, &|| {
                let mut dst = vec![0f32; m * n];
                assert!(w.matmul(&x, m, &mut dst));
            });
            let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
            let rows = median_seconds(5, &|| {
                let mut dst = vec![0f32; m * n];
                if m < 16 {
                    assert!(matvec::matmul(dtype, &data, &x, m, k, n, &mut dst));
                } else {
                    candle.forward(&xt).unwrap();
                }
            });
            let gb = data.len() as f64 / 1e9;
            println!(
                "{dtype:?} k={k} n={n} m={m}: interleaved {:.1} GB/s, {} {:.1} GB/s, {:.2}x",
                gb / ours,
                if m < 16 { "per-row" } else { "candle" },
                gb / rows,
                rows / ours
            );
        }
    }
}
