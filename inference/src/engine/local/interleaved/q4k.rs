//! Q4_K in the interleaved layout: 4 rows per 256-value block.
//!
//! ```text
//! group g, block b (576 bytes, at (g * blocks per row + b) * 576):
//!   [0..8)      f16 d of the 4 rows
//!   [8..16)     f16 dmin of the 4 rows
//!   [16..48)    per sub-block i = 8 * row + s (row 0..4, sub-block 0..8):
//!               low 4 bits of its scale | low 4 bits of its min << 4
//!   [48..64)    byte i (0..16): the top 2 bits of scale i, of scale
//!               i + 16, of min i and of min i + 16, from bit 0 up
//!   [64..576)   the nibbles: for sub-block pair j (0..4), chunk c (0..4),
//!               row r: the row's 8 bytes 32j + 8c.. (low nibbles are
//!               sub-block 2j's values 8c..8c+8, high ones 2j+1's)
//! ```
//!
//! As many bytes as the file's 4 x 144: decoding reads every weight byte
//! once per token and is bound by memory, so the layout adds none. The
//! 6-bit scales and mins are packed so that a few shifts and masks on two
//! loads give the 32 scales and the 32 mins of a group block as bytes
//! (the file's packing, `get_scale_min_k4`, needs per-byte selects);
//! unpacking them to bytes at load time instead cost 2.8% more bytes.
//! A value is `d * scale * q - dmin * min` with `q` in 0..16; the token
//! is quantized as candle does for Q4_K weights (`BlockQ8K`), whose sums
//! of 16 values meet the mins.

use super::q8k::Q8K;

/// Values per block.
pub(super) const BLOCK: usize = 256;
/// Bytes of one Q4_K block in the file.
pub(super) const FILE_BLOCK: usize = 144;
/// Bytes of one group's block here.
pub(super) const GROUP_BLOCK: usize = 576;
/// Where a group block's nibbles start.
const NIBBLES: usize = 64;

/// Row `r`'s block `blk` of the file into its group block `o`, which
/// starts zeroed ([`super::Format::repack_group`]): the top bits of rows
/// `r` and `r + 2` share bytes, so they are ORed in.
pub(super) fn put_row(o: &mut [u8], r: usize, blk: &[u8]) {
    o[2 * r..2 * r + 2].copy_from_slice(&blk[0..2]);
    o[8 + 2 * r..8 + 2 * r + 2].copy_from_slice(&blk[2..4]);
    let (scales, mins) = unpack_scales(blk[4..16].try_into().expect("12 bytes"));
    for s in 0..8 {
        let i = 8 * r + s;
        o[16 + i] = (scales[s] & 15) | (mins[s] & 15) << 4;
        let (byte, shift) = (i % 16, 2 * (i / 16));
        o[48 + byte] |= (scales[s] >> 4) << shift | (mins[s] >> 4) << (4 + shift);
    }
    let qs = &blk[16..];
    for j in 0..4 {
        for c in 0..4 {
            let to = NIBBLES + 128 * j + 32 * c + 8 * r;
            o[to..to + 8].copy_from_slice(&qs[32 * j + 8 * c..32 * j + 8 * c + 8]);
        }
    }
}

/// ggml's `get_scale_min_k4` for all 8 sub-blocks: 6-bit scales and mins
/// packed in 12 bytes.
fn unpack_scales(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..8 {
        if j < 4 {
            scales[j] = q[j] & 63;
            mins[j] = q[j + 4] & 63;
        } else {
            scales[j] = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
            mins[j] = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        }
    }
    (scales, mins)
}

/// The tokens quantized as candle quantizes them for Q4_K weights.
pub(super) struct Activations {
    pub m: usize,
    /// Token `i`'s values, `k` signed bytes from `i * k`.
    pub q: Vec<i8>,
    /// Token `i`'s block scales from `i * nb`.
    pub d: Vec<f32>,
    /// Per token and block, the sums of each 32-value sub-block, twice
    /// (the two 128-bit lanes of the kernel's min products).
    pub sums: Vec<[i16; 16]>,
}

