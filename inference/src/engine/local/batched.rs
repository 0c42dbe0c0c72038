//! Quantized matmuls for many rows at once (prompt prefill) on the CPU.
//!
//! candle's CPU quantized matmul computes one block dot product per
//! (token, output) pair; its tiled int8 kernels only apply when a row's
//! length is a multiple of 256, which a 896-wide model (Qwen2.5-0.5B) never
//! has. That is right for decoding one token — memory bound, the int8 dot
//! reads the fewest bytes — but a prompt of hundreds of tokens is compute
//! bound, and there llama.cpp's tiled GEMM kernels were 2.5x (Q8_0) to 8x
//! (Q5_0) faster. Here, above [`MIN_ROWS`] rows, each weight matrix is
//! dequantized a tile of output rows at a time (a few hundred KiB of f32,
//! kept in cache, never the whole model: no memory beyond one tile per
//! thread) and multiplied with the `gemm` crate's f32 kernels (AVX-512 /
//! AVX2 / NEON, picked at run time), tiles spread over rayon's threads.
//!
//! The activations are first rounded through the block type candle's own
//! kernel quantizes them to (Q8_0 for Q8_0/Q5_0/Q4_0 weights, Q8_K for
//! the k-quants), so a token's result is candle's up to the order of float
//! additions: a prompt gives the same logits whether it is prefilled at
//! once or, from the prefix cache, only in part (to ~1e-5, not bit for
//! bit: greedy decoding can differ only where two logits tie that closely).

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0, BlockQ5_1, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use super::interleaved::{self, Interleaved};
use rayon::prelude::*;

/// Rows (tokens) from which a matmul goes through [`gemm_dequantized`]
/// rather than candle's per-row kernel. Measured on Qwen2.5-0.5B shapes
/// (`tests::speed`, 2 threads, AVX-512, busy machine): at 8 rows the tiled
/// path is already 1.6-2.3x faster for Q8_0 and 4x for Q5_0, at 16 2-9x,
/// at 256 2.4-13x; 16 leaves decoding and short turns to
/// [`super::matvec`] (or candle, for the types it has no kernel for).
pub const MIN_ROWS: usize = 16;

/// Most f32 values of one dequantized weight tile: 160K (640 KiB) stays
/// in a core's L2 cache (1-2 MiB on current x86) next to the activations
/// streamed through it.
const TILE_VALUES: usize = 160 * 1024;

/// A quantized weight matrix `[out, in]` applied as `x · wᵀ`.
#[derive(Debug, Clone)]
pub struct QLinear {
    inner: Weights,
}

/// Where a matrix's bytes live.
#[derive(Debug, Clone)]
enum Weights {
    /// As the file has them, in candle's tensor.
    Candle(QMatMul),
    /// Q8_0, Q5_0, Q4_K or Q6_K on a CPU with the kernels, rows
    /// interleaved (the file's bytes rearranged, no second copy).
    Interleaved(Interleaved),
}

impl QLinear {
    /// Interleaves a CPU matrix of a type and shape
    /// [`super::interleaved`] takes, where this CPU has its kernels;
    /// keeps candle's tensor otherwise.
    pub fn from_qtensor(t: QTensor) -> Result<Self> {
        if t.device().is_cpu() && interleaved::available() {
            if let Ok((n, k)) = t.shape().dims2() {
                match Interleaved::new(t.dtype(), &t.data()?, n, k) {
                    Ok(w) => {
                        return Ok(Self {
                            inner: Weights::Interleaved(w),
                        })
                    }
                    Err(why) => tracing::trace!(
                        "{:?} [{n}, {k}] stays as the file has it: {why}",
                        t.dtype()
                    ),
                }
            }
        }
        Ok(Self {
            inner: Weights::Candle(QMatMul::from_qtensor(t)?),
        })
    }

    /// Interleaved weights: their kernels for any number of rows (from
    /// 16 rows to 256 they beat the f32 tiles too: `interleaved`'s
    /// documentation). Otherwise the tiled path when `x` has at least
    /// [`MIN_ROWS`] rows, lives on the CPU in f32 and the weight's block
    /// type is one it knows; candle's kernel otherwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let inner = match &self.inner {
            Weights::Interleaved(w) => return forward_interleaved(w, x),
            Weights::Candle(inner) => inner,
        };
        if let QMatMul::QTensor(w) = inner {
            if x.device().is_cpu() && x.dtype() == DType::F32 {
                let dims = x.dims();
                let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
                let ours = if rows >= MIN_ROWS && !candle_tiles(w) {
                    forward_cpu(w, x)?
                } else if rows < MIN_ROWS && super::matvec::handles(w.dtype()) {
                    // Few rows: see `matvec` for why not candle's kernel.
                    cpu_matmul(w, x, |data, x, m, k, n, dst| {
                        super::matvec::matmul(w.dtype(), data, x, m, k, n, dst)
                    })?
                } else {
                    None
                };
                if let Some(y) = ours {
                    return Ok(y);
                }
            }
        }
        inner.forward(x)
    }
}

