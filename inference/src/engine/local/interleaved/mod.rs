//! Q8_0 weights stored four rows interleaved, for decoding on x86.
//!
//! A GGUF file stores each output row's blocks one after the other, so a
//! dot product per row ([`super::matvec`]) converts one f16 scale, runs
//! one multiply-add chain and ends in one horizontal sum per row and
//! block, and reads four rows as four streams. That kept one core at
//! ~15 GB/s where the memory gives it ~26 (measured on this project's
//! 2-core AMD EPYC), and decoding was at 0.86x llama.cpp, which stores its
//! weights repacked the same way (ggml-cpu's `repack.cpp`).
//!
//! Here each group of 4 rows is one stream, block by block:
//!
//! ```text
//! group g, block b (136 bytes, at (g * blocks per row + b) * 136):
//!   [0..8)     f16 scale of rows 4g, 4g+1, 4g+2, 4g+3
//!   [8..136)   4 chunks c of 32 bytes: rows 4g..4g+4, values 8c..8c+8 of
//!              each, stored as value + 128 (u8)
//! ```
//!
//! One 32-byte load then holds 8 values of 4 rows; the token's 8 values,
//! broadcast to the 4 row lanes, meet them in one `vpdpbusd` (AVX-512
//! VNNI: unsigned weight bytes times signed token bytes, summed in i32;
//! the +128 comes back out with the token's block sums) or, without VNNI,
//! the AVX2 sign trick. The 4 rows' scales are one f16 load and one
//! conversion, and a block ends in one multiply-add for all 4 rows.
//! `tests::speed` (by hand, see there) measures it against the per-row
//! kernel and the f32 tiles.
//!
//! The bytes are a rearrangement of the file's (same size) and the same
//! kernels serve any number of tokens: from 16 tokens (prefill) on they
//! also beat dequantizing tiles to f32 for the `gemm` crate
//! ([`super::batched`]), as each weight block meets 4 tokens in int8.
//! So the matrix needs no other copy (candle's VNNI tiles, faster still
//! for long prompts where rows are whole 256-blocks, were a second one).
//! The activations are quantized as candle quantizes them for Q8_0
//! weights (`BlockQ8_0::from_float`), so results are candle's up to the
//! order of float additions.

// Off x86 there are no kernels: `available()` is false, nothing is
// interleaved, and what only the kernels read is never read.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use candle_core::quantized::k_quants::BlockQ8_0;
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

mod q4k;
mod q6k;
mod q8k;

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes of one Q8_0 block in the file: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;
/// Rows per group.
const ROWS: usize = 4;
/// Bytes of one group's block: 4 scales, 4 x 32 values.
const GROUP_BLOCK: usize = ROWS * Q8_0_BYTES;
/// Bytes of one Q5_0 block in the file: f16 scale, 4 bytes of fifth
/// bits, 16 bytes of nibbles.
const Q5_0_BYTES: usize = 22;
/// Bytes of one Q5_0 group's block.
const Q5_0_GROUP_BLOCK: usize = ROWS * Q5_0_BYTES;
/// Weight bytes per rayon task (as in [`super::matvec`]).
const TASK_BYTES: usize = 48 * 1024;
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == Q8_0_BYTES);

/// Why a matrix cannot be interleaved (it then stays as it was).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InterleaveError {
    #[error("{rows} rows are not a multiple of {ROWS}")]
    Rows { rows: usize },
    #[error("rows of {columns} values are not whole {block}-value blocks")]
    Columns { columns: usize, block: usize },
    #[error("{dtype:?} has no interleaved layout (Q8_0, Q5_0, Q4_K and Q6_K have)")]
    Type { dtype: GgmlDType },
    #[error("{len} bytes are not a [{rows}, {columns}] matrix of its type ({expected} bytes)")]
    Length {
        len: usize,
        rows: usize,
        columns: usize,
        expected: usize,
    },
}

