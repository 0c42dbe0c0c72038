//! Causal grouped-query attention on the CPU, one block of query rows at a
//! time.
//!
//! Written out with candle's tensor ops, attention over a long history
//! makes, per layer and prefill chunk, a `[heads, chunk, history]` score
//! tensor, then a mask of the same size, a masked copy, a softmax copy
//! (scalar `expf`) and only then the weighted values: at a 4k-token
//! history, a 256-token chunk of Qwen2.5-0.5B moved ~60 MB through memory
//! four times per layer, freshly allocated (page faults) each time, and
//! the cold 4k prefill ran at half its short-prompt speed (0.66x
//! llama.cpp). Here each rayon task takes [`BLOCK`] query rows of one KV
//! head: their scores against the keys they may see (one `gemm`, into a
//! buffer the thread reuses), the causal cut and softmax in place, and the
//! weighted sum of the values (a second `gemm`); a block's scores stay in
//! the core's cache, and nothing is allocated per block.
//! Decoding (one token per query head) skips `gemm` on x86: direct
//! AVX2/FMA dot products with the query, then the output row, in
//! registers (`x86::decode`).

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Arc;

/// Query rows per task: 64 rows of scores against a 4k history are 1 MiB,
/// about a core's L2 cache.
const BLOCK: usize = 64;

/// `softmax(q · kᵀ · scale, causal) · v` for queries `q` of shape
/// `[1, kv_heads, groups * n, head_dim]` (the `groups` query heads that
/// share a KV head stacked, each `n` rows: row `g * n + i` is token `i`
/// of query head `g`) against keys and values `[1, kv_heads, pos + n,
/// head_dim]` (rows contiguous within a head; the heads may be views of
/// larger buffers); token `i` sits at position `pos + i` and sees keys
/// `0..=pos + i` (only the last `window` of them in a sliding-window
/// layer). The output has `q`'s shape. CPU and f32 only (other devices run
/// candle's ops: see the caller).
#[derive(Debug, Clone)]
pub struct CausalAttention {
    /// Tokens before the first query (cached keys).
    pub pos: usize,
    /// Query tokens.
    pub n: usize,
    pub scale: f32,
    /// A sliding-window layer's window: a token sees itself and the
    /// `window - 1` tokens before it (Gemma 3's local layers).
    pub window: Option<usize>,
    /// gpt-oss: per query head (`kv_head * groups + g`), a logit that
    /// joins each row's softmax and is then dropped, so a row's weights
    /// may sum to less than one.
    pub sinks: Option<Arc<[f32]>>,
}

/// [`CausalAttention`] with candle's tensor ops, for the devices it does
/// not run on: `q · kᵀ · scale`, plus `mask` (from [`causal_mask`]; `None`
/// for one token, which sees every key), softmax, `· v`. Same shapes.
pub fn with_tensor_ops(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    n: usize,
    scale: f64,
    sinks: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, kv_heads, rows, _) = q.dims4()?;
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let total = k.dim(2)?;
    let att = (q.matmul(&k.t()?)? * scale)?;
    let att = match mask {
        Some(m) => att
            .reshape((b, kv_heads, rows / n, n, total))?
            .broadcast_add(m)?
            .reshape((b, kv_heads, rows, total))?,
        None => att,
    };
    match sinks {
        None => candle_nn::ops::softmax_last_dim(&att)?.matmul(&v),
        Some(sinks) => {
            // One more column per row, its head's sink, dropped after the
            // softmax.
            let groups = rows / n;
            let column = sinks
                .to_dtype(att.dtype())?
                .reshape((1, kv_heads, groups, 1))?
                .broadcast_as((b, kv_heads, groups, n))?
                .reshape((b, kv_heads, rows, 1))?;
            let att = Tensor::cat(&[&att, &column], 3)?;
            candle_nn::ops::softmax_last_dim(&att)?
                .narrow(3, 0, total)?
                .contiguous()?
                .matmul(&v)
        }
    }
}