/// `x · wᵀ` for interleaved weights, `x` of any float type on the CPU.
fn forward_interleaved(w: &Interleaved, x: &Tensor) -> Result<Tensor> {
    let (n, k) = (w.rows(), w.columns());
    let mut out_dims = x.dims().to_vec();
    match out_dims.last_mut() {
        Some(last) if *last == k => *last = n,
        _ => candle_core::bail!("input {:?} does not fit weight [{n}, {k}]", x.shape()),
    }
    let dtype = x.dtype();
    let m = x.elem_count() / k;
    let xs = x
        .to_dtype(DType::F32)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut dst = vec![0f32; m * n];
    if !w.matmul(&xs, m, &mut dst) {
        // Not reached: `from_qtensor` interleaves only where the kernels run.
        candle_core::bail!("no interleaved kernel on this CPU");
    }
    Tensor::from_vec(dst, out_dims, x.device())?.to_dtype(dtype)
}

/// `x · wᵀ` on the CPU through `kernel(w's bytes, x, m, k, n, out)`;
/// `None` when the kernel declines (then candle's runs).
fn cpu_matmul(
    w: &QTensor,
    x: &Tensor,
    kernel: impl FnOnce(&[u8], &[f32], usize, usize, usize, &mut [f32]) -> bool,
) -> Result<Option<Tensor>> {
    let (n, k) = w.shape().dims2()?;
    let mut out_dims = x.dims().to_vec();
    let Some(last) = out_dims.last_mut() else {
        return Ok(None);
    };
    if *last != k {
        candle_core::bail!("input {:?} does not fit weight {:?}", x.shape(), w.shape());
    }
    *last = n;
    let m = x.elem_count() / k;
    let x = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let data = w.data()?;
    let mut dst = vec![0f32; m * n];
    if !kernel(&data, &x, m, k, n, &mut dst) {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(
        dst,
        out_dims,
        &candle_core::Device::Cpu,
    )?))
}

/// Whether candle's own tiled int8 kernels (x86, `repack_x86.rs` in
/// candle-core) take `w`: rows of whole 256-blocks, outputs in sixteens,
/// Q4_K / Q6_K, or Q8_0 where VNNI is there. Those beat the f32 tiles
/// (measured with `tests::speed`: Q8_0 and Q6_K 1.7-2.7x faster, Q4_K
/// about even), so they are left to it.
fn candle_tiles(w: &QTensor) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Ok((n, k)) = w.shape().dims2() else {
            return false;
        };
        let vnni = is_x86_feature_detected!("avx512vnni") || is_x86_feature_detected!("avxvnni");
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        k.is_multiple_of(256)
            && n.is_multiple_of(16)
            && match w.dtype() {
                GgmlDType::Q4K | GgmlDType::Q6K => avx2,
                GgmlDType::Q8_0 => vnni,
                _ => false,
            }
    }
    // Elsewhere (aarch64's NEON repacking) unmeasured here: candle keeps
    // the types it repacks.
    #[cfg(not(target_arch = "x86_64"))]
    {
        matches!(
            w.dtype(),
            GgmlDType::Q4_0 | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K | GgmlDType::Q8_0
        )
    }
}

/// `x · wᵀ` through [`gemm_dequantized`]; `None` when `w`'s type or
/// layout is not one it handles (then candle's kernel runs). Public for
/// `benches/kernels.rs`, which times it against candle.
pub fn forward_cpu(w: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    cpu_matmul(w, x, |data, x, m, k, n, dst| {
        gemm_dequantized_by_type(w.dtype(), data, x, m, k, n, dst)
    })
}

/// [`gemm_dequantized`] for a block type known at run time; `false` for a
/// type it does not handle.
fn gemm_dequantized_by_type(
    dtype: GgmlDType,
    data: &[u8],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
) -> bool {
    match dtype {
        GgmlDType::Q4_0 => run::<BlockQ4_0>(data, x, m, k, n, dst),
        GgmlDType::Q4_1 => run::<BlockQ4_1>(data, x, m, k, n, dst),
        GgmlDType::Q5_0 => run::<BlockQ5_0>(data, x, m, k, n, dst),
        GgmlDType::Q5_1 => run::<BlockQ5_1>(data, x, m, k, n, dst),
        GgmlDType::Q8_0 => run::<BlockQ8_0>(data, x, m, k, n, dst),
        GgmlDType::Q2K => run::<BlockQ2K>(data, x, m, k, n, dst),
        GgmlDType::Q3K => run::<BlockQ3K>(data, x, m, k, n, dst),
        GgmlDType::Q4K => run::<BlockQ4K>(data, x, m, k, n, dst),
        GgmlDType::Q5K => run::<BlockQ5K>(data, x, m, k, n, dst),
        GgmlDType::Q6K => run::<BlockQ6K>(data, x, m, k, n, dst),
        _ => false,
    }
}

