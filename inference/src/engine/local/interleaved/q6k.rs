//! Q6_K in the interleaved layout: 4 rows per 256-value block.
//!
//! A Q6_K value is 4 low bits (`ql`) and 2 high bits (`qh`), minus 32,
//! times a signed 8-bit scale per 16 values and the block's f16 `d`. In
//! the file, half `h` (values 128h..128h+128) of a row takes `ql` bytes
//! 64h.. and `qh` bytes 32h..; its value `32q + l` (quarter `q`, `l` in
//! 0..32) is in byte `l` (q = 0, 2: low / high nibble) or `l + 32`
//! (q = 1, 3) of the `ql` part, with high bits `2q..2q+2` of `qh` byte `l`.
//!
//! ```text
//! group g, block b (840 bytes, at (g * blocks per row + b) * 840):
//!   [0..8)      f16 d of the 4 rows
//!   [8..72)     scales: per half h, 32 bytes: the 8 of rows 0 and 1,
//!               then the 8 of rows 2 and 3 (one 128-bit lane per pair)
//!   [72..840)   per half h and chunk c (0..4) 96 bytes: for each row its
//!               ql bytes 8c..8c+8, then each row's ql bytes 32+8c..,
//!               then each row's qh bytes 8c..
//! ```
//!
//! The same bytes as the file's 4 x 210, rearranged. One chunk's three
//! 32-byte loads give 8 values of each quarter for 4 rows, unsigned
//! (0..64); the -32 comes back out through the token's 16-value sums.

use super::q8k::Q8K;
use super::ROWS;

/// Values per block.
pub(super) const BLOCK: usize = 256;
/// Bytes of one Q6_K block in the file.
pub(super) const FILE_BLOCK: usize = 210;
/// Bytes of one group's block here.
pub(super) const GROUP_BLOCK: usize = ROWS * FILE_BLOCK;

/// Row `r`'s block `blk` of the file into its group block `o`.
pub(super) fn put_row(o: &mut [u8], r: usize, blk: &[u8]) {
    let (ql, qh, scales, d) = (&blk[0..128], &blk[128..192], &blk[192..208], &blk[208..210]);
    o[2 * r..2 * r + 2].copy_from_slice(d);
    for h in 0..2 {
        let to = 8 + 32 * h + 16 * (r / 2) + 8 * (r % 2);
        o[to..to + 8].copy_from_slice(&scales[8 * h..8 * h + 8]);
        for c in 0..4 {
            let base = 72 + 384 * h + 96 * c + 8 * r;
            o[base..base + 8].copy_from_slice(&ql[64 * h + 8 * c..][..8]);
            o[base + 32..base + 40].copy_from_slice(&ql[64 * h + 32 + 8 * c..][..8]);
            o[base + 64..base + 72].copy_from_slice(&qh[32 * h + 8 * c..][..8]);
        }
    }
}

/// The tokens quantized as candle quantizes them for Q6_K weights.
pub(super) struct Activations {
    pub m: usize,
    /// Token `i`'s values, `k` signed bytes from `i * k`.
    pub q: Vec<i8>,
    /// Token `i`'s block scales from `i * nb`.
    pub d: Vec<f32>,
    /// Per token and block, the 16-value sums of each half, twice (the
    /// two 128-bit lanes of the kernel's offset products).
    pub sums: Vec<[[i16; 16]; 2]>,
}

impl Activations {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        let Q8K { q, d, bsums } = Q8K::new(x, k);
        let sums = bsums
            .iter()
            .map(|b| {
                let mut s = [[0i16; 16]; 2];
                for (h, half) in s.iter_mut().enumerate() {
                    half[..8].copy_from_slice(&b[8 * h..8 * h + 8]);
                    half[8..].copy_from_slice(&b[8 * h..8 * h + 8]);
                }
                s
            })
            .collect();
        Self { m, q, d, sums }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::super::x86::{each_group, prefetch_ahead};
    use super::super::Columns;
    use super::{Activations, BLOCK, GROUP_BLOCK};
    use std::arch::x86_64::*;

    type Group = super::super::x86::Group<Activations>;