/// A block type with an interleaved layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The layout of the module documentation.
    Q8_0,
    /// Like Q8_0's, 88 bytes per group block: the 4 rows' f16 scales;
    /// 64 bytes of nibbles, for each half (values 0..8 and 16..24, then
    /// 8..16 and 24..32) the 4 rows' 8 file bytes, whose low nibbles are
    /// the first chunk and high nibbles the second; then per chunk `c`
    /// the 4 rows' fifth bits of values 8c..8c+8 (byte `c` of each row's
    /// `qh`). Values are unsigned (0..32); the -16 comes back out through
    /// the token's sums.
    Q5_0,
    /// [`q4k`]'s layout.
    Q4K,
    /// [`q6k`]'s layout.
    Q6K,
}

impl Format {
    /// Values per block, bytes per block in the file and per group here.
    fn sizes(self) -> (usize, usize, usize) {
        match self {
            Self::Q8_0 => (BLOCK, Q8_0_BYTES, GROUP_BLOCK),
            Self::Q5_0 => (BLOCK, Q5_0_BYTES, Q5_0_GROUP_BLOCK),
            Self::Q4K => (q4k::BLOCK, q4k::FILE_BLOCK, q4k::GROUP_BLOCK),
            Self::Q6K => (q6k::BLOCK, q6k::FILE_BLOCK, q6k::GROUP_BLOCK),
        }
    }
}

/// An `[n, k]` matrix interleaved four rows at a time.
#[derive(Clone)]
pub struct Interleaved {
    format: Format,
    n: usize,
    k: usize,
    data: Vec<u8>,
}

impl std::fmt::Debug for Interleaved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interleaved")
            .field("format", &self.format)
            .field("n", &self.n)
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

/// Whether this CPU runs the kernels here (AVX2, FMA, F16C; VNNI used
/// when present).
pub fn available() -> bool {
    super::matvec::available()
}

impl Interleaved {
    /// Rearranges the GGUF bytes of an `[n, k]` matrix of `dtype` (Q8_0,
    /// Q5_0, Q4_K or Q6_K).
    pub fn new(
        dtype: GgmlDType,
        bytes: &[u8],
        n: usize,
        k: usize,
    ) -> Result<Self, InterleaveError> {
        let format = match dtype {
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q6K => Format::Q6K,
            _ => return Err(InterleaveError::Type { dtype }),
        };
        let (block, file_block, group_block) = format.sizes();
        if !n.is_multiple_of(ROWS) {
            return Err(InterleaveError::Rows { rows: n });
        }
        if !k.is_multiple_of(block) {
            return Err(InterleaveError::Columns { columns: k, block });
        }
        let nb = k / block;
        let expected = n * nb * file_block;
        if bytes.len() != expected {
            return Err(InterleaveError::Length {
                len: bytes.len(),
                rows: n,
                columns: k,
                expected,
            });
        }
        let mut data = vec![0u8; n / ROWS * nb * group_block];
        data.par_chunks_mut(nb * group_block)
            .enumerate()
            .for_each(|(g, out)| format.repack_group(bytes, g, nb, out));
        Ok(Self { format, n, k, data })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Values per row.
    pub fn columns(&self) -> usize {
        self.k
    }

    /// `dst[m, n] = x[m, k] · wᵀ` for `m` tokens; `false`, `dst`
    /// untouched, where this CPU has no kernel ([`available`]).
    pub fn matmul(&self, x: &[f32], m: usize, dst: &mut [f32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        let vnni = x86::has_vnni();
        #[cfg(not(target_arch = "x86_64"))]
        let vnni = false;
        self.matmul_using(x, m, dst, vnni)
    }

    /// [`Self::matmul`] with the VNNI kernel or not (`vnni` only where
    /// the CPU has it).
    fn matmul_using(&self, x: &[f32], m: usize, dst: &mut [f32], vnni: bool) -> bool {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "x is not [{m}, {k}]");
        assert_eq!(dst.len(), m * n, "dst is not [{m}, {n}]");
        if !available() {
            return false;
        }
        if m == 0 || n == 0 {
            return true;
        }
        let (block, _, group_block) = self.format.sizes();
        let nb = k / block;
        let group_bytes = nb * group_block;
        let chunk = (TASK_BYTES / group_bytes).max(1) * ROWS;
        let acts = match self.format {
            Format::Q8_0 | Format::Q5_0 => Acts::Q8_0(Activations::new(x, m, k)),
            Format::Q4K => Acts::Q4K(q4k::Activations::new(x, m, k)),
            Format::Q6K => Acts::Q6K(q6k::Activations::new(x, m, k)),
        };
        let dst_at = dst.as_mut_ptr() as usize;
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let j0 = c * chunk;
            let rows = chunk.min(n - j0);
            let w = &self.data[j0 / ROWS * group_bytes..(j0 + rows) / ROWS * group_bytes];
            // SAFETY: `dst` is `[m, n]` (asserted above) and outlives this
            // parallel loop; this task writes only its columns
            // `j0..j0 + rows`, which no other task writes, and nothing
            // reads `dst` until the loop ends.
            let mut out = unsafe { Columns::new(dst_at as *mut f32, m, n, j0, rows) };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `available()` held above: the CPU has AVX2, FMA and
            // F16C, and `vnni` says whether it also has AVX-512 VNNI/VL;
            // `w` is whole groups of `nb` blocks of the activations'
            // format.
            unsafe {
                match &acts {
                    Acts::Q8_0(act) => {
                        x86::groups(w, act, nb, vnni, self.format == Format::Q5_0, &mut out)
                    }
                    Acts::Q4K(act) => q4k::x86::groups(w, act, nb, vnni, &mut out),
                    Acts::Q6K(act) => q6k::x86::groups(w, act, nb, vnni, &mut out),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (w, &acts, vnni, &mut out);
                unreachable!("available() is false off x86")
            }
        });
        true
    }
}