/// Views `data` as blocks of `T` and multiplies; `false` when the bytes
/// are not whole, aligned blocks of an `[n, k]` matrix.
fn run<T: GgmlType>(data: &[u8], x: &[f32], m: usize, k: usize, n: usize, dst: &mut [f32]) -> bool {
    let size = std::mem::size_of::<T>();
    if !k.is_multiple_of(T::BLCK_SIZE)
        || !k.is_multiple_of(T::VecDotType::BLCK_SIZE)
        || data.len() != n * (k / T::BLCK_SIZE) * size
        || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return false;
    }
    // SAFETY: the length and alignment were checked just above, and the
    // block types are `repr(C)` structs of integers and f16s, for which
    // every bit pattern is a valid value; `data` outlives the slice.
    let blocks =
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<T>(), data.len() / size) };
    gemm_dequantized(blocks, x, m, k, n, dst);
    true
}

/// `dst[m, n] = x[m, k] · w[n, k]ᵀ`, `w` in blocks of `T` (row `j` is
/// `w[j * k / T::BLCK_SIZE ..]`). `k` must be a multiple of both block
/// sizes; see the module documentation for the method.
pub fn gemm_dequantized<T: GgmlType>(
    w: &[T],
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
) {
    assert_eq!(x.len(), m * k, "x is not [{m}, {k}]");
    assert_eq!(dst.len(), m * n, "dst is not [{m}, {n}]");
    let per_row = k / T::BLCK_SIZE;
    assert_eq!(w.len(), n * per_row, "w is not [{n}, {k}]");
    if m == 0 || n == 0 {
        return;
    }
    let xq = rounded_like::<T::VecDotType>(x, m, k);
    gemm_tiles(&xq, m, k, n, dst, |j0, tile| {
        let rows = tile.len() / k;
        T::to_float(&w[j0 * per_row..(j0 + rows) * per_row], tile)
    });
}

/// The `m` rows of `x` (each `k` long) rounded through the activation
/// block type `B`: what candle's kernel multiplies the weights with.
fn rounded_like<B: GgmlType>(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let mut xq = vec![0f32; m * k];
    xq.par_chunks_mut(k).zip(x.par_chunks(k)).for_each_init(
        || vec![B::zeros(); k / B::BLCK_SIZE],
        |blocks, (out, row)| {
            B::from_float(row, blocks);
            B::to_float(blocks, out);
        },
    );
    xq
}

