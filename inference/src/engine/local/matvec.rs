//! Q5_0 matmuls for few rows (decoding) on the CPU.
//!
//! llama.cpp's Q4_K_M files for small models (rows of 896, not a multiple
//! of 256) keep many tensors in Q5_0, and candle's Q5_0 × Q8_0 block dot
//! product is scalar: about 2 GFLOP/s, which made decoding those models
//! 4x slower than llama.cpp. Below [`super::batched::MIN_ROWS`] rows each
//! output is still one block dot product per (token, output) pair against
//! the activations quantized to Q8_0 exactly as candle quantizes them
//! (`BlockQ8_0::from_float`), so the result is candle's up to the order of
//! float additions; only the dot product is AVX2 (the 5-bit weights are
//! widened to signed bytes 32 at a time and multiplied with
//! `maddubs`/`madd`, as llama.cpp's `ggml_vec_dot_q5_0_q8_0` does),
//! output rows spread over rayon's threads. Without AVX2, FMA and F16C
//! (and off x86) [`matmul_q5_0`] declines and candle's kernel runs.

use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
use rayon::prelude::*;

/// Values per Q5_0 / Q8_0 block.
const QK: usize = 32;
/// Bytes of one Q5_0 block: f16 scale, 32 high bits, 16 bytes of nibbles.
const Q5_0_BYTES: usize = 22;
/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == Q8_0_BYTES);

/// Output rows per rayon task (weights read per task: ~20-110 KiB at
/// Qwen2.5-0.5B's row lengths).
const CHUNK: usize = 32;

/// Whether [`matmul_q5_0`] has a kernel on this CPU.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dst[m, n] = x[m, k] · w[n, k]ᵀ` with `w` the bytes of `n * k / 32`
/// Q5_0 blocks (row `j` from byte `j * k / 32 * 22`). `false`, `dst`
/// untouched, when there is no kernel for this CPU ([`available`]) or `k`
/// is not a multiple of 32.
pub fn matmul_q5_0(w: &[u8], x: &[f32], m: usize, k: usize, n: usize, dst: &mut [f32]) -> bool {
    assert_eq!(x.len(), m * k, "x is not [{m}, {k}]");
    assert_eq!(dst.len(), m * n, "dst is not [{m}, {n}]");
    if !k.is_multiple_of(QK) || !available() {
        return false;
    }
    let nb = k / QK;
    assert_eq!(w.len(), n * nb * Q5_0_BYTES, "w is not [{n}, {k}] in Q5_0");
    if m == 0 || n == 0 {
        return true;
    }
    // The activations as candle's kernel quantizes them.
    let mut xq = vec![BlockQ8_0::zeros(); m * nb];
    for (row, blocks) in x.chunks_exact(k).zip(xq.chunks_exact_mut(nb)) {
        BlockQ8_0::from_float(row, blocks);
    }
    // SAFETY: `BlockQ8_0` is a `repr(C)` struct of an f16 and 32 i8s,
    // 34 bytes (asserted above: no padding), so its memory is that many
    // initialized bytes per block; `xq` outlives the view.
    let xb = unsafe { std::slice::from_raw_parts(xq.as_ptr().cast::<u8>(), xq.len() * Q8_0_BYTES) };
    if m == 1 {
        dst.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, out)| kernel(w, xb, 1, nb, c * CHUNK, out));
    } else {
        // Per output row its `m` results side by side, then transposed:
        // each weight row is read once for all tokens.
        let mut t = vec![0f32; n * m];
        t.par_chunks_mut(CHUNK * m)
            .enumerate()
            .for_each(|(c, out)| kernel(w, xb, m, nb, c * CHUNK, out));
        for (j, row) in t.chunks_exact(m).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                dst[i * n + j] = v;
            }
        }
    }
    true
}

