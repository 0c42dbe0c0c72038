//! Quantized matmuls for few rows (decoding) on the CPU.
//!
//! Below [`super::batched::MIN_ROWS`] rows each output is one block dot
//! product per (token, output) pair against the activations quantized
//! exactly as candle quantizes them (`BlockQ8_0::from_float` for Q5_0 and
//! Q8_0 weights, `BlockQ8K::from_float` for Q4_K and Q6_K), so the result
//! is candle's up to the order of float additions. Why not candle's own
//! kernel:
//! - its Q5_0 × Q8_0 dot product is scalar, about 2 GFLOP/s, which made
//!   decoding llama.cpp's Q4_K_M files of small models (rows of 896, not
//!   a multiple of 256, so many tensors fall back to Q5_0) 4x slower than
//!   llama.cpp;
//! - for 2-15 tokens it reads every weight row once per token; here each
//!   weight block is widened once for up to 4 tokens;
//! - its decode matmuls run on candle's own thread pool, whose workers
//!   spin ~25k rounds after every call, while everything else here (the
//!   Q5_0 and prefill kernels) runs on rayon's: on a machine with as many
//!   cores as threads the two pools' idle spinning took cores from each
//!   other at every switch. With Q8_0, Q4_K and Q6_K here too, a decode
//!   step of a Q8_0 or Q4_K_M model never enters candle's pool.
//!
//! The dot products are AVX2 (FMA and F16C for the scales), written after
//! llama.cpp's / candle's `vec_dot_*` (`maddubs`/`madd` on bytes), output
//! rows spread over rayon's threads. Without those CPU features (and off
//! x86) [`matmul`] declines and candle's kernel runs.

use candle_core::quantized::k_quants::{BlockQ8K, BlockQ8_0, GgmlType};
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

/// Bytes of one Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;
/// Bytes of one Q8_K block: f32 scale, 256 signed bytes, 16 i16 sums of
/// 16 values each.
const Q8K_BYTES: usize = 292;
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == Q8_0_BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == Q8K_BYTES);

/// Weight bytes per rayon task: big enough that a task's scheduling is
/// noise next to its reads, small enough that a 896-row matrix still
/// splits into ~10 tasks for 2-4 threads.
const TASK_BYTES: usize = 48 * 1024;

/// A weight block type with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Q5_0,
    Q8_0,
    Q4K,
    Q6K,
}

impl Format {
    fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q5_0 => Some(Self::Q5_0),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            GgmlDType::Q4K => Some(Self::Q4K),
            GgmlDType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Values per block, of the weights and of the activations' blocks.
    fn values(self) -> usize {
        match self {
            Self::Q5_0 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q6K => 256,
        }
    }

    /// Bytes per weight block.
    fn bytes(self) -> usize {
        match self {
            // f16 scale, 32 high bits, 16 bytes of nibbles.
            Self::Q5_0 => 22,
            Self::Q8_0 => Q8_0_BYTES,
            // f16 scale and min, 12 bytes of 6-bit sub-scales and mins,
            // 128 bytes of nibbles.
            Self::Q4K => 144,
            // 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 i8
            // sub-scales, f16 scale.
            Self::Q6K => 210,
        }
    }
}

/// Whether this CPU has the kernels ([`matmul`] declines otherwise).
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

/// Whether [`matmul`] takes weights of `dtype` on this CPU.
pub fn handles(dtype: GgmlDType) -> bool {
    Format::of(dtype).is_some() && available()
}

