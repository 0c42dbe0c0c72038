//! What the CPU kernel tests (`attention`, `batched`, `matvec`) share: random inputs
//! and the largest difference from candle's result. Their speed is
//! `benches/kernels.rs`'s.

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