/// `out[r * m + i]` = row `j0 + r` of `w` · token `i` of `xb`.
fn kernel(w: &[u8], xb: &[u8], m: usize, nb: usize, j0: usize, out: &mut [f32]) {
    let rows = out.len() / m;
    let w = &w[j0 * nb * Q5_0_BYTES..(j0 + rows) * nb * Q5_0_BYTES];
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: only reached through `matmul_q5_0`, which checked
        // `available()`: the CPU has AVX2, FMA and F16C.
        unsafe { x86::rows(w, xb, m, nb, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, xb, nb);
        unreachable!("matmul_q5_0 declines without a kernel")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Q5_0_BYTES, Q8_0_BYTES};
    use std::arch::x86_64::*;

    /// [`super::kernel`] for `w`'s `out.len() / m` rows of `nb` blocks.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows(w: &[u8], xb: &[u8], m: usize, nb: usize, out: &mut [f32]) {
        assert_eq!(w.len(), out.len() / m * nb * Q5_0_BYTES);
        assert_eq!(xb.len(), m * nb * Q8_0_BYTES);
        let row = nb * Q5_0_BYTES;
        for (wr, o) in w.chunks_exact(row).zip(out.chunks_exact_mut(m)) {
            let mut i = 0;
            while i + 4 <= m {
                // SAFETY: same CPU features as this function; the slices
                // have the lengths `dot` needs (asserted above).
                unsafe { dot::<4>(wr, xb, i, nb, &mut o[i..i + 4]) };
                i += 4;
            }
            // SAFETY: as above.
            unsafe {
                match m - i {
                    3 => dot::<3>(wr, xb, i, nb, &mut o[i..]),
                    2 => dot::<2>(wr, xb, i, nb, &mut o[i..]),
                    1 => dot::<1>(wr, xb, i, nb, &mut o[i..]),
                    _ => {}
                }
            }
        }
    }

    /// `out[r]` = the Q5_0 row `wr` (`nb` blocks) · Q8_0 token `i0 + r`
    /// of `xb`, for `r < R`: each weight block is widened once for all
    /// `R` tokens.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `wr` holds `nb` Q5_0 blocks, `xb` at least
    /// `(i0 + R) * nb` Q8_0 blocks, `out` `R` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot<const R: usize>(wr: &[u8], xb: &[u8], i0: usize, nb: usize, out: &mut [f32]) {
        debug_assert!(wr.len() == nb * Q5_0_BYTES && xb.len() >= (i0 + R) * nb * Q8_0_BYTES);
        debug_assert!(out.len() >= R);
        // SAFETY: the CPU features are this function's precondition; every
        // pointer read below is of block `b < nb` of `wr` (22 bytes from
        // `b * 22`) or of token `i0 + r < i0 + R` of `xb` (34 bytes from
        // `((i0 + r) * nb + b) * 34`), inside the slices by the
        // precondition; all loads are unaligned ones.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); R];
            let low = _mm_set1_epi8(0x0F);
            let fill = _mm256_set1_epi8(0xF0u8 as i8);
            let ones = _mm256_set1_epi16(1);
            // Byte `i` of the broadcast qh gets bit `i % 8` of byte `i / 8`.
            let spread = _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            );
            let select = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
            let wp = wr.as_ptr();
            let xp = xb.as_ptr();
            for b in 0..nb {
                let blk = wp.add(b * Q5_0_BYTES);
                let dw = f16(blk.cast::<u16>().read_unaligned());
                let qh = blk.add(2).cast::<u32>().read_unaligned();
                let qs = _mm_loadu_si128(blk.add(6).cast());
                // Values 0..16 from the low nibbles, 16..32 from the high.
                let nib = _mm256_set_m128i(
                    _mm_and_si128(_mm_srli_epi16(qs, 4), low),
                    _mm_and_si128(qs, low),
                );
                // 0xFF where the value's fifth bit is set.
                let bits = _mm256_cmpeq_epi8(
                    _mm256_or_si256(
                        _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), spread),
                        select,
                    ),
                    _mm256_set1_epi64x(-1),
                );
                // nibble | fifth bit << 4, minus 16: the nibble where the
                // bit is set, the nibble with 0xF0 (nibble - 16) where not.
                let q = _mm256_or_si256(nib, _mm256_andnot_si256(bits, fill));
                let aq = _mm256_sign_epi8(q, q);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xblk = xp.add(((i0 + r) * nb + b) * Q8_0_BYTES);
                    let dx = f16(xblk.cast::<u16>().read_unaligned());
                    let y = _mm256_loadu_si256(xblk.add(2).cast());
                    // |q| · (y with q's sign): unsigned × signed bytes,
                    // pairs summed in i16 (at most 2 · 16 · 128: no
                    // saturation), then in i32.
                    let p =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(aq, _mm256_sign_epi8(y, q)), ones);
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(p), *acc);
                }
            }
            for (o, a) in out.iter_mut().zip(acc) {
                let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                *o = _mm_cvtss_f32(s);
            }
        }
    }

    /// An f16's bits as f32.
    ///
    /// # Safety
    /// The CPU must have F16C.
    #[target_feature(enable = "f16c")]
    #[inline]
    unsafe fn f16(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::local::kernel_tests::{max_abs, median_seconds, random};
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use rand::SeedableRng;

    fn ours(q: &QTensor, x: &[f32], m: usize) -> Option<Vec<f32>> {
        let (n, k) = q.shape().dims2().unwrap();
        let mut dst = vec![0f32; m * n];
        matmul_q5_0(&q.data().unwrap(), x, m, k, n, &mut dst).then_some(dst)
    }

    /// Our result and candle's own quantized matmul on the same random
    /// Q5_0 weights, 1 to 15 tokens, odd shapes (an even number of
    /// blocks per row: candle debug-asserts that).
    #[test]
    fn matches_candles_kernel_on_random_data() {
        if !available() {
            eprintln!("no AVX2/FMA/F16C: nothing to compare");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (m, k, n) in [
            (1, 64, 1),
            (1, 896, 131),
            (2, 64, 33),
            (3, 192, 19),
            (4, 896, 77),
            (5, 128, 65),
            (7, 320, 5),
            (8, 896, 40),
            (11, 448, 100),
            (15, 896, 37),
        ] {
            let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
            let x = random(&mut rng, m * k);
            let q = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
            let got = ours(&q, &x, m).expect("handled");
            let xt = Tensor::from_vec(x, (m, k), &Device::Cpu).unwrap();
            let want = QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&xt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
            assert!(
                diff <= 1e-5 * scale,
                "{m}x{k}x{n}: differs by {diff} (largest value {scale})"
            );
        }
    }

    /// `QLinear` sends a few Q5_0 rows of any leading shape here and gets
    /// candle's numbers back in candle's shape.
    #[test]
    fn qlinear_takes_this_path_below_the_threshold() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let (m, k, n) = (3, 256, 24);
        let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(random(&mut rng, m * k), (1, m, k), &Device::Cpu).unwrap();
        let want = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q5_0).unwrap())
            .unwrap()
            .forward(&x)
            .unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
        let lin = super::super::batched::QLinear::from_qtensor(q).unwrap();
        let got = lin.forward(&x).unwrap();
        assert_eq!(got.dims(), &[1, m, n]);
        let diff = max_abs(&(&got - &want).unwrap());
        assert!(diff <= 1e-4, "differs by {diff}");
    }

    #[test]
    fn declines_rows_of_partial_blocks() {
        let mut dst = vec![0f32; 2];
        assert!(!matmul_q5_0(&[], &[0.0; 2 * 40], 2, 40, 1, &mut dst));
    }

    /// Times candle's kernel and ours on Qwen2.5-0.5B's Q5_0 shapes:
    /// `cargo test --release -p clawpen-inference --lib matvec::tests::speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, run by hand in release"]
    fn speed() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let time = |f: &dyn Fn()| median_seconds(9, f);
        for (k, n) in [(896, 896), (896, 128), (896, 4864), (4864, 896)] {
            let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q5_0).unwrap();
            let data = q.data().unwrap().into_owned();
            let theirs = QMatMul::from_qtensor(q).unwrap();
            for m in [1, 4, 8, 15] {
                let xv = random(&mut rng, m * k);
                let x = Tensor::from_vec(xv.clone(), (m, k), &Device::Cpu).unwrap();
                let a = time(&|| {
                    theirs.forward(&x).unwrap();
                });
                let b = time(&|| {
                    let mut dst = vec![0f32; m * n];
                    assert!(matmul_q5_0(&data, &xv, m, k, n, &mut dst));
                });
                let gflop = 2.0 * (m * k * n) as f64 / 1e9;
                println!(
                    "Q5_0 m={m} k={k} n={n}: candle {:.3} ms ({:.1} GFLOP/s), ours {:.3} ms ({:.1} GFLOP/s), {:.2}x",
                    a * 1e3,
                    gflop / a,
                    b * 1e3,
                    gflop / b,
                    a / b
                );
            }
        }
    }
}