/// `dst[m, n] = x[m, k] · w[n, k]ᵀ` with `w` the bytes of an `[n, k]`
/// matrix of `dtype` blocks (Q5_0, Q8_0, Q4_K or Q6_K; row `j` from byte
/// `j * k / values per block * bytes per block`). `false`, `dst`
/// untouched, when there is no kernel for `dtype` or this CPU
/// ([`handles`]) or `k` is not a whole number of blocks.
pub fn matmul(
    dtype: GgmlDType,
    w: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
) -> bool {
    assert_eq!(x.len(), m * k, "x is not [{m}, {k}]");
    assert_eq!(dst.len(), m * n, "dst is not [{m}, {n}]");
    let Some(f) = Format::of(dtype) else {
        return false;
    };
    if !k.is_multiple_of(f.values()) || !available() {
        return false;
    }
    let nb = k / f.values();
    assert_eq!(
        w.len(),
        n * nb * f.bytes(),
        "w is not [{n}, {k}] in {dtype:?}"
    );
    if m == 0 || n == 0 {
        return true;
    }
    // The activations as candle's kernel quantizes them.
    let xb = match f {
        Format::Q5_0 | Format::Q8_0 => quantize::<BlockQ8_0>(x, m, k),
        Format::Q4K | Format::Q6K => quantize::<BlockQ8K>(x, m, k),
    };
    let chunk = (TASK_BYTES / (nb * f.bytes())).max(4);
    if m == 1 {
        dst.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(c, out)| kernel(f, w, &xb, 1, nb, c * chunk, out));
    } else {
        // Per output row its `m` results side by side, then transposed:
        // each weight row is read once for all tokens.
        let mut t = vec![0f32; n * m];
        t.par_chunks_mut(chunk * m)
            .enumerate()
            .for_each(|(c, out)| kernel(f, w, &xb, m, nb, c * chunk, out));
        for (j, row) in t.chunks_exact(m).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                dst[i * n + j] = v;
            }
        }
    }
    true
}

/// The `m` rows of `x` (each `k` long) in blocks of `B`, as bytes.
fn quantize<B: GgmlType>(x: &[f32], m: usize, k: usize) -> Vec<u8> {
    let nb = k / B::BLCK_SIZE;
    let mut q = vec![B::zeros(); m * nb];
    for (row, blocks) in x.chunks_exact(k).zip(q.chunks_exact_mut(nb)) {
        B::from_float(row, blocks);
    }
    // SAFETY: `B` is one of candle's activation block types, `repr(C)`
    // structs of an f16/f32 scale, i8s and (Q8_K) i16s with no padding
    // (their sizes are asserted above), so `q`'s memory is that many
    // initialized bytes; the view ends before `q` is dropped.
    unsafe { std::slice::from_raw_parts(q.as_ptr().cast::<u8>(), std::mem::size_of_val(&q[..])) }
        .to_vec()
}

/// `out[r * m + i]` = row `j0 + r` of `w` · token `i` of `xb`.
fn kernel(f: Format, w: &[u8], xb: &[u8], m: usize, nb: usize, j0: usize, out: &mut [f32]) {
    let rows = out.len() / m;
    let row = nb * f.bytes();
    let w = &w[j0 * row..(j0 + rows) * row];
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: only reached through `matmul`, which checked
        // `available()`: the CPU has AVX2, FMA and F16C.
        unsafe { x86::rows(f, w, xb, m, nb, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, xb);
        unreachable!("matmul declines without a kernel")
    }
}