/// Additive mask `[n, pos + n]` for [`with_tensor_ops`]: query `i` (at
/// position `pos + i`) sees keys up to its own position, and within a
/// sliding `window` only the last `window` of them.
pub fn causal_mask(n: usize, pos: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let total = pos + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| {
            let p = pos + i;
            (0..total).map(move |j| {
                let hidden = j > p || window.is_some_and(|w| p - j >= w);
                if hidden {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (n, total), device)
}

thread_local! {
    /// One block's scores, reused by the thread's next block.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Per head `h`, the `[rows, d]` f32 values of a CPU tensor of shape
/// `[1, heads, rows, d]` whose rows are contiguous within a head (heads
/// may lie further apart: the KV cache's views of buffers with room to
/// grow), or an error naming `what`.
fn heads<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Vec<&'a [f32]>> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("attention: {what} is not f32");
    };
    let (_, heads, rows, d) = l.shape().dims4()?;
    let stride = l.stride();
    if stride[3] != 1 || stride[2] != d {
        candle_core::bail!("attention: {what} rows are not contiguous ({stride:?})");
    }
    (0..heads)
        .map(|h| {
            let at = l.start_offset() + h * stride[1];
            data.get(at..at + rows * d)
                .ok_or_else(|| candle_core::Error::Msg(format!("attention: {what} out of bounds")))
        })
        .collect()
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "clawpen-causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, kv_heads, rows, d) = ql.shape().dims4()?;
        let total = self.pos + self.n;
        if b != 1 || self.n == 0 || !rows.is_multiple_of(self.n) {
            candle_core::bail!("attention: queries {:?} for {} tokens", ql.shape(), self.n);
        }
        for (what, l) in [("keys", kl), ("values", vl)] {
            if l.shape().dims() != [1, kv_heads, total, d] {
                candle_core::bail!(
                    "attention: {what} {:?}, expected [1, {kv_heads}, {total}, {d}]",
                    l.shape()
                );
            }
        }
        let q = heads(qs, ql, "queries")?;
        let k = heads(ks, kl, "keys")?;
        let v = heads(vs, vl, "values")?;
        let mut out = vec![0f32; kv_heads * rows * d];
        out.par_chunks_mut(rows * d)
            .enumerate()
            .for_each(|(h, out)| {
                out.par_chunks_mut(BLOCK * d)
                    .enumerate()
                    .for_each(|(blk, out)| self.block(h, q[h], k[h], v[h], blk * BLOCK, d, out));
            });
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }
}

impl CausalAttention {
    /// Keys visible to query row `row` (token `row % n`): `0..visible`,
    /// from [`Self::first`] on.
    fn visible(&self, row: usize) -> usize {
        self.pos + row % self.n + 1
    }

    /// The first key query row `row` sees (0 unless a window cuts it).
    fn first(&self, row: usize) -> usize {
        self.window
            .map_or(0, |w| self.visible(row).saturating_sub(w))
    }

    /// The sink of query row `row` of KV head `h`, if the layer has sinks.
    fn sink(&self, h: usize, row: usize, rows: usize) -> Option<f32> {
        let groups = rows / self.n;
        self.sinks
            .as_ref()
            .and_then(|s| s.get(h * groups + row / self.n).copied())
    }

    /// Rows `r0..r0 + out.len() / d` of KV head `h`: `q` its `[rows, d]`
    /// queries, `k` and `v` its `[pos + n, d]` keys and values.
    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        h: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        r0: usize,
        d: usize,
        out: &mut [f32],
    ) {
        let rows = q.len() / d;
        let nr = out.len() / d;
        // Keys any row of the block sees: the block's scores start and
        // stop there.
        let lo = (r0..r0 + nr).map(|r| self.first(r)).min().unwrap_or(0);
        let end = (r0..r0 + nr).map(|r| self.visible(r)).max().unwrap_or(0);
        let span = end - lo;
        let (k, v) = (&k[lo * d..], &v[lo * d..]);
        SCORES.with(|scores| {
            let mut scores = scores.borrow_mut();
            scores.resize(nr * span, 0.0);
            let s = &mut scores[..nr * span];
            #[cfg(target_arch = "x86_64")]
            if self.n == 1 && self.sinks.is_none() && x86::decodes(d) {
                // SAFETY: `decodes` checked AVX2, FMA and `d`; `q` holds
                // rows `r0..r0 + nr` of `d` values, `k` and `v` (from key
                // `lo`) at least `span` rows (`lo + span <= pos + n`), `s`
                // is `nr × span` and `out` `nr × d`. One token: every row
                // sees the same keys, all `span` of them.
                unsafe { x86::decode(&q[r0 * d..(r0 + nr) * d], k, v, d, self.scale, s, out) };
                return;
            }
            // SAFETY: `gemm` reads `nr × d` queries from row `r0` of `q`
            // (row stride `d`), `span × d` keys from `k` read transposed
            // (`lo + span <= pos + n`, the rows `k` holds from key `lo`)
            // and writes the
            // `nr × span` scores `s` holds; the slices do not overlap.
            unsafe {
                gemm::gemm(
                    nr,
                    span,
                    d,
                    s.as_mut_ptr(),
                    1,
                    span as isize,
                    false,
                    q[r0 * d..].as_ptr(),
                    1,
                    d as isize,
                    k.as_ptr(),
                    d as isize,
                    1,
                    0.0,
                    self.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (r, row) in s.chunks_exact_mut(span).enumerate() {
                let (before, rest) = row.split_at_mut(self.first(r0 + r) - lo);
                let (seen, after) = rest.split_at_mut(self.visible(r0 + r) - self.first(r0 + r));
                softmax_with_sink(seen, self.sink(h, r0 + r, rows));
                before.fill(0.0);
                after.fill(0.0);
            }
            // SAFETY: `gemm` reads the `nr × span` weights `s` holds and
            // `span × d` values of `v` (`lo + span <= pos + n`, the rows
            // `v` holds from key `lo`) and writes the `nr × d` outputs `out` holds; the
            // slices do not overlap.
            unsafe {
                gemm::gemm(
                    nr,
                    d,
                    span,
                    out.as_mut_ptr(),
                    1,
                    d as isize,
                    false,
                    s.as_ptr(),
                    1,
                    span as isize,
                    v.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    }
}

/// One token per query head (decoding): each row's scores and weighted
/// values by direct dot products, the query (or the output row) held in
/// registers. The `gemm` crate's packing and dispatch, made for big
/// matrices, cost more than the arithmetic at one row per head: its two
/// calls per head and layer were up to 9% of a 1.5B decode step.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::matvec::hsum;
    use std::arch::x86_64::*;

    /// Whether [`decode`] takes rows of `d` values on this CPU.
    pub fn decodes(d: usize) -> bool {
        matches!(d, 64 | 128) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// `out` = softmax(`q` · `k`ᵀ · `scale`) · `v` for the query rows of
    /// `q` (rows of `d`), each seeing the first `span = s.len() / rows`
    /// keys; `s` takes the scores.
    ///
    /// # Safety
    /// AVX2 and FMA, `d` 64 or 128 ([`decodes`]).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn decode(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d: usize,
        scale: f32,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        match d {
            64 => rows_of::<8>(q, k, v, scale, s, out),
            128 => rows_of::<16>(q, k, v, scale, s, out),
            _ => unreachable!("decodes() takes 64 or 128"),
        }
    }

    /// [`decode`] for rows of `8 * L` values.
    #[target_feature(enable = "avx2,fma")]
    fn rows_of<const L: usize>(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        scale: f32,
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let d = 8 * L;
        let nr = out.len() / d;
        let span = s.len() / nr.max(1);
        assert!(
            q.len() == nr * d
                && out.len() == nr * d
                && s.len() == nr * span
                && k.len() >= span * d
                && v.len() >= span * d
        );
        for (r, srow) in s.chunks_exact_mut(span).enumerate() {
            // SAFETY: every load below is 8 floats from `r * d + 8i`
            // (`q`, `out`: row `r < nr`) or `j * d + 8i` (`k`, `v`:
            // `j < span`) with `i < L`, inside the slices as asserted.
            unsafe {
                let qr: [__m256; L] =
                    std::array::from_fn(|i| _mm256_loadu_ps(q.as_ptr().add(r * d + 8 * i)));
                for (j, score) in srow.iter_mut().enumerate() {
                    let kp = k.as_ptr().add(j * d);
                    let mut a = [_mm256_setzero_ps(); 2];
                    for (i, qv) in qr.iter().enumerate() {
                        a[i % 2] = _mm256_fmadd_ps(*qv, _mm256_loadu_ps(kp.add(8 * i)), a[i % 2]);
                    }
                    *score = hsum(_mm256_add_ps(a[0], a[1])) * scale;
                }
                super::softmax(srow);
                let mut acc = [_mm256_setzero_ps(); L];
                for (j, &p) in srow.iter().enumerate() {
                    let w = _mm256_set1_ps(p);
                    let vp = v.as_ptr().add(j * d);
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(vp.add(8 * i)), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(r * d + 8 * i), *a);
                }
            }
        }
    }
}

/// `x` replaced by its softmax; with a `sink`, the softmax of `x` and the
/// sink together, the sink's own weight dropped.
fn softmax_with_sink(x: &mut [f32], sink: Option<f32>) {
    match sink {
        None => softmax(x),
        Some(sink) => {
            let max = x.iter().copied().fold(sink, f32::max);
            let mut sum = exp(sink - max);
            for v in x.iter_mut() {
                *v = exp(*v - max);
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in x.iter_mut() {
                *v *= inv;
            }
        }
    }
}

/// `x` replaced by its softmax. Maximum and sum over eight lanes, so the
/// loops vectorize (a float sum in one chain cannot be reordered).
fn softmax(x: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(c) {
            *m = m.max(*v);
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (s, v) in lanes.iter_mut().zip(c) {
            *s += *v;
        }
    }
    let sum: f32 = chunks.remainder().iter().chain(&lanes).sum();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` for `x <= 0` (softmax after the max is subtracted), to about
/// 2e-7 relative: `e^x = 2^i · e^r` with `i` the integer nearest
/// `x · log2 e` and `r = x - i · ln 2` (ln 2 in two parts, as Cephes
/// does, so `r` keeps its precision), `|r| <= ln 2 / 2`; `2^i` from the
/// exponent bits, `e^r` its Taylor polynomial of degree 7 (next term
/// below 1e-8). Plain arithmetic (no `floor`, which baseline x86-64 lacks
/// as an instruction), so a loop of it vectorizes where `f32::exp` calls
/// libm once per value: a tenth of a 4k prefill went to `expf`.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Below this e^x is under f32's smallest normal: as good as 0 here.
    let x = x.max(-87.0);
    // Truncating a negative number rounds it up: i in (t - 1/2, t + 1/2].
    let i = (x * std::f32::consts::LOG2_E - 0.5) as i32;
    let fi = i as f32;
    let r = x - fi * 0.693_359_4 + fi * 2.121_944_4e-4;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // i >= -126 by the clamp: a normal power of two.
    p * f32::from_bits(((i + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::local::kernel_tests::max_abs;

    #[test]
    fn exp_is_close_to_libm_down_to_the_clamp() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.001;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-1000.0), exp(-87.0));
    }

    #[test]
    fn matches_candles_ops_for_prefill_chunks_and_decoding() {
        let dev = Device::Cpu;
        // (kv heads, groups, head dim, cached tokens, new tokens): one
        // token (decoding), a chunk after a history, a first chunk, and
        // blocks that end mid-head (rows not a multiple of BLOCK).
        for (kv_heads, groups, d, pos, n) in [
            (2, 7, 64, 300, 1),
            (2, 6, 128, 257, 1),
            (2, 7, 64, 150, 40),
            (1, 3, 32, 0, 70),
            (2, 2, 16, 5, 33),
        ] {
            let rows = groups * n;
            let q = Tensor::randn(0f32, 1.0, (1, kv_heads, rows, d), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (1, kv_heads, pos + n, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, kv_heads, pos + n, d), &dev).unwrap();
            // Whole history, and sliding windows shorter than the history,
            // than one block and than the chunk.
            // And with a sink per query head (gpt-oss).
            let sink_values: Vec<f32> = (0..kv_heads * groups).map(|h| h as f32 - 1.5).collect();
            let sinks_tensor = Tensor::new(sink_values.as_slice(), &dev).unwrap();
            for window in [None, Some(100), Some(17), Some(1)] {
                for sinks in [None, Some(Arc::<[f32]>::from(sink_values.as_slice()))] {
                    let with_sinks = sinks.is_some();
                    let op = CausalAttention {
                        pos,
                        n,
                        scale: 1.0 / (d as f32).sqrt(),
                        window,
                        sinks,
                    };
                    let ours = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
                    let mask = causal_mask(n, pos, window, &dev).unwrap();
                    let scale = 1.0 / (d as f64).sqrt();
                    let theirs = with_tensor_ops(
                        &q,
                        &k,
                        &v,
                        Some(&mask),
                        n,
                        scale,
                        with_sinks.then_some(&sinks_tensor),
                    )
                    .unwrap();
                    let diff = max_abs(&(ours - theirs).unwrap());
                    assert!(
                        diff < 1e-5,
                        "{kv_heads}x{groups} d{d} pos {pos} n {n} window {window:?} \
                         sinks {with_sinks}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn reads_keys_and_values_from_views_of_larger_buffers() {
        let dev = Device::Cpu;
        let (kv_heads, groups, d, pos, n) = (2, 3, 16, 20, 5);
        let q = Tensor::randn(0f32, 1.0, (1, kv_heads, groups * n, d), &dev).unwrap();
        // Buffers with room for 40 tokens, 25 of them used (as the KV
        // cache holds them).
        let kb = Tensor::randn(0f32, 1.0, (1, kv_heads, 40, d), &dev).unwrap();
        let vb = Tensor::randn(0f32, 1.0, (1, kv_heads, 40, d), &dev).unwrap();
        let (k, v) = (
            kb.narrow(2, 0, pos + n).unwrap(),
            vb.narrow(2, 0, pos + n).unwrap(),
        );
        assert!(!k.is_contiguous());
        let op = CausalAttention {
            pos,
            n,
            scale: 0.25,
            window: None,
            sinks: None,
        };
        let viewed = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
        let copied = q
            .apply_op3_no_bwd(&k.contiguous().unwrap(), &v.contiguous().unwrap(), &op)
            .unwrap();
        let diff = max_abs(&(viewed - copied).unwrap());
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn refuses_shapes_that_do_not_fit() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 14, 8), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 9, 8), candle_core::DType::F32, &dev).unwrap();
        let op = CausalAttention {
            pos: 5,
            n: 2,
            scale: 1.0,
            window: None,
            sinks: None,
        };
        // 5 + 2 keys expected, 9 given.
        let err = q.apply_op3_no_bwd(&k, &k, &op).unwrap_err().to_string();
        assert!(err.contains("expected [1, 2, 7, 8]"), "{err}");
        // 14 rows are not a whole number of 4-token groups.
        let op = CausalAttention {
            pos: 5,
            n: 4,
            scale: 1.0,
            window: None,
            sinks: None,
        };
        let k = Tensor::zeros((1, 2, 9, 8), candle_core::DType::F32, &dev).unwrap();
        let err = q.apply_op3_no_bwd(&k, &k, &op).unwrap_err().to_string();
        assert!(err.contains("for 4 tokens"), "{err}");
    }
}