/// `dst[m, n] = xq[m, k] · wᵀ` where `dequantize(j0, tile)` writes rows
/// `j0..j0 + tile.len() / k` of `w` as f32 (`j0` and the row count are
/// multiples of 16 but for the last tile, which ends at `n`).
fn gemm_tiles(
    xq: &[f32],
    m: usize,
    k: usize,
    n: usize,
    dst: &mut [f32],
    dequantize: impl Fn(usize, &mut [f32]) + Sync,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Rows per tile: what fits [`TILE_VALUES`], evened out so that every
    // thread gets the same number of tiles.
    let threads = rayon::current_num_threads().max(1);
    let most = (TILE_VALUES / k).clamp(16, 512);
    let tiles = n.div_ceil(most).div_ceil(threads) * threads;
    let tile = n.div_ceil(tiles).div_ceil(16) * 16;
    let dst_at = dst.as_mut_ptr() as usize;
    (0..n.div_ceil(tile)).into_par_iter().for_each_init(
        || vec![0f32; tile * k],
        |wf, t| {
            let j0 = t * tile;
            let rows = tile.min(n - j0);
            let wf = &mut wf[..rows * k];
            dequantize(j0, wf);
            // SAFETY: `dst` is `[m, n]` (asserted by the callers) and
            // outlives this parallel loop; this task writes only columns
            // `j0..j0 + rows` of it, which no other task writes, and
            // nothing reads `dst` until the loop ends. `xq` is `[m, k]`
            // and `wf` `[rows, k]`, both row-major: the strides below stay
            // inside them.
            unsafe {
                gemm::gemm(
                    m,
                    rows,
                    k,
                    (dst_at as *mut f32).add(j0),
                    1,
                    n as isize,
                    false,
                    xq.as_ptr(),
                    1,
                    k as isize,
                    wf.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::local::kernel_tests::{max_abs, random};
    use candle_core::Device;
    use rand::SeedableRng;

    /// Our result and candle's own quantized matmul on the same random
    /// weights, per block type, with shapes that are not multiples of the
    /// tile size nor of 256 where the type allows.
    #[test]
    fn matches_candles_kernel_on_random_data() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let cases: &[(GgmlDType, usize, usize, usize)] = &[
            (GgmlDType::Q8_0, 17, 192, 40),
            (GgmlDType::Q8_0, 33, 896, 131),
            (GgmlDType::Q5_0, 16, 192, 19),
            (GgmlDType::Q5_0, 40, 896, 77),
            (GgmlDType::Q4_0, 21, 64, 300),
            (GgmlDType::Q5_1, 18, 320, 5),
            (GgmlDType::Q4_1, 19, 128, 33),
            (GgmlDType::Q4K, 23, 512, 45),
            (GgmlDType::Q6K, 29, 256, 130),
            (GgmlDType::Q5K, 16, 256, 17),
            (GgmlDType::Q3K, 16, 256, 9),
            (GgmlDType::Q2K, 20, 768, 24),
        ];
        for &(dtype, m, k, n) in cases {
            let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
            let x = Tensor::from_vec(random(&mut rng, m * k), (1, m, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let ours = forward_cpu(&q, &x).unwrap().expect("handled");
            assert_eq!(ours.dims(), &[1, m, n]);
            let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
            let diff = max_abs(&(&ours - &theirs).unwrap());
            let scale = max_abs(&theirs);
            // Q4_1 / Q5_1 weights meet Q8_1 activations, whose block sums
            // candle keeps in f16: its own result is off by that rounding.
            let tolerance = match dtype {
                GgmlDType::Q4_1 | GgmlDType::Q5_1 => 1e-3,
                _ => 1e-5,
            };
            assert!(
                diff <= tolerance * scale.max(1.0),
                "{dtype:?} {m}x{k}x{n}: differs by {diff} (largest value {scale})"
            );
        }
    }

    #[test]
    fn below_the_threshold_and_odd_types_go_to_candle() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let (k, n) = (64, 8);
        let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
        let x = Tensor::from_vec(random(&mut rng, 3 * k), (3, k), &Device::Cpu).unwrap();
        let lin = QLinear::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        assert_eq!(lin.forward(&x).unwrap().dims(), &[3, n]);
        // f16 weights are no block type here: candle's path, same shape.
        let f16 = QTensor::quantize(&w, GgmlDType::F16).unwrap();
        let x = Tensor::from_vec(random(&mut rng, 20 * k), (20, k), &Device::Cpu).unwrap();
        assert!(forward_cpu(&f16, &x).unwrap().is_none());
        let lin = QLinear::from_qtensor(f16).unwrap();
        assert_eq!(lin.forward(&x).unwrap().dims(), &[20, n]);
    }

    /// A CPU Q8_0 matrix is interleaved (where the CPU has the kernels)
    /// and gives candle's result through both paths: the decoding
    /// kernels below [`MIN_ROWS`] rows, dequantized tiles above, with a
    /// leading batch dimension.
    #[test]
    fn interleaved_q8_0_matches_candle_at_every_row_count() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let (k, n) = (896, 68);
        let w = Tensor::from_vec(random(&mut rng, n * k), (n, k), &Device::Cpu).unwrap();
        let theirs =
            QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        let ours = QLinear::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        assert_eq!(
            matches!(ours.inner, Weights::Interleaved(_)),
            interleaved::available()
        );
        for m in [1, 3, MIN_ROWS - 1, MIN_ROWS, 40] {
            let x = Tensor::from_vec(random(&mut rng, m * k), (1, m, k), &Device::Cpu).unwrap();
            let a = ours.forward(&x).unwrap();
            let b = theirs.forward(&x).unwrap();
            assert_eq!(a.dims(), &[1, m, n]);
            let diff = max_abs(&(&a - &b).unwrap());
            assert!(
                diff <= 1e-4 * max_abs(&b).max(1.0),
                "m={m}: differs by {diff}"
            );
        }
        let x = Tensor::zeros((2, 100), DType::F32, &Device::Cpu).unwrap();
        assert!(ours.forward(&x).is_err());
    }

    #[test]
    fn a_misfitting_input_is_an_error() {
        let w = Tensor::zeros((8, 64), DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let x = Tensor::zeros((20, 32), DType::F32, &Device::Cpu).unwrap();
        assert!(forward_cpu(&q, &x).is_err());
    }
}