impl Activations {
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        let Q8K { q, d, bsums } = Q8K::new(x, k);
        let sums = bsums
            .iter()
            .map(|b| {
                let mut s = [0i16; 16];
                for sub in 0..8 {
                    s[sub] = b[2 * sub] + b[2 * sub + 1];
                    s[8 + sub] = s[sub];
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
    use super::{Activations, BLOCK, GROUP_BLOCK, NIBBLES};
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
        let kernels: [Group; 4] = if vnni {
            [
                group_vnni::<1>,
                group_vnni::<2>,
                group_vnni::<3>,
                group_vnni::<4>,
            ]
        } else {
            [
                group_avx2::<1>,
                group_avx2::<2>,
                group_avx2::<3>,
                group_avx2::<4>,
            ]
        };
        // SAFETY: as this function's contract, sizes asserted above.
        unsafe { each_group(w, group_bytes, act, m, nb, &kernels, out) };
    }

    /// A group block's 32 scales and 32 mins, one byte each (row `r`'s
    /// sub-block `s` at byte `8r + s`), from their packing in the block.
    ///
    /// # Safety
    /// AVX2; `blk` must point at a whole group block.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn unpack_scales_mins(blk: *const u8) -> (__m256i, __m256i) {
        // SAFETY: bytes 16..64 of the group block, unaligned loads.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(0x03);
            let low = _mm256_loadu_si256(blk.add(16).cast());
            // Bytes 48..64 in both lanes: the low lane holds the top bits of
            // sub-blocks 0..16, the high lane (shifted 2 further) 16..32.
            let top = _mm256_broadcastsi128_si256(_mm_loadu_si128(blk.add(48).cast()));
            let top_of = |shift: __m256i| {
                _mm256_slli_epi16(_mm256_and_si256(_mm256_srlv_epi32(top, shift), m2), 4)
            };
            let scales = _mm256_or_si256(
                _mm256_and_si256(low, m4),
                top_of(_mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2)),
            );
            let mins = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(low, 4), m4),
                top_of(_mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6)),
            );
            (scales, mins)
        }
    }

    /// The kernel body, for one way of summing unsigned weight bytes times
    /// signed token bytes into i32 lanes (`$dot(acc, w, x)`).
    macro_rules! group_body {
        ($w:ident, $act:ident, $i0:ident, $nb:ident, $j:ident, $out:ident, $R:ident, $dot:expr) => {{
            let mut acc = [_mm256_setzero_ps(); $R];
            let m4 = _mm256_set1_epi8(0x0F);
            let xq = $act.q.as_ptr().cast::<u8>();
            // Row pairs' min lanes [r0, r0, r2, r2 | r1, r1, r3, r3] back
            // to [r0, r0, r1, r1, r2, r2, r3, r3].
            let order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
            // SAFETY: block `b < nb` of the group is GROUP_BLOCK bytes from
            // `b * GROUP_BLOCK`; token `i0 + t < act.m` has `nb * 256`
            // values from `(i0 + t) * nb * 256` and `nb` scales and sums
            // from `(i0 + t) * nb` (the caller's contract); loads are
            // unaligned ones.
            unsafe {
                for b in 0..$nb {
                    let blk = $w.add(b * GROUP_BLOCK);
                    prefetch_ahead(blk, GROUP_BLOCK, 4);
                    let (scales, mins) = unpack_scales_mins(blk);
                    let mut isum = [_mm256_setzero_si256(); $R];
                    for j in 0..4 {
                        let mut lo = [_mm256_setzero_si256(); $R];
                        let mut hi = [_mm256_setzero_si256(); $R];
                        for c in 0..4 {
                            let bits =
                                _mm256_loadu_si256(blk.add(NIBBLES + 128 * j + 32 * c).cast());
                            let ql = _mm256_and_si256(bits, m4);
                            let qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                            for t in 0..$R {
                                let at = (($i0 + t) * $nb + b) * BLOCK + 64 * j + 8 * c;
                                let xl =
                                    _mm256_set1_epi64x(xq.add(at).cast::<i64>().read_unaligned());
                                let xh = _mm256_set1_epi64x(
                                    xq.add(at + 32).cast::<i64>().read_unaligned(),
                                );
                                lo[t] = $dot(lo[t], ql, xl);
                                hi[t] = $dot(hi[t], qh, xh);
                            }
                        }
                        // Each row's scale of sub-blocks 2j and 2j+1 in
                        // its two i32 lanes.
                        let pick = |s: i32| {
                            let z = -128i8 as i32 & 0xFF;
                            let word = |byte: i32| byte | (z << 8) | (z << 16) | (z << 24);
                            _mm256_setr_epi32(
                                word(s),
                                word(s),
                                word(8 + s),
                                word(8 + s),
                                word(s),
                                word(s),
                                word(8 + s),
                                word(8 + s),
                            )
                        };
                        let sl = _mm256_shuffle_epi8(scales, pick(2 * j as i32));
                        let sh = _mm256_shuffle_epi8(scales, pick(2 * j as i32 + 1));
                        for t in 0..$R {
                            isum[t] = _mm256_add_epi32(
                                isum[t],
                                _mm256_add_epi32(
                                    _mm256_mullo_epi32(lo[t], sl),
                                    _mm256_mullo_epi32(hi[t], sh),
                                ),
                            );
                        }
                    }
                    let mins01 = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(mins));
                    let mins23 = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(mins, 1));
                    let ds = _mm_loadl_epi64(blk.cast());
                    let d = _mm256_cvtph_ps(_mm_unpacklo_epi16(ds, ds));
                    let dms = _mm_loadl_epi64(blk.add(8).cast());
                    let dmin = _mm256_cvtph_ps(_mm_unpacklo_epi16(dms, dms));
                    for t in 0..$R {
                        let at = ($i0 + t) * $nb + b;
                        let sums = _mm256_loadu_si256($act.sums.as_ptr().add(at).cast());
                        let msum = _mm256_permutevar8x32_epi32(
                            _mm256_hadd_epi32(
                                _mm256_madd_epi16(mins01, sums),
                                _mm256_madd_epi16(mins23, sums),
                            ),
                            order,
                        );
                        let dx = _mm256_set1_ps(*$act.d.get_unchecked(at));
                        acc[t] = _mm256_fmadd_ps(
                            _mm256_mul_ps(d, dx),
                            _mm256_cvtepi32_ps(isum[t]),
                            acc[t],
                        );
                        acc[t] = _mm256_fnmadd_ps(
                            _mm256_mul_ps(dmin, dx),
                            _mm256_cvtepi32_ps(msum),
                            acc[t],
                        );
                    }
                }
            }
            super::super::x86::finish(&acc, $i0, $j, $out);
        }};
    }

    super::super::x86::vnni_and_avx2_kernels!(group_body, "Q4_K (values below 16)");
}