    /// All groups of `w` · all tokens of `act`, into `out`.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C, and AVX-512 VNNI and VL when
    /// `vnni` is true.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn groups(w: &[u8], act: &Activations, nb: usize, vnni: bool, out: &mut Columns) {
        let m = act.m;
        let group_bytes = nb * GROUP_BLOCK;
        assert!(act.q.len() >= m * nb * BLOCK && act.d.len() >= m * nb && act.sums.len() >= m * nb);
        let kernels: [Group; 2] = if vnni {
            [group_vnni::<1>, group_vnni::<2>]
        } else {
            [group_avx2::<1>, group_avx2::<2>]
        };
        // SAFETY: as this function's contract, sizes asserted above.
        unsafe { each_group(w, group_bytes, act, m, nb, &kernels, out) };
    }

    /// The kernel body, for one way of summing unsigned weight bytes times
    /// signed token bytes into i32 lanes (`$dot(acc, w, x)`).
    macro_rules! group_body {
        ($w:ident, $act:ident, $i0:ident, $nb:ident, $j:ident, $out:ident, $R:ident, $dot:expr) => {{
            let mut acc = [_mm256_setzero_ps(); $R];
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(3);
            let xq = $act.q.as_ptr().cast::<u8>();
            let order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
            // Sub-block `t`'s scale of each row in the top byte of its two
            // i32 lanes (then shifted down with its sign).
            let pick = |t: i32| {
                let word = |byte: i32| (byte << 24) | 0x0080_8080;
                _mm256_setr_epi32(
                    word(t),
                    word(t),
                    word(8 + t),
                    word(8 + t),
                    word(t),
                    word(t),
                    word(8 + t),
                    word(8 + t),
                )
            };
            // SAFETY: block `b < nb` of the group is GROUP_BLOCK bytes from
            // `b * GROUP_BLOCK`; token `i0 + t < act.m` has `nb * 256`
            // values from `(i0 + t) * nb * 256` and `nb` scales and sums
            // from `(i0 + t) * nb` (the caller's contract); loads are
            // unaligned ones.
            unsafe {
                for b in 0..$nb {
                    let blk = $w.add(b * GROUP_BLOCK);
                    prefetch_ahead(blk, GROUP_BLOCK, 4);
                    let mut isum = [_mm256_setzero_si256(); $R];
                    for h in 0..2 {
                        let scales = _mm256_loadu_si256(blk.add(8 + 32 * h).cast());
                        for cp in 0..2 {
                            // Per quarter, sub-block 2q + cp of this half.
                            let mut sub = [[_mm256_setzero_si256(); 4]; $R];
                            for c in [2 * cp, 2 * cp + 1] {
                                let at = blk.add(72 + 384 * h + 96 * c);
                                let a = _mm256_loadu_si256(at.cast());
                                let bq = _mm256_loadu_si256(at.add(32).cast());
                                let hb = _mm256_loadu_si256(at.add(64).cast());
                                let hi = |s: i32| {
                                    let v = match s {
                                        0 => hb,
                                        2 => _mm256_srli_epi16(hb, 2),
                                        4 => _mm256_srli_epi16(hb, 4),
                                        _ => _mm256_srli_epi16(hb, 6),
                                    };
                                    _mm256_slli_epi16(_mm256_and_si256(v, m2), 4)
                                };
                                let v = [
                                    _mm256_or_si256(_mm256_and_si256(a, m4), hi(0)),
                                    _mm256_or_si256(_mm256_and_si256(bq, m4), hi(2)),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16(a, 4), m4),
                                        hi(4),
                                    ),
                                    _mm256_or_si256(
                                        _mm256_and_si256(_mm256_srli_epi16(bq, 4), m4),
                                        hi(6),
                                    ),
                                ];
                                for (t, sub) in sub.iter_mut().enumerate() {
                                    let base = (($i0 + t) * $nb + b) * BLOCK + 128 * h + 8 * c;
                                    for (q, (s, v)) in sub.iter_mut().zip(v).enumerate() {
                                        let x = _mm256_set1_epi64x(
                                            xq.add(base + 32 * q).cast::<i64>().read_unaligned(),
                                        );
                                        *s = $dot(*s, v, x);
                                    }
                                }
                            }
                            for q in 0..4 {
                                let sc = _mm256_srai_epi32(
                                    _mm256_shuffle_epi8(scales, pick((2 * q + cp) as i32)),
                                    24,
                                );
                                for t in 0..$R {
                                    isum[t] = _mm256_add_epi32(
                                        isum[t],
                                        _mm256_mullo_epi32(sub[t][q], sc),
                                    );
                                }
                            }
                        }
                    }
                    // The -32: each row's scales times the token's 16-value sums.
                    let s0 = _mm256_loadu_si256(blk.add(8).cast());
                    let s1 = _mm256_loadu_si256(blk.add(40).cast());
                    let wide = |s: __m256i, lane: i32| {
                        _mm256_cvtepi8_epi16(if lane == 0 {
                            _mm256_castsi256_si128(s)
                        } else {
                            _mm256_extracti128_si256(s, 1)
                        })
                    };
                    let (s0lo, s0hi, s1lo, s1hi) =
                        (wide(s0, 0), wide(s0, 1), wide(s1, 0), wide(s1, 1));
                    let ds = _mm_loadl_epi64(blk.cast());
                    let d = _mm256_cvtph_ps(_mm_unpacklo_epi16(ds, ds));
                    for t in 0..$R {
                        let at = ($i0 + t) * $nb + b;
                        let sums = $act.sums.get_unchecked(at);
                        let b0 = _mm256_loadu_si256(sums[0].as_ptr().cast());
                        let b1 = _mm256_loadu_si256(sums[1].as_ptr().cast());
                        let q01 = _mm256_add_epi32(
                            _mm256_madd_epi16(s0lo, b0),
                            _mm256_madd_epi16(s1lo, b1),
                        );
                        let q23 = _mm256_add_epi32(
                            _mm256_madd_epi16(s0hi, b0),
                            _mm256_madd_epi16(s1hi, b1),
                        );
                        let offset =
                            _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(q01, q23), order);
                        let total = _mm256_sub_epi32(isum[t], _mm256_slli_epi32(offset, 5));
                        let dx = _mm256_set1_ps(*$act.d.get_unchecked(at));
                        acc[t] = _mm256_fmadd_ps(
                            _mm256_mul_ps(d, dx),
                            _mm256_cvtepi32_ps(total),
                            acc[t],
                        );
                    }
                }
            }
            super::super::x86::finish(&acc, $i0, $j, $out);
        }};
    }

    super::super::x86::vnni_and_avx2_kernels!(group_body, "Q6_K (values below 64)");
}
