//! Tokens quantized to Q8_K blocks (256 values: an f32 scale, 256 signed
//! bytes, sums of 16) exactly as candle's `BlockQ8K::from_float` does it,
//! for the Q4_K and Q6_K kernels; [`scaled_bytes`] also ends the Q8_0
//! quantization for the Q8_0 kernels.
//!
//! candle's version is scalar (a libm `roundf` per value) and ran on the
//! calling thread before every matmul while the other rayon threads
//! waited: 5-6% of a decode step of the 1.5B Q4_K_M bench model in a perf
//! profile. This one does the same arithmetic 8 values at a time, with
//! the same rounding (half away from zero) and the same choice of the
//! scale (the first value of the largest magnitude), so the bytes are
//! candle's (a test compares them).

/// Values per block.
pub(super) const BLOCK: usize = 256;

/// `m` tokens of `k` values (a multiple of 256), quantized.
pub(super) struct Q8K {
    /// Token `i`'s values, `k` signed bytes from `i * k`.
    pub q: Vec<i8>,
    /// Per token and block (token-major), the scale.
    pub d: Vec<f32>,
    /// Per token and block, the 16 sums of 16 values.
    pub bsums: Vec<[i16; 16]>,
}

impl Q8K {
    pub fn new(x: &[f32], k: usize) -> Self {
        assert!(k.is_multiple_of(BLOCK) && x.len().is_multiple_of(k));
        let blocks = x.len() / BLOCK;
        let mut q = vec![0i8; x.len()];
        let mut d = vec![0f32; blocks];
        let mut bsums = vec![[0i16; 16]; blocks];
        for (((xs, qs), d), bsums) in x
            .chunks_exact(BLOCK)
            .zip(q.chunks_exact_mut(BLOCK))
            .zip(d.iter_mut())
            .zip(bsums.iter_mut())
        {
            *d = block(xs, qs.try_into().expect("256 values"));
            for (s, q16) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
                *s = q16.iter().map(|&v| v as i16).sum();
            }
        }
        Self { q, d, bsums }
    }
}

/// One block's bytes into `qs`; returns its scale.
fn block(xs: &[f32], qs: &mut [i8; BLOCK]) -> f32 {
    // The first value of the largest magnitude, as candle picks it.
    let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
    if amax == 0.0 {
        qs.fill(0);
        return 0.0;
    }
    let max = *xs
        .iter()
        .find(|x| x.abs() == amax)
        .expect("amax is one of the values");
    let iscale = -127f32 / max;
    scaled_bytes(xs, iscale, qs);
    1.0 / iscale
}

/// `qs[i] = round(scale * xs[i])` clamped to an i8 (which is also what
/// `as i8` does), rounding half away from zero like `f32::round`; the
/// lengths are equal multiples of 32. Both candle quantizers (Q8_K here,
/// Q8_0 for the Q8_0 kernels) end this way.
pub(super) fn scaled_bytes(xs: &[f32], scale: f32, qs: &mut [i8]) {
    assert!(xs.len() == qs.len() && xs.len().is_multiple_of(32));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected; the lengths were checked above.
        unsafe { x86::scaled_bytes(xs, scale, qs) };
        return;
    }
    for (q, &x) in qs.iter_mut().zip(xs) {
        *q = (scale * x).round().clamp(-128.0, 127.0) as i8;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::scaled_bytes`]: the value truncated, plus its sign where
    /// the (exact) remainder is at least one half.
    ///
    /// # Safety
    /// The CPU must have AVX2; `xs` and `qs` equally long, in 32s.
    #[target_feature(enable = "avx2")]
    pub unsafe fn scaled_bytes(xs: &[f32], scale: f32, qs: &mut [i8]) {
        assert!(xs.len() == qs.len() && xs.len().is_multiple_of(32));
        let s = _mm256_set1_ps(scale);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let sign = _mm256_set1_ps(-0.0);
        let lo = _mm256_set1_ps(-128.0);
        let hi = _mm256_set1_ps(127.0);
        for (i, out) in qs.chunks_exact_mut(32).enumerate() {
            let mut ints = [_mm256_setzero_si256(); 4];
            for (j, int) in ints.iter_mut().enumerate() {
                // SAFETY: 8 values from `32i + 8j`, inside `xs` (as long
                // as `qs`, whose 32s `i` counts).
                let v = _mm256_mul_ps(s, unsafe {
                    _mm256_loadu_ps(xs.as_ptr().add(32 * i + 8 * j))
                });
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
                let rest = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
                let away = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GE_OQ>(rest, half),
                    _mm256_or_ps(one, _mm256_and_ps(v, sign)),
                );
                let r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(t, away), lo), hi);
                *int = _mm256_cvtps_epi32(r);
            }
            // i32 -> i16 -> i8 with packs (they interleave 128-bit lanes;
            // the permute puts the 32 bytes back in order).
            let w01 = _mm256_packs_epi32(ints[0], ints[1]);
            let w23 = _mm256_packs_epi32(ints[2], ints[3]);
            let b = _mm256_packs_epi16(w01, w23);
            let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            // SAFETY: `out` is 32 bytes; unaligned store.
            unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), b) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::local::kernel_tests::random;
    use candle_core::quantized::k_quants::{BlockQ8K, GgmlType};
    use rand::SeedableRng;

    /// candle's bytes: values, scales and sums, on random blocks, a zero
    /// block, halves exactly on a rounding tie, and a block whose largest
    /// magnitude comes first as a negative value and later as a positive
    /// one.
    #[test]
    fn same_bytes_as_candle() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        let mut x = random(&mut rng, 6 * BLOCK);
        x[BLOCK..2 * BLOCK].fill(0.0);
        // max = 127 makes iscale = -1: every k + 0.5 is a tie.
        for (i, v) in x[2 * BLOCK..3 * BLOCK].iter_mut().enumerate() {
            *v = (i as f32 - 128.0) / 2.0;
        }
        x[2 * BLOCK] = 127.0;
        x[3 * BLOCK + 5] = -3.0;
        x[3 * BLOCK + 9] = 3.0;
        let ours = Q8K::new(&x, 2 * BLOCK);
        let mut theirs = vec![BlockQ8K::zeros(); 6];
        BlockQ8K::from_float(&x, &mut theirs);
        // SAFETY: `BlockQ8K` is `repr(C)`: f32, 256 i8, 16 i16, no padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                theirs.as_ptr().cast::<u8>(),
                std::mem::size_of_val(&theirs[..]),
            )
        };
        for (b, blk) in bytes.chunks_exact(292).enumerate() {
            assert_eq!(ours.d[b].to_le_bytes(), blk[0..4], "block {b}'s scale");
            let q: Vec<u8> = ours.q[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .map(|&v| v as u8)
                .collect();
            assert_eq!(q, blk[4..260], "block {b}'s values");
            let sums: Vec<u8> = ours.bsums[b].iter().flat_map(|s| s.to_le_bytes()).collect();
            assert_eq!(sums, blk[260..292], "block {b}'s sums");
        }
    }
}