/// The attention's decoding kernel sums its lanes the same way.
#[cfg(target_arch = "x86_64")]
pub(super) use x86::hsum;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Format, Q8K_BYTES, Q8_0_BYTES};
    use std::arch::x86_64::*;

    /// `W` consecutive weight rows (`nb` blocks each) · tokens
    /// `i0..i0 + R` of the quantized activations (`m` tokens in all):
    /// `out[w * m + i0 + r]`.
    type Dot = unsafe fn(w: &[u8], xb: &[u8], i0: usize, nb: usize, m: usize, out: &mut [f32]);

    /// [`super::kernel`] for `w`'s `out.len() / m` rows of `nb` blocks.
    /// One token: four weight rows at a time, whose independent sums keep
    /// the core's multiply-adders busy (one row's sum is a chain of
    /// dependent additions). More tokens: one row at a time, each weight
    /// block decoded once for up to four tokens.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows(f: Format, w: &[u8], xb: &[u8], m: usize, nb: usize, out: &mut [f32]) {
        // One row with 1-4 tokens, or four rows with one token.
        macro_rules! dots {
            ($k:ident) => {
                [$k::<1, 1>, $k::<1, 2>, $k::<1, 3>, $k::<1, 4>, $k::<4, 1>]
            };
        }
        let (dots, xbytes): ([Dot; 5], usize) = match f {
            Format::Q5_0 => (dots!(q5_0), Q8_0_BYTES),
            Format::Q8_0 => (dots!(q8_0), Q8_0_BYTES),
            Format::Q4K => (dots!(q4k), Q8K_BYTES),
            Format::Q6K => (dots!(q6k), Q8K_BYTES),
        };
        let row = nb * f.bytes();
        assert_eq!(w.len(), out.len() / m * row);
        assert_eq!(xb.len(), m * nb * xbytes);
        let mut done = 0;
        if m == 1 {
            for (wr, o) in w.chunks_exact(4 * row).zip(out.chunks_exact_mut(4)) {
                // SAFETY: same CPU features as this function; `wr` is four
                // rows of `nb` blocks of `f`, `xb` one token of `nb`
                // blocks of `f`'s activation type (asserted above), `o`
                // four values.
                unsafe { dots[4](wr, xb, 0, nb, 1, o) };
            }
            done = out.len() / 4 * 4;
        }
        for (wr, o) in w[done * row..]
            .chunks_exact(row)
            .zip(out[done * m..].chunks_exact_mut(m))
        {
            let mut i = 0;
            while i < m {
                let r = (m - i).min(4);
                // SAFETY: same CPU features as this function; `wr` is one
                // row of `nb` blocks of `f`, `xb` holds `m >= i + r`
                // tokens of `nb` blocks of `f`'s activation type (asserted
                // above) and `o` `m` values.
                unsafe { dots[r - 1](wr, xb, i, nb, m, o) };
                i += r;
            }
        }
    }

    /// Checks what every [`Dot`] relies on: `W` rows of `wbytes`-byte
    /// blocks, `i0 + R` tokens of `xbytes`-byte blocks, `W` rows of `m`
    /// outputs.
    #[allow(clippy::too_many_arguments)]
    fn check<const W: usize, const R: usize>(
        w: &[u8],
        wbytes: usize,
        xb: &[u8],
        xbytes: usize,
        i0: usize,
        nb: usize,
        m: usize,
        out: &[f32],
    ) {
        assert!(
            w.len() >= W * nb * wbytes
                && xb.len() >= (i0 + R) * nb * xbytes
                && i0 + R <= m
                && out.len() >= (W - 1) * m + i0 + R
        );
    }

    /// Asks for the `W` rows after `w`'s `W` (the next call's) to be
    /// pulled into cache, the part as far along as block `b` of `nb`:
    /// rows are short (1-10 KiB), and left to the hardware prefetcher the
    /// one-token Q8_0 matmul of Qwen2.5-0.5B's output (151936 rows of 952
    /// bytes) read 7 GB/s on one core, 16 GB/s with this.
    #[inline(always)]
    fn prefetch_next<const W: usize>(w: *const u8, block: usize, nb: usize, b: usize) {
        // `wrapping_add`: past the matrix's end the address is never
        // dereferenced, and a prefetch of any address cannot fault.
        let at = w.wrapping_add(W * nb * block + b * W * block);
        let mut off = 0;
        while off < W * block {
            // SAFETY: `_mm_prefetch` only hints the cache; it reads
            // nothing architecturally and never faults, and SSE is part
            // of x86_64's baseline.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off).cast()) };
            off += 64;
        }
    }

    /// The horizontal sum of 8 floats (also the attention's).
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum(a: __m256) -> f32 {
        hsum4(_mm_add_ps(
            _mm256_castps256_ps128(a),
            _mm256_extractf128_ps(a, 1),
        ))
    }

    /// The horizontal sum of 4 floats.
    #[target_feature(enable = "avx2,fma")]
    fn hsum4(s: __m128) -> f32 {
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// An f16's bits as f32.
    #[target_feature(enable = "f16c")]
    fn f16(bits: u16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    /// Q5_0 weights · Q8_0 tokens ([`Dot`]): the 5-bit weights are widened
    /// to signed bytes 32 at a time once for all `R` tokens.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the slices as [`check`] asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_0<const W: usize, const R: usize>(
        w: &[u8],
        xb: &[u8],
        i0: usize,
        nb: usize,
        m: usize,
        out: &mut [f32],
    ) {
        check::<W, R>(w, 22, xb, Q8_0_BYTES, i0, nb, m, out);
        let mut acc = [[_mm256_setzero_ps(); R]; W];
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
        let wp = w.as_ptr();
        let xp = xb.as_ptr();
        // SAFETY: every read below is of block `b < nb` of row `v < W` of
        // `w` (22 bytes from `(v * nb + b) * 22`) or of token
        // `i0 + r < i0 + R` of `xb` (34 bytes from
        // `((i0 + r) * nb + b) * 34`), inside the slices as `check`
        // asserted; all loads are unaligned ones.
        unsafe {
            for b in 0..nb {
                prefetch_next::<W>(wp, 22, nb, b);
                for (v, acc) in acc.iter_mut().enumerate() {
                    let blk = wp.add((v * nb + b) * 22);
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
                        let p = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(aq, _mm256_sign_epi8(y, q)),
                            ones,
                        );
                        *acc =
                            _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(p), *acc);
                    }
                }
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            for (r, a) in acc.iter().enumerate() {
                out[v * m + i0 + r] = hsum(*a);
            }
        }
    }

    /// Q8_0 weights · Q8_0 tokens ([`Dot`]), as candle's
    /// `vec_dot_q8_0_q8_0`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the slices as [`check`] asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0<const W: usize, const R: usize>(
        w: &[u8],
        xb: &[u8],
        i0: usize,
        nb: usize,
        m: usize,
        out: &mut [f32],
    ) {
        check::<W, R>(w, Q8_0_BYTES, xb, Q8_0_BYTES, i0, nb, m, out);
        let mut acc = [[_mm256_setzero_ps(); R]; W];
        let ones = _mm256_set1_epi16(1);
        let wp = w.as_ptr();
        let xp = xb.as_ptr();
        // SAFETY: every read is of block `b < nb` of row `v < W` of `w` or
        // of token `i0 + r < i0 + R` of `xb`, 34 bytes each, inside the
        // slices as `check` asserted; all loads are unaligned ones.
        unsafe {
            for b in 0..nb {
                prefetch_next::<W>(wp, Q8_0_BYTES, nb, b);
                for (v, acc) in acc.iter_mut().enumerate() {
                    let blk = wp.add((v * nb + b) * Q8_0_BYTES);
                    let dw = f16(blk.cast::<u16>().read_unaligned());
                    let q = _mm256_loadu_si256(blk.add(2).cast());
                    let aq = _mm256_sign_epi8(q, q);
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xblk = xp.add(((i0 + r) * nb + b) * Q8_0_BYTES);
                        let dx = f16(xblk.cast::<u16>().read_unaligned());
                        let y = _mm256_loadu_si256(xblk.add(2).cast());
                        // |q| ≤ 127 (both sides come from rounding
                        // x · 127 / max|x|): pairs of products fit i16.
                        let p = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(aq, _mm256_sign_epi8(y, q)),
                            ones,
                        );
                        *acc =
                            _mm256_fmadd_ps(_mm256_set1_ps(dw * dx), _mm256_cvtepi32_ps(p), *acc);
                    }
                }
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            for (r, a) in acc.iter().enumerate() {
                out[v * m + i0 + r] = hsum(*a);
            }
        }
    }

    /// Q4_K weights · Q8_K tokens ([`Dot`]), as candle's
    /// `vec_dot_q4k_q8k`: per 256-block, 8 sub-blocks of 32 nibbles with
    /// a 6-bit scale and a 6-bit min each; the mins meet the tokens'
    /// precomputed 16-value sums.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the slices as [`check`] asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4k<const W: usize, const R: usize>(
        w: &[u8],
        xb: &[u8],
        i0: usize,
        nb: usize,
        m: usize,
        out: &mut [f32],
    ) {
        check::<W, R>(w, 144, xb, Q8K_BYTES, i0, nb, m, out);
        const KMASK1: u32 = 0x3f3f3f3f;
        const KMASK2: u32 = 0x0f0f0f0f;
        const KMASK3: u32 = 0x03030303;
        let mut acc = [[_mm256_setzero_ps(); R]; W];
        let mut acc_m = [[_mm_setzero_ps(); R]; W];
        let m4 = _mm256_set1_epi8(0x0F);
        let wp = w.as_ptr();
        let xp = xb.as_ptr();
        // SAFETY: every read is of block `b < nb` of row `v < W` of `w`
        // (144 bytes from `(v * nb + b) * 144`) or of token
        // `i0 + r < i0 + R` of `xb` (292 bytes from
        // `((i0 + r) * nb + b) * 292`), inside the slices as `check`
        // asserted; all loads are unaligned ones.
        unsafe {
            for b in 0..nb {
                prefetch_next::<W>(wp, 144, nb, b);
                for v in 0..W {
                    let blk = wp.add((v * nb + b) * 144);
                    let dw = f16(blk.cast::<u16>().read_unaligned());
                    let dminw = f16(blk.add(2).cast::<u16>().read_unaligned());
                    let s = blk.add(4).cast::<u32>();
                    let (u0, u1, u2) = (
                        s.read_unaligned(),
                        s.add(1).read_unaligned(),
                        s.add(2).read_unaligned(),
                    );
                    // ggml's unpacking: bytes 0..8 the scales, 8..16 the mins.
                    let u = [
                        u0 & KMASK1,
                        (u2 & KMASK2) | (((u0 >> 6) & KMASK3) << 4),
                        u1 & KMASK1,
                        ((u2 >> 4) & KMASK2) | (((u1 >> 6) & KMASK3) << 4),
                    ];
                    let mut sc = [0u8; 16];
                    for (c, u) in sc.chunks_exact_mut(4).zip(u) {
                        c.copy_from_slice(&u.to_le_bytes());
                    }
                    let mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, u[3] as i32, u[2] as i32));
                    let mut sumi = [_mm256_setzero_si256(); R];
                    for j in 0..4 {
                        let scale_l = _mm256_set1_epi16(sc[2 * j] as i16);
                        let scale_h = _mm256_set1_epi16(sc[2 * j + 1] as i16);
                        let bits = _mm256_loadu_si256(blk.add(16 + 32 * j).cast());
                        let ql = _mm256_and_si256(bits, m4);
                        let qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                        for (r, sumi) in sumi.iter_mut().enumerate() {
                            let y = xp.add(((i0 + r) * nb + b) * Q8K_BYTES + 4 + 64 * j);
                            let pl = _mm256_madd_epi16(
                                scale_l,
                                _mm256_maddubs_epi16(ql, _mm256_loadu_si256(y.cast())),
                            );
                            let ph = _mm256_madd_epi16(
                                scale_h,
                                _mm256_maddubs_epi16(qh, _mm256_loadu_si256(y.add(32).cast())),
                            );
                            *sumi = _mm256_add_epi32(*sumi, _mm256_add_epi32(pl, ph));
                        }
                    }
                    for (r, sumi) in sumi.iter().enumerate() {
                        let xblk = xp.add(((i0 + r) * nb + b) * Q8K_BYTES);
                        let dx = xblk.cast::<f32>().read_unaligned();
                        let sums = _mm256_loadu_si256(xblk.add(260).cast());
                        let sums = _mm_hadd_epi16(
                            _mm256_castsi256_si128(sums),
                            _mm256_extracti128_si256(sums, 1),
                        );
                        let prod = _mm_madd_epi16(mins, sums);
                        acc_m[v][r] = _mm_fmadd_ps(
                            _mm_set1_ps(-dx * dminw),
                            _mm_cvtepi32_ps(prod),
                            acc_m[v][r],
                        );
                        acc[v][r] = _mm256_fmadd_ps(
                            _mm256_set1_ps(dx * dw),
                            _mm256_cvtepi32_ps(*sumi),
                            acc[v][r],
                        );
                    }
                }
            }
        }
        for v in 0..W {
            for r in 0..R {
                out[v * m + i0 + r] = hsum(acc[v][r]) + hsum4(acc_m[v][r]);
            }
        }
    }

    /// Q6_K weights · Q8_K tokens ([`Dot`]), as candle's
    /// `vec_dot_q6k_q8k`: per 256-block, 6-bit values (4 low bits, 2 high
    /// bits elsewhere) minus 32, an i8 scale per 16 values.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the slices as [`check`] asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6k<const W: usize, const R: usize>(
        w: &[u8],
        xb: &[u8],
        i0: usize,
        nb: usize,
        m: usize,
        out: &mut [f32],
    ) {
        check::<W, R>(w, 210, xb, Q8K_BYTES, i0, nb, m, out);
        let mut acc = [[_mm256_setzero_ps(); R]; W];
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(3);
        let wp = w.as_ptr();
        let xp = xb.as_ptr();
        // SAFETY: every read is of block `b < nb` of row `v < W` of `w`
        // (210 bytes from `(v * nb + b) * 210`) or of token
        // `i0 + r < i0 + R` of `xb` (292 bytes from
        // `((i0 + r) * nb + b) * 292`), inside the slices as `check`
        // asserted; all loads are unaligned ones.
        unsafe {
            for b in 0..nb {
                prefetch_next::<W>(wp, 210, nb, b);
                for (v, acc) in acc.iter_mut().enumerate() {
                    let blk = wp.add((v * nb + b) * 210);
                    let dw = f16(blk.add(208).cast::<u16>().read_unaligned());
                    let sc = blk.add(192).cast::<i8>();
                    let mut sumi = [_mm256_setzero_si256(); R];
                    for j in 0..2 {
                        let lo1 = _mm256_loadu_si256(blk.add(64 * j).cast());
                        let lo2 = _mm256_loadu_si256(blk.add(64 * j + 32).cast());
                        let hi = _mm256_loadu_si256(blk.add(128 + 32 * j).cast());
                        // The 2 high bits of each value, shifted to bits 4-5.
                        let h0 = _mm256_slli_epi16(_mm256_and_si256(hi, m2), 4);
                        let h1 =
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, 2), m2), 4);
                        let h2 =
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, 4), m2), 4);
                        let h3 =
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hi, 6), m2), 4);
                        // Values 0..32, 32..64, 64..96, 96..128 of this half,
                        // unsigned 0..64 (the -32 comes after, from the sums).
                        let q = [
                            _mm256_or_si256(_mm256_and_si256(lo1, m4), h0),
                            _mm256_or_si256(_mm256_and_si256(lo2, m4), h1),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo1, 4), m4), h2),
                            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lo2, 4), m4), h3),
                        ];
                        // Per 32 values two scales, one per 16: 8 i16 each.
                        let mut s = [_mm256_setzero_si256(); 4];
                        for (t, s) in s.iter_mut().enumerate() {
                            let at = 8 * j + 2 * t;
                            *s = _mm256_set_m128i(
                                _mm_set1_epi16(sc.add(at + 1).read() as i16),
                                _mm_set1_epi16(sc.add(at).read() as i16),
                            );
                        }
                        for (r, sumi) in sumi.iter_mut().enumerate() {
                            let y = xp.add(((i0 + r) * nb + b) * Q8K_BYTES + 4 + 128 * j);
                            for t in 0..4 {
                                let yv = _mm256_loadu_si256(y.add(32 * t).cast());
                                // q · y per pair, q unsigned 0..64: 2 · 63 · 127
                                // fits i16; the -32 comes after the loop.
                                let p = _mm256_maddubs_epi16(q[t], yv);
                                *sumi = _mm256_add_epi32(*sumi, _mm256_madd_epi16(s[t], p));
                            }
                        }
                    }
                    // The -32 of every value, once per block: 32 · Σ scale ·
                    // (sum of its 16 token values, precomputed in the Q8_K
                    // block); at most 32 · 16 · 128 · 16 · 127, in i32.
                    let scales = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let xblk = xp.add(((i0 + r) * nb + b) * Q8K_BYTES);
                        let sums = _mm256_loadu_si256(xblk.add(260).cast());
                        let offset = _mm256_slli_epi32(_mm256_madd_epi16(scales, sums), 5);
                        let dx = xblk.cast::<f32>().read_unaligned();
                        *acc = _mm256_fmadd_ps(
                            _mm256_set1_ps(dx * dw),
                            _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[r], offset)),
                            *acc,
                        );
                    }
                }
            }
        }
        for (v, acc) in acc.iter().enumerate() {
            for (r, a) in acc.iter().enumerate() {
                out[v * m + i0 + r] = hsum(*a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::local::kernel_tests::{max_abs, random};
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use rand::SeedableRng;

    fn ours(q: &QTensor, x: &[f32], m: usize) -> Option<Vec<f32>> {
        let (n, k) = q.shape().dims2().unwrap();
        let mut dst = vec![0f32; m * n];
        matmul(q.dtype(), &q.data().unwrap(), x, m, k, n, &mut dst).then_some(dst)
    }

    /// Odd shapes, 1 to 15 tokens: (m, k, n) with `k` a multiple of
    /// `block` (32 or 256) and an even number of blocks per row for the
    /// 32-value types (candle debug-asserts that).
    fn shapes(block: usize) -> Vec<(usize, usize, usize)> {
        let b = |blocks: usize| blocks * block;
        if block == 32 {
            vec![
                (1, b(2), 1),
                (1, 896, 131),
                (2, b(2), 33),
                (3, b(6), 19),
                (4, 896, 77),
                (5, b(4), 65),
                (7, b(10), 5),
                (8, 896, 40),
                (11, b(14), 100),
                (15, 896, 37),
            ]
        } else {
            vec![
                (1, b(1), 1),
                (1, b(3), 131),
                (2, b(1), 33),
                (3, b(2), 19),
                (4, b(6), 77),
                (4, b(2), 48),
                (5, b(1), 65),
                (7, b(5), 5),
                (8, b(3), 40),
                (11, b(1), 100),
                (15, b(2), 37),
            ]
        }
    }

    /// Our result and candle's own quantized matmul on the same random
    /// weights, per block type, 1 to 15 tokens, odd shapes.
    #[test]
    fn matches_candles_kernel_on_random_data() {
        if !available() {
            eprintln!("no AVX2/FMA/F16C: nothing to compare");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (dtype, block) in [
            (GgmlDType::Q5_0, 32),
            (GgmlDType::Q8_0, 32),
            (GgmlDType::Q4K, 256),
            (GgmlDType::Q6K, 256),
        ] {
            for (m, k, n) in shapes(block) {
                let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
                let x = random(&mut rng, m * k);
                let q = QTensor::quantize(&w, dtype).unwrap();
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
                    "{dtype:?} {m}x{k}x{n}: differs by {diff} (largest value {scale})"
                );
            }
        }
    }

    /// `QLinear` sends a few rows of any leading shape here and gets
    /// candle's numbers back in candle's shape.
    #[test]
    fn qlinear_takes_this_path_below_the_threshold() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let (m, k, n) = (3, 512, 24);
        for dtype in [
            GgmlDType::Q5_0,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
            let x = Tensor::from_vec(random(&mut rng, m * k), (1, m, k), &Device::Cpu).unwrap();
            let want = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap())
                .unwrap()
                .forward(&x)
                .unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let lin = super::super::batched::QLinear::from_qtensor(q).unwrap();
            let got = lin.forward(&x).unwrap();
            assert_eq!(got.dims(), &[1, m, n]);
            let diff = max_abs(&(&got - &want).unwrap());
            assert!(diff <= 1e-4, "{dtype:?} differs by {diff}");
        }
    }

    #[test]
    fn declines_partial_blocks_and_other_types() {
        let mut dst = vec![0f32; 2];
        assert!(!matmul(
            GgmlDType::Q5_0,
            &[],
            &[0.0; 2 * 40],
            2,
            40,
            1,
            &mut dst
        ));
        assert!(!matmul(
            GgmlDType::Q4K,
            &[],
            &[0.0; 2 * 288],
            2,
            288,
            1,
            &mut dst
        ));
        assert!(!matmul(
            GgmlDType::Q4_0,
            &[],
            &[0.0; 2 * 64],
            2,
            64,
            1,
            &mut dst
        ));
        assert!(!handles(GgmlDType::F16));
    }
}
