//! What the CPU kernel tests (`attention`, `batched`, `matvec`) share: random inputs,
//! the largest difference from candle's result, and a median timing for
//! the by-hand speed measurements.

use candle_core::Tensor;
use rand::Rng;

/// `len` values uniform in [-1, 1).
pub fn random(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// The largest absolute value of a tensor of any shape.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Median seconds of `runs` calls of `f`, after one warm-up call.
pub fn median_seconds(runs: usize, f: &dyn Fn()) -> f64 {
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