/// The tokens, quantized for the matrix's format.
enum Acts {
    /// For Q8_0 and Q5_0.
    Q8_0(Activations),
    Q4K(q4k::Activations),
    Q6K(q6k::Activations),
}

impl Format {
    /// Group `g`'s blocks from the file's rows `4g..4g + 4` (`nb` blocks
    /// each), into `out` (`nb` group blocks, zeroed: a format may OR
    /// several rows into one byte).
    fn repack_group(self, file: &[u8], g: usize, nb: usize, out: &mut [u8]) {
        let (_, file_block, group_block) = self.sizes();
        let row_bytes = nb * file_block;
        for (b, o) in out.chunks_exact_mut(group_block).enumerate() {
            for r in 0..ROWS {
                let at = (g * ROWS + r) * row_bytes + b * file_block;
                let blk = &file[at..at + file_block];
                match self {
                    Self::Q8_0 => put_q8_0_row(o, r, blk),
                    Self::Q5_0 => put_q5_0_row(o, r, blk),
                    Self::Q4K => q4k::put_row(o, r, blk),
                    Self::Q6K => q6k::put_row(o, r, blk),
                }
            }
        }
    }
}

/// Row `r`'s Q8_0 block `blk` into its group block `o`.
fn put_q8_0_row(o: &mut [u8], r: usize, blk: &[u8]) {
    o[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
    for c in 0..4 {
        for i in 0..8 {
            o[8 + 32 * c + 8 * r + i] = blk[2 + 8 * c + i] ^ 0x80;
        }
    }
}

/// Row `r`'s Q5_0 block `blk` into its group block `o` ([`Format::Q5_0`]'s
/// layout).
fn put_q5_0_row(o: &mut [u8], r: usize, blk: &[u8]) {
    o[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
    for half in 0..2 {
        let to = 8 + 32 * half + 8 * r;
        o[to..to + 8].copy_from_slice(&blk[6 + 8 * half..14 + 8 * half]);
    }
    for c in 0..4 {
        o[72 + 4 * c + r] = blk[2 + c];
    }
}

/// One task's columns `j0..j0 + cols` of a row-major `[m, n]` output that
/// other tasks write other columns of: each token's results go where they
/// belong, with no per-task buffer transposed afterwards.
struct Columns {
    dst: *mut f32,
    m: usize,
    n: usize,
    j0: usize,
    cols: usize,
}

impl Columns {
    /// # Safety
    /// `dst` must be valid for writes of `m * n` floats while this lives,
    /// with no one else reading or writing columns `j0..j0 + cols`.
    unsafe fn new(dst: *mut f32, m: usize, n: usize, j0: usize, cols: usize) -> Self {
        assert!(j0 + cols <= n);
        Self {
            dst,
            m,
            n,
            j0,
            cols,
        }
    }

    /// This task's column `j` for token `i`.
    fn set(&mut self, i: usize, j: usize, v: f32) {
        assert!(
            i < self.m && j < self.cols,
            "({i}, {j}) outside {}x{}",
            self.m,
            self.cols
        );
        // SAFETY: in bounds of the `[m, n]` output (checked just above and
        // in `new`) and in this task's own columns, as `new` requires.
        unsafe { *self.dst.add(i * self.n + self.j0 + j) = v }
    }
}

/// The tokens quantized as candle quantizes them for Q8_0 weights, laid
/// out for the kernels.
struct Activations {
    m: usize,
    /// Token `i`'s values, `k` signed bytes from `i * k`.
    q: Vec<i8>,
    /// Token `i`'s block scales from `i * nb`.
    d: Vec<f32>,
    /// Per token and block, the sums of the values that the even and the
    /// odd i32 lanes of the kernel's dot products cover (values
    /// `8c..8c+4` and `8c+4..8c+8` of every chunk `c`), as `(even, odd)`:
    /// times the weights' offset (128 for Q8_0, 16 for Q5_0), what the
    /// unsigned weights added.
    offset: Vec<[i32; 2]>,
}

impl Activations {
    /// As candle's `BlockQ8_0::from_float`: per 32 values the scale
    /// `max |x| / 127` (kept as f16) and the values times its inverse,
    /// rounded half away from zero.
    fn new(x: &[f32], m: usize, k: usize) -> Self {
        let blocks = m * k / BLOCK;
        let mut q = vec![0i8; m * k];
        let mut d = Vec::with_capacity(blocks);
        let mut offset = Vec::with_capacity(blocks);
        for (xs, qs) in x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK)) {
            let amax = xs.iter().fold(0f32, |a, x| a.max(x.abs()));
            let scale = amax / 127.0;
            let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            q8k::scaled_bytes(xs, inverse, qs);
            d.push(half::f16::from_f32(scale).to_f32());
            let mut even_odd = [0i32; 2];
            for (i, &v) in qs.iter().enumerate() {
                even_odd[(i % 8) / 4] += v as i32;
            }
            offset.push(even_odd);
        }
        Self { m, q, d, offset }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Activations, Columns, BLOCK, GROUP_BLOCK, Q5_0_GROUP_BLOCK, ROWS};
    use std::arch::x86_64::*;

    /// Whether the CPU has `vpdpbusd` on 256-bit registers.
    pub fn has_vnni() -> bool {
        is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl")
    }

    /// One group of 4 rows (the task's columns `j..j + 4`) · tokens
    /// `i0..i0 + R`, the tokens quantized as `A`.
    pub(super) type Group<A> =
        unsafe fn(w: *const u8, act: &A, i0: usize, nb: usize, j: usize, out: &mut Columns);

    /// Every group of `w` (whole groups of `group_bytes`) · the `m`
    /// tokens of `act`, by `kernels[r - 1]` for `r` tokens at a time (up
    /// to `kernels.len()`), into `out` (`ROWS` columns per group).
    ///
    /// # Safety
    /// The CPU must have what the kernels need; `act` must hold `m`
    /// tokens of `nb` blocks of the format whose groups `w` holds.
    pub(super) unsafe fn each_group<A>(
        w: &[u8],
        group_bytes: usize,
        act: &A,
        m: usize,
        nb: usize,
        kernels: &[Group<A>],
        out: &mut Columns,
    ) {
        assert_eq!(w.len() / group_bytes * ROWS, out.cols);
        for (g, group) in w.chunks_exact(group_bytes).enumerate() {
            let mut i = 0;
            while i < m {
                let r = (m - i).min(kernels.len());
                // SAFETY: the caller vouches for the CPU features and the
                // tokens; `group` is one group of `nb` blocks and `out`
                // has columns `4g..4g + 4`.
                unsafe { kernels[r - 1](group.as_ptr(), act, i, nb, ROWS * g, out) };
                i += r;
            }
        }
    }

    /// All groups of `w` (whole groups of `nb` blocks) · all tokens of
    /// `act`, into `out` (`ROWS` columns per group).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C, and AVX-512 VNNI and VL when
    /// `vnni` is true.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn groups(
        w: &[u8],
        act: &Activations,
        nb: usize,
        vnni: bool,
        q5: bool,
        out: &mut Columns,
    ) {
        let m = act.m;
        let group_bytes = nb * if q5 { Q5_0_GROUP_BLOCK } else { GROUP_BLOCK };
        assert!(
            act.q.len() >= m * nb * BLOCK && act.d.len() >= m * nb && act.offset.len() >= m * nb
        );
        macro_rules! kernels {
            ($k:ident, $q5:literal) => {
                [$k::<1, $q5>, $k::<2, $q5>, $k::<3, $q5>, $k::<4, $q5>]
            };
        }
        let kernels: [Group<Activations>; 4] = match (vnni, q5) {
            (true, false) => kernels!(group_vnni, false),
            (true, true) => kernels!(group_vnni, true),
            (false, false) => kernels!(group_avx2, false),
            (false, true) => kernels!(group_avx2, true),
        };
        // SAFETY: as this function's contract, sizes asserted above.
        unsafe { each_group(w, group_bytes, act, m, nb, &kernels, out) };
    }

    /// Pulls the group block `ahead` blocks after `blk` (blocks of `size`
    /// bytes) into cache.
    #[inline(always)]
    pub(super) fn prefetch_ahead(blk: *const u8, size: usize, ahead: usize) {
        let at = blk.wrapping_add(ahead * size);
        for off in (0..size).step_by(64) {
            // SAFETY: a prefetch only hints the cache: it reads nothing
            // architecturally and cannot fault, whatever the address
            // (`wrapping_add`: past the end it is never dereferenced).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off).cast()) };
        }
    }

    /// `group_vnni` and `group_avx2`, the two [`Group`]s of a format, from
    /// the macro `$body` that writes the kernel given the operation that
    /// sums unsigned weight bytes times signed token bytes into i32 lanes
    /// (`vpdpbusd`, or AVX2's `maddubs` and `madd`: for formats whose
    /// unsigned values stay below 128, so pairs of products fit i16).
    macro_rules! vnni_and_avx2_kernels {
        ($body:ident, $what:literal) => {
            #[doc = concat!("[`Group`] with `vpdpbusd`, ", $what, ".")]
            ///
            /// # Safety
            /// AVX2, FMA, F16C, AVX-512 VNNI and VL; `w` one group of `nb`
            /// blocks; `act` at least `i0 + R` tokens; `out` columns
            /// `j..j + 4`.
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
            unsafe fn group_vnni<const R: usize>(
                w: *const u8,
                act: &Activations,
                i0: usize,
                nb: usize,
                j: usize,
                out: &mut Columns,
            ) {
                $body!(w, act, i0, nb, j, out, R, |a, w, x| _mm256_dpbusd_epi32(
                    a, w, x
                ))
            }

            #[doc = concat!("[`Group`] with AVX2 only, ", $what, ".")]
            ///
            /// # Safety
            /// AVX2, FMA and F16C; the rest as [`group_vnni`].
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn group_avx2<const R: usize>(
                w: *const u8,
                act: &Activations,
                i0: usize,
                nb: usize,
                j: usize,
                out: &mut Columns,
            ) {
                let ones = _mm256_set1_epi16(1);
                $body!(w, act, i0, nb, j, out, R, |a, w, x| _mm256_add_epi32(
                    a,
                    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones)
                ))
            }
        };
    }
    pub(super) use vnni_and_avx2_kernels;

    /// Chunk `c` (values 8c..8c+8 of each of the 4 rows) of a group block
    /// as unsigned bytes: Q8_0's stored value + 128, or Q5_0's nibble and
    /// fifth bit (0..32).
    #[inline(always)]
    fn chunk<const Q5: bool>(blk: *const u8, c: usize) -> __m256i {
        // SAFETY: `blk` starts a group block of the format, and `c < 4`:
        // the loads are inside it (Q8_0: bytes 8 + 32c..; Q5_0: nibbles
        // 8 + 32(c % 2).., fifth bits 72 + 4c..); AVX2 is enabled in
        // every caller.
        unsafe {
            if !Q5 {
                return _mm256_loadu_si256(blk.add(8 + 32 * c).cast());
            }
            let low = _mm256_set1_epi8(0x0F);
            let bytes = _mm256_loadu_si256(blk.add(8 + 32 * (c % 2)).cast());
            let nibbles = if c < 2 {
                _mm256_and_si256(bytes, low)
            } else {
                _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low)
            };
            // Row r's byte of fifth bits to bytes 8r..8r+8, then bit i of
            // it to byte 8r + i.
            let qh = _mm256_set1_epi32(blk.add(72 + 4 * c).cast::<i32>().read_unaligned());
            let spread = _mm256_shuffle_epi8(
                qh,
                _mm256_setr_epi64x(
                    0,
                    0x0101010101010101,
                    0x0202020202020202,
                    0x0303030303030303,
                ),
            );
            let select = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
            _mm256_or_si256(nibbles, _mm256_and_si256(set, _mm256_set1_epi8(0x10)))
        }
    }

    /// The 4 rows' scales of a group block, each twice (the two i32 lanes
    /// a row's dot products end in), times the token's block scale.
    #[inline(always)]
    fn scales(blk: *const u8, dx: f32) -> __m256 {
        // SAFETY: `blk` starts a group block, whose first 8 bytes are the
        // four f16 scales; F16C is enabled in every caller.
        unsafe {
            let s = _mm_loadl_epi64(blk.cast());
            _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_unpacklo_epi16(s, s)),
                _mm256_set1_ps(dx),
            )
        }
    }

    /// The 4 row sums from per-row lane pairs `[r0, r0, r1, r1, ...]`.
    #[inline(always)]
    pub(super) fn finish<const R: usize>(
        acc: &[__m256; R],
        i0: usize,
        j: usize,
        out: &mut Columns,
    ) {
        for (t, a) in acc.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` is 8 floats; unaligned store.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            for r in 0..ROWS {
                out.set(i0 + t, j + r, lanes[2 * r] + lanes[2 * r + 1]);
            }
        }
    }

    /// [`Group`] with `vpdpbusd`.
    ///
    /// # Safety
    /// AVX2, FMA, F16C, AVX-512 VNNI and VL; `w` one group of `nb`
    /// blocks; `act` at least `i0 + R` tokens; `out` columns `j..j + 4`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl")]
    unsafe fn group_vnni<const R: usize, const Q5: bool>(
        w: *const u8,
        act: &Activations,
        i0: usize,
        nb: usize,
        j: usize,
        out: &mut Columns,
    ) {
        let mut acc = [_mm256_setzero_ps(); R];
        let xq = act.q.as_ptr().cast::<u8>();
        let (size, shift) = if Q5 {
            (Q5_0_GROUP_BLOCK, 4)
        } else {
            (GROUP_BLOCK, 7)
        };
        // SAFETY: block `b < nb` of the group is `size` bytes from
        // `b * size`; token `i0 + t < act.m` has `nb * 32` values from
        // `(i0 + t) * nb * 32` and `nb` scales and offsets from
        // `(i0 + t) * nb` (the caller's contract); loads are unaligned.
        unsafe {
            for b in 0..nb {
                let blk = w.add(b * size);
                prefetch_ahead(blk, size, 8);
                let mut sum = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let q = chunk::<Q5>(blk, c);
                    for (t, s) in sum.iter_mut().enumerate() {
                        let at = ((i0 + t) * nb + b) * BLOCK + 8 * c;
                        let x = _mm256_set1_epi64x(xq.add(at).cast::<i64>().read_unaligned());
                        *s = _mm256_dpbusd_epi32(*s, q, x);
                    }
                }
                for (t, (s, a)) in sum.iter().zip(acc.iter_mut()).enumerate() {
                    let at = (i0 + t) * nb + b;
                    let [even, odd] = *act.offset.get_unchecked(at);
                    let (even, odd) = (even << shift, odd << shift);
                    let s = _mm256_sub_epi32(
                        *s,
                        _mm256_set_epi32(odd, even, odd, even, odd, even, odd, even),
                    );
                    *a = _mm256_fmadd_ps(
                        scales(blk, *act.d.get_unchecked(at)),
                        _mm256_cvtepi32_ps(s),
                        *a,
                    );
                }
            }
        }
        finish(&acc, i0, j, out);
    }

    /// [`Group`] with AVX2 only. Q8_0: the weights back to signed bytes,
    /// then `|w| · (x with w's sign)` by `maddubs`; Q5_0: the unsigned
    /// values (< 32, so pairs of products fit i16) by `maddubs`, minus 16
    /// times the token's sums.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the rest as [`group_vnni`].
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group_avx2<const R: usize, const Q5: bool>(
        w: *const u8,
        act: &Activations,
        i0: usize,
        nb: usize,
        j: usize,
        out: &mut Columns,
    ) {
        let mut acc = [_mm256_setzero_ps(); R];
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(0x80u8 as i8);
        let xq = act.q.as_ptr().cast::<u8>();
        let size = if Q5 { Q5_0_GROUP_BLOCK } else { GROUP_BLOCK };
        // SAFETY: as in `group_vnni`.
        unsafe {
            for b in 0..nb {
                let blk = w.add(b * size);
                prefetch_ahead(blk, size, 8);
                let mut sum = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let q = chunk::<Q5>(blk, c);
                    let (aq, q) = if Q5 {
                        (q, q)
                    } else {
                        let q = _mm256_xor_si256(q, flip);
                        (_mm256_sign_epi8(q, q), q)
                    };
                    for (t, s) in sum.iter_mut().enumerate() {
                        let at = ((i0 + t) * nb + b) * BLOCK + 8 * c;
                        let x = _mm256_set1_epi64x(xq.add(at).cast::<i64>().read_unaligned());
                        // Q8_0: |q| ≤ 127 and |x| ≤ 127; Q5_0: q < 32:
                        // pairs of products fit i16.
                        let x = if Q5 { x } else { _mm256_sign_epi8(x, q) };
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, x), ones);
                        *s = _mm256_add_epi32(*s, p);
                    }
                }
                for (t, (s, a)) in sum.iter().zip(acc.iter_mut()).enumerate() {
                    let at = (i0 + t) * nb + b;
                    let s = if Q5 {
                        let [even, odd] = *act.offset.get_unchecked(at);
                        let (even, odd) = (even << 4, odd << 4);
                        _mm256_sub_epi32(
                            *s,
                            _mm256_set_epi32(odd, even, odd, even, odd, even, odd, even),
                        )
                    } else {
                        *s
                    };
                    *a = _mm256_fmadd_ps(
                        scales(blk, *act.d.get_unchecked(at)),
                        _mm256_cvtepi32_ps(s),
                        *a,
                    );
                }
            }
        }
        finish(&acc, i0, j, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::local::kernel_tests::random;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use rand::SeedableRng;

    fn quantized(rng: &mut rand::rngs::StdRng, dtype: GgmlDType, n: usize, k: usize) -> QTensor {
        let w = Tensor::from_vec(random(rng, n * k), (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, dtype).unwrap()
    }

    /// Against candle's own kernels on the file layout, per format, for
    /// 1-9 tokens (the 1-4 token kernels and their mixes), with both
    /// kernels this CPU has, on shapes with odd block counts.
    #[test]
    fn matches_candles_kernel() {
        if !available() {
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        #[cfg(target_arch = "x86_64")]
        let kernels = if x86::has_vnni() {
            vec![false, true]
        } else {
            vec![false]
        };
        #[cfg(not(target_arch = "x86_64"))]
        let kernels = vec![false];
        for (dtype, n, k) in [
            (GgmlDType::Q8_0, 4, 32),
            (GgmlDType::Q8_0, 12, 96),
            (GgmlDType::Q8_0, 40, 896),
            (GgmlDType::Q8_0, 1000, 64),
            // candle's Q5_0 kernel wants an even number of blocks.
            (GgmlDType::Q5_0, 4, 64),
            (GgmlDType::Q5_0, 12, 192),
            (GgmlDType::Q5_0, 40, 896),
            (GgmlDType::Q4K, 4, 256),
            (GgmlDType::Q4K, 12, 768),
            (GgmlDType::Q4K, 200, 1536),
            (GgmlDType::Q6K, 4, 256),
            (GgmlDType::Q6K, 12, 768),
            (GgmlDType::Q6K, 200, 1536),
        ] {
            let q = quantized(&mut rng, dtype, n, k);
            let w = Interleaved::new(dtype, &q.data().unwrap(), n, k).unwrap();
            let theirs = QMatMul::from_qtensor(q).unwrap();
            for m in [1, 2, 3, 4, 5, 9] {
                let x = random(&mut rng, m * k);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let want = theirs
                    .forward(&xt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for &vnni in &kernels {
                    let mut got = vec![f32::NAN; m * n];
                    assert!(w.matmul_using(&x, m, &mut got, vnni));
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                            "{dtype:?} n={n} k={k} m={m} vnni={vnni}: output {i} is {a}, candle {b}"
                        );
                    }
                }
            }
        }
    }

    /// The Q8_0 activations are candle's bytes: values and (f16) scales,
    /// on random blocks, a zero block and one of rounding ties.
    #[test]
    fn q8_0_activations_are_candles() {
        use candle_core::quantized::k_quants::GgmlType;
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        let mut x = random(&mut rng, 6 * BLOCK);
        x[BLOCK..2 * BLOCK].fill(0.0);
        // max |x| = 127: scale 1, every k + 0.5 a tie.
        for (i, v) in x[2 * BLOCK..3 * BLOCK].iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[2 * BLOCK] = 127.0;
        let ours = Activations::new(&x, 2, 3 * BLOCK);
        let mut theirs = vec![BlockQ8_0::zeros(); 6];
        BlockQ8_0::from_float(&x, &mut theirs);
        // SAFETY: `BlockQ8_0` is `repr(C)`: an f16 and 32 i8, no padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                theirs.as_ptr().cast::<u8>(),
                std::mem::size_of_val(&theirs[..]),
            )
        };
        for (b, blk) in bytes.chunks_exact(Q8_0_BYTES).enumerate() {
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            assert_eq!(ours.d[b], d, "block {b}'s scale");
            let q: Vec<u8> = ours.q[b * BLOCK..(b + 1) * BLOCK]
                .iter()
                .map(|&v| v as u8)
                .collect();
            assert_eq!(q, blk[2..], "block {b}'s values");
        }
    }

    /// Extreme weights: -128 (not written by candle's quantizer, but a
    /// valid Q8_0 byte) and 127, against a float reference.
    #[test]
    fn extreme_bytes_are_exact() {
        if !available() {
            return;
        }
        let (n, k) = (4, 32);
        let mut bytes = Vec::new();
        for r in 0..n {
            bytes.extend_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
            bytes.extend((0..k).map(|i| if (i + r) % 2 == 0 { 0x80u8 } else { 127 }));
        }
        let w = Interleaved::new(GgmlDType::Q8_0, &bytes, n, k).unwrap();
        let x = vec![1.0f32; k];
        let mut got = vec![0f32; n];
        assert!(w.matmul(&x, 1, &mut got));
        // 16 values of -128 and 16 of 127, times x quantized to 127 with
        // scale 1/127.
        for v in got {
            assert!((v - 16.0 * (127.0 - 128.0)).abs() < 1e-3, "{v}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let row = [0u8; 34];
        assert_eq!(
            Interleaved::new(GgmlDType::Q8_0, &row.repeat(3), 3, 32).unwrap_err(),
            InterleaveError::Rows { rows: 3 }
        );
        assert_eq!(
            Interleaved::new(GgmlDType::Q8_0, &row.repeat(4), 4, 48).unwrap_err(),
            InterleaveError::Columns {
                columns: 48,
                block: 32
            }
        );
        assert!(matches!(
            Interleaved::new(GgmlDType::Q8_0, &row.repeat(5), 4, 32).unwrap_err(),
            InterleaveError::Length { expected: 136, .. }
        ));
        assert_eq!(
            Interleaved::new(GgmlDType::Q5K, &row, 4, 256).unwrap_err(),
            InterleaveError::Type {
                dtype: GgmlDType::Q5K
            }
        );
    }
}
