//! One decoder-only transformer for every architecture the local engine
//! runs (llama, qwen2, qwen3, qwen3moe, llama-style MoE such as Mixtral,
//! and gemma3), with the KV cache held *outside* the weights.
//!
//! candle-transformers' quantized models keep their KV cache in private
//! fields that can only be extended or cleared. A prefix cache shared by
//! several conversations needs more: keep the keys and values of many token
//! sequences, cut one back to the prefix a new prompt shares with it, and
//! hand it to the model. So the forward pass here takes a [`KvCache`]
//! value (per layer, keys and values as reference-counted tensors: a copy
//! is cheap and cutting is a view). The maths follows candle's
//! `quantized_llama` / `quantized_qwen3` (and llama.cpp): RMS norm, RoPE
//! (interleaved for llama, NeoX for the Qwen family), grouped-query
//! attention, SwiGLU feed-forward or a mixture of experts (softmax router,
//! top-k experts with renormalised weights, as Qwen3-MoE and Mixtral do;
//! computed here per expert because candle's fused MoE kernel is
//! CUDA-only); the architecture differences are data
//! (biases, q/k norms, head size, rope layout, experts; Gemma 3's scaled
//! embeddings, norms after each block, GELU, and sliding-window layers
//! with their own rotary base), read from the GGUF metadata by
//! [`super::gguf`]. Gemma's `1 + weight` norms need nothing here: the
//! GGUF converter stores the weights with the 1 added, as llama.cpp reads
//! them.

use std::io::{Read, Seek};

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;

use super::attention::{causal_mask, with_tensor_ops, CausalAttention};
use super::batched::QLinear;

/// The shape and layout of a model, from its GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub layers: usize,
    pub embedding: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    /// NeoX rotary layout (pairs `i`, `i + d/2`: the Qwen family) rather
    /// than interleaved (pairs `2i`, `2i + 1`: llama).
    pub rope_neox: bool,
    /// Experts per layer and experts used per token; `None`: dense.
    pub experts: Option<(usize, usize)>,
    /// Multiplies the attention scores (`1 / sqrt(head_dim)` for all the
    /// architectures here; a field because Gemma 3 27B differs).
    pub attention_scale: f32,
    /// Multiplies the token embeddings (Gemma: `sqrt(embedding)`).
    pub embedding_scale: Option<f32>,
    /// The gated feed-forward's activation.
    pub activation: Activation,
    /// RMS norms after the attention and the feed-forward blocks, before
    /// their residual adds (Gemma's `post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Sliding-window attention on some layers; `None`: every layer sees
    /// the whole history.
    pub sliding: Option<SlidingWindow>,
    /// Linear RoPE scaling of the full-attention layers: positions are
    /// divided by it (`rope.scaling.factor`; 1 for none).
    pub rope_scale: f32,
    /// Final logits soft-capped to `±cap` (`cap · tanh(x / cap)`).
    pub logit_softcap: Option<f32>,
    /// YaRN context extension of the rotary embedding (gpt-oss).
    pub yarn: Option<Yarn>,
}

/// YaRN's rotary scaling (llama.cpp's `rope_yarn`): each frequency is
/// interpolated by `1 / factor`, extrapolated, or a mix of both by where
/// it falls between the corrections dimensions of `beta_fast` and
/// `beta_slow` rotations over the original context; cos and sin are
/// scaled by `attn_factor · (1 + 0.1 ln factor)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    pub original_context: f32,
    pub beta_fast: f32,
    pub beta_slow: f32,
    pub attn_factor: f32,
}

impl Yarn {
    /// The inverse frequencies of `head_dim / 2` rotated pairs for `base`,
    /// and the factor cos and sin are scaled by.
    fn inverse_frequencies(&self, base: f32, head_dim: usize) -> (Vec<f32>, f32) {
        let dims = head_dim as f32;
        let corr = |rotations: f32| {
            dims * (self.original_context / (rotations * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let low = corr(self.beta_fast).floor().max(0.0);
        let high = corr(self.beta_slow).ceil().min(dims - 1.0);
        let scale = 1.0 / self.factor;
        let inv = (0..head_dim / 2)
            .map(|i| {
                let extrapolated = base.powf(-2.0 * i as f32 / dims);
                let ramp = 1.0 - ((i as f32 - low) / (high - low).max(0.001)).clamp(0.0, 1.0);
                extrapolated * (scale * (1.0 - ramp) + ramp)
            })
            .collect();
        (inv, self.attn_factor * (1.0 + 0.1 * self.factor.ln()))
    }
}

impl Config {
    /// The defaults of the llama family for the fields that architecture
    /// does not vary: dense or not, the rest of the shape as given.
    #[allow(clippy::too_many_arguments)]
    pub fn plain(
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        layers: usize,
        embedding: usize,
        rms_eps: f64,
        rope_base: f32,
        rope_neox: bool,
    ) -> Self {
        Self {
            heads,
            kv_heads,
            head_dim,
            layers,
            embedding,
            rms_eps,
            rope_base,
            rope_neox,
            experts: None,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            embedding_scale: None,
            activation: Activation::Silu,
            post_norms: false,
            sliding: None,
            rope_scale: 1.0,
            logit_softcap: None,
            yarn: None,
        }
    }
}

/// The activation of the gated feed-forward: `down(act(gate(x)) · up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (llama, Qwen).
    Silu,
    /// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
    /// gpt-oss's clamped SwiGLU: `g = min(gate, 7)`, `u = clamp(up, ±7)`,
    /// `g · sigmoid(1.702 g) · (u + 1)`.
    SwigluOai,
}

impl Activation {
    /// `act(gate) · up`.
    fn gated(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(gate)? * up,
            Activation::GeluTanh => gate.gelu()? * up,
            Activation::SwigluOai => {
                const ALPHA: f64 = 1.702;
                const LIMIT: f64 = 7.0;
                let g = gate.minimum(LIMIT)?;
                let u = up.clamp(-LIMIT, LIMIT)?;
                let glu = (&g * candle_nn::ops::sigmoid(&(&g * ALPHA)?)?)?;
                glu * (u + 1.0)?
            }
        }
    }
}

/// Which layers attend through a sliding window, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    /// A token sees itself and the `size - 1` tokens before it.
    pub size: usize,
    /// Of every `pattern` layers the last has full attention, the others
    /// the window (llama.cpp's `swa_pattern`: 6 for Gemma 3).
    pub pattern: usize,
    /// The rotary base of the windowed layers where it differs (Gemma 3:
    /// 10,000, against 1,000,000 for its full layers; unscaled); `None`:
    /// the full layers' rotary (gpt-oss).
    pub rope_base: Option<f32>,
}

impl SlidingWindow {
    /// Whether layer `layer` attends through the window.
    pub fn covers(&self, layer: usize) -> bool {
        self.pattern > 1 && layer % self.pattern < self.pattern - 1
    }
}

/// Keys and values of the tokens seen so far, per layer. Cloning shares
/// the buffers.
///
/// Each layer's keys and values live in buffers with room to grow
/// ([`LayerKv`]), and a new token is written in place: copying the whole
/// cache per layer and token (`Tensor::cat`) moved ~200 MB per decoded
/// token through memory at a 4k-token history of Qwen2.5-0.5B, more than
/// its weights. Caches that share buffers (a conversation and the prefix
/// cache's entries of it) only ever read the tokens up to their own
/// length, and only the cache that has written furthest may write after
/// it: one that holds a shorter prefix copies first.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
}

/// One layer's key and value buffers, `[1, kv_heads, capacity, head_dim]`.
#[derive(Debug, Clone)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    /// Tokens written to the buffers by whichever cache sharing them wrote
    /// furthest; a cache of exactly this length may append in place.
    filled: Arc<AtomicUsize>,
}

impl LayerKv {
    /// Appends `k` and `v` (`[1, kv_heads, n, head_dim]`, contiguous) after
    /// the first `len` tokens of `layer` (none when `None`) and returns
    /// views of the `len + n` tokens. In place when this cache wrote
    /// furthest and there is room; into new, larger buffers otherwise (the
    /// old ones stay as they were for whoever else holds them).
    fn append(
        layer: &mut Option<LayerKv>,
        len: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (b, heads, n, d) = k.dims4()?;
        let total = len + n;
        if let Some(l) = layer.as_ref() {
            let room = total <= l.k.dim(2)?;
            // Claim the slots first: on an error below nobody else writes
            // there, and this cache (whose length does not grow on error)
            // copies next time.
            if room
                && l.filled
                    .compare_exchange(len, total, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                l.k.slice_set(k, 2, len)?;
                l.v.slice_set(v, 2, len)?;
                return Ok((l.k.narrow(2, 0, total)?, l.v.narrow(2, 0, total)?));
            }
        }
        // Half again as much room as needed: appends stay amortised O(1)
        // per token, and a prefill chunk's worth fits before the next copy.
        let capacity = (total + total / 2).max(KV_MIN_CAPACITY);
        let grow = |old: Option<&Tensor>, new: &Tensor| -> Result<Tensor> {
            let spare = Tensor::zeros((b, heads, capacity - total, d), new.dtype(), new.device())?;
            match old {
                Some(old) if len > 0 => Tensor::cat(&[&old.narrow(2, 0, len)?, new, &spare], 2),
                _ => Tensor::cat(&[new, &spare], 2),
            }
        };
        let grown = LayerKv {
            k: grow(layer.as_ref().map(|l| &l.k), k)?,
            v: grow(layer.as_ref().map(|l| &l.v), v)?,
            filled: Arc::new(AtomicUsize::new(total)),
        };
        let views = (grown.k.narrow(2, 0, total)?, grown.v.narrow(2, 0, total)?);
        *layer = Some(grown);
        Ok(views)
    }
}

/// The smallest KV buffer, in tokens: one prefill chunk and then some.
const KV_MIN_CAPACITY: usize = 512;

impl KvCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A cache that claims `n` tokens and holds no tensors (the prefix
    /// cache's own tests look only at lengths).
    #[cfg(test)]
    pub(crate) fn empty_of_len(n: usize) -> Self {
        Self {
            layers: Vec::new(),
            len: n,
        }
    }

    /// Layer `layer`'s keys and values of the tokens `start..start + n`
    /// (`[1, kv_heads, n, head_dim]` views), for the disk tier.
    pub fn block(&self, layer: usize, start: usize, n: usize) -> Result<(Tensor, Tensor)> {
        if start + n > self.len {
            candle_core::bail!("KV block {start}..{} past {} tokens", start + n, self.len);
        }
        let l = self
            .layers
            .get(layer)
            .and_then(Option::as_ref)
            .ok_or_else(|| candle_core::Error::Msg(format!("KV cache has no layer {layer}")))?;
        Ok((l.k.narrow(2, start, n)?, l.v.narrow(2, start, n)?))
    }

    /// A cache of `len` tokens from each layer's keys and values
    /// (`[1, kv_heads, len, head_dim]`), as the disk tier reads them back.
    pub fn from_layers(layers: Vec<(Tensor, Tensor)>, len: usize) -> Result<Self> {
        let mut out = Vec::with_capacity(layers.len());
        for (k, v) in layers {
            if k.dim(2)? != len || v.dim(2)? != len {
                candle_core::bail!("KV layer of {} tokens, expected {len}", k.dim(2)?);
            }
            let mut layer = None;
            LayerKv::append(&mut layer, 0, &k, &v)?;
            out.push(layer);
        }
        Ok(Self { layers: out, len })
    }

    /// The cache of the first `n` tokens: the same buffers, a shorter
    /// length (no copy).
    pub fn truncated(&self, n: usize) -> Self {
        if n == 0 {
            return Self::default();
        }
        Self {
            layers: self.layers.clone(),
            len: n.min(self.len),
        }
    }
}

struct Layer {
    attn_norm: RmsNorm,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    wo: QLinear,
    /// qwen2: biases of the q, k, v projections.
    bias: Option<(Tensor, Tensor, Tensor)>,
    /// gpt-oss: bias of the output projection.
    output_bias: Option<Tensor>,
    /// gpt-oss: one learned logit per query head that takes part in the
    /// softmax and is then dropped (attention may go nowhere).
    sinks: Option<Sinks>,
    /// qwen3: RMS norms of each head's queries and keys, before RoPE.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// Gemma: RMS norm of the attention's output, before the residual add.
    post_attention_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    ffn: Ffn,
    /// Gemma: RMS norm of the feed-forward's output, before the residual.
    post_ffn_norm: Option<RmsNorm>,
    /// The sliding window this layer attends through, if any.
    window: Option<usize>,
}

enum Ffn {
    Dense {
        gate: QLinear,
        up: QLinear,
        down: QLinear,
    },
    Experts(Experts),
}

/// Attention sinks, as a tensor (candle's ops) and as values (the CPU's
/// own attention).
struct Sinks {
    tensor: Tensor,
    values: std::sync::Arc<[f32]>,
}

/// A mixture of experts: a router and gated experts.
struct Experts {
    /// `[experts, hidden]`, f32.
    router: Tensor,
    /// gpt-oss: `[experts]`, added to the router's logits.
    router_bias: Option<Tensor>,
    activation: Activation,
    /// Experts used per token.
    used: usize,
    experts: Vec<Expert>,
}

struct Expert {
    gate: QLinear,
    up: QLinear,
    down: QLinear,
    /// gpt-oss: biases of the gate, up and down projections.
    bias: Option<(Tensor, Tensor, Tensor)>,
}

impl Experts {
    /// `x`: `[1, n, hidden]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, hidden) = x.dims3()?;
        let xs = x.reshape((b * n, hidden))?;
        let mut logits = xs.to_dtype(DType::F32)?.matmul(&self.router.t()?)?;
        if let Some(b) = &self.router_bias {
            logits = logits.broadcast_add(b)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        // Per expert: the rows routed to it and their weights.
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut weights: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for (row, p) in probs.iter().enumerate() {
            for (e, w) in route(p, self.used) {
                rows[e].push(row as u32);
                weights[e].push(w);
            }
        }
        let mut out = xs.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let idx = Tensor::new(rows[e].as_slice(), x.device())?;
            let xe = xs.index_select(&idx, 0)?;
            let (mut g, mut u) = (expert.gate.forward(&xe)?, expert.up.forward(&xe)?);
            if let Some((bg, bu, _)) = &expert.bias {
                g = g.broadcast_add(bg)?;
                u = u.broadcast_add(bu)?;
            }
            let mut ye = expert.down.forward(&self.activation.gated(&g, &u)?)?;
            if let Some((_, _, bd)) = &expert.bias {
                ye = ye.broadcast_add(bd)?;
            }
            let w = Tensor::new(weights[e].as_slice(), x.device())?
                .to_dtype(ye.dtype())?
                .unsqueeze(1)?;
            out = out.index_add(&idx, &ye.broadcast_mul(&w)?, 0)?;
        }
        out.reshape((b, n, hidden))
    }
}

/// The `k` most probable experts of one token and their weights,
/// renormalised to sum to one.
fn route(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|a, b| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b)));
    order.truncate(k);
    let sum: f32 = order.iter().map(|e| probs[*e]).sum();
    order
        .into_iter()
        .map(|e| (e, if sum > 0.0 { probs[e] / sum } else { 0.0 }))
        .collect()
}

/// Splits a stacked `[experts, rows, cols]` quantized tensor into one
/// matrix per expert (each expert's blocks are contiguous in GGUF).
fn split_experts(t: &QTensor, count: usize, device: &Device) -> Result<Vec<QLinear>> {
    let (e, rows, cols) = t.shape().dims3()?;
    if e != count {
        candle_core::bail!("{e} experts stacked, {count} in the metadata");
    }
    let data = t.data()?;
    if data.len() % e != 0 {
        candle_core::bail!(
            "stacked experts of {} bytes do not split in {e}",
            data.len()
        );
    }
    let per = data.len() / e;
    (0..e)
        .map(|i| {
            let bytes = Cow::Borrowed(&data[i * per..(i + 1) * per]);
            let storage = QStorage::from_data(bytes, device, t.dtype())?;
            QLinear::from_qtensor(QTensor::new(storage, (rows, cols))?)
        })
        .collect()
}

/// The weights; see the module documentation.
pub struct Transformer {
    config: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QLinear,
    /// Rotary inverse frequencies, `head_dim / 2` of them (already
    /// divided by a linear scaling factor).
    inv_freq: Tensor,
    /// Those of the sliding-window layers, where their base differs.
    inv_freq_windowed: Option<Tensor>,
    /// YaRN's scale of cos and sin (1 without YaRN).
    rope_mscale: f32,
    device: Device,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Transformer {
    /// Reads the tensors `config` implies. Shapes were checked by the
    /// caller against the metadata; a tensor that does not fit is an error
    /// from candle here.
    /// `mxfp4` names the tensors of that type (candle cannot read them:
    /// see [`super::mxfp4`]).
    pub fn from_gguf<R: Read + Seek>(
        config: Config,
        content: &Content,
        mxfp4: &HashSet<String>,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut get = |name: &str| {
            if mxfp4.contains(name) {
                super::mxfp4::read_as_q8_0(content, reader, name, device)
            } else {
                content.tensor(reader, name, device)
            }
        };
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let eps = config.rms_eps;
        let embed_q = get("token_embd.weight")?;
        let embed = Embedding::new(embed_q.dequantize(device)?, config.embedding);
        let norm = RmsNorm::from_qtensor(get("output_norm.weight")?, eps)?;
        // Small models tie the output projection to the embeddings.
        let output = if has("output.weight") {
            QLinear::from_qtensor(get("output.weight")?)?
        } else {
            QLinear::from_qtensor(embed_q)?
        };
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let name = |n: &str| format!("blk.{l}.{n}");
            let mut mm = |n: &str| QLinear::from_qtensor(get(&name(n))?);
            let wq = mm("attn_q.weight")?;
            let wk = mm("attn_k.weight")?;
            let wv = mm("attn_v.weight")?;
            let wo = mm("attn_output.weight")?;
            let mut plain = |n: &str| get(&name(n))?.dequantize(device);
            let bias = if has(&name("attn_q.bias")) {
                Some((
                    plain("attn_q.bias")?,
                    plain("attn_k.bias")?,
                    plain("attn_v.bias")?,
                ))
            } else {
                None
            };
            let output_bias = if has(&name("attn_output.bias")) {
                Some(plain("attn_output.bias")?)
            } else {
                None
            };
            let sinks = match ["attn_sinks.weight", "attn_sinks"]
                .into_iter()
                .find(|n| has(&name(n)))
            {
                Some(n) => {
                    let tensor = plain(n)?.to_dtype(DType::F32)?;
                    let values: Vec<f32> = tensor.flatten_all()?.to_vec1()?;
                    if values.len() != config.heads {
                        candle_core::bail!("{} sinks for {} heads", values.len(), config.heads);
                    }
                    Some(Sinks {
                        tensor,
                        values: values.into(),
                    })
                }
                None => None,
            };
            let mut norm = |n: &str| RmsNorm::from_qtensor(get(&name(n))?, eps);
            let qk_norm = if has(&name("attn_q_norm.weight")) {
                Some((norm("attn_q_norm.weight")?, norm("attn_k_norm.weight")?))
            } else {
                None
            };
            let attn_norm = norm("attn_norm.weight")?;
            // gpt-oss names its pre-feed-forward norm `post_attention_norm`.
            let ffn_norm = if has(&name("ffn_norm.weight")) || config.post_norms {
                norm("ffn_norm.weight")?
            } else {
                norm("post_attention_norm.weight")?
            };
            let (post_attention_norm, post_ffn_norm) = if config.post_norms {
                (
                    Some(norm("post_attention_norm.weight")?),
                    Some(norm("post_ffw_norm.weight")?),
                )
            } else {
                (None, None)
            };
            let ffn = match config.experts {
                None => {
                    let mut mm = |n: &str| QLinear::from_qtensor(get(&name(n))?);
                    Ffn::Dense {
                        gate: mm("ffn_gate.weight")?,
                        up: mm("ffn_up.weight")?,
                        down: mm("ffn_down.weight")?,
                    }
                }
                Some((count, used)) => {
                    let mut f32_of = |n: &str| -> Result<Option<Tensor>> {
                        if !has(&name(n)) {
                            return Ok(None);
                        }
                        Ok(Some(
                            get(&name(n))?.dequantize(device)?.to_dtype(DType::F32)?,
                        ))
                    };
                    let router = f32_of("ffn_gate_inp.weight")?.ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "no tensor {}",
                            name("ffn_gate_inp.weight")
                        ))
                    })?;
                    let router_bias = f32_of("ffn_gate_inp.bias")?;
                    // Per expert, a row of each stacked `[experts, n]` bias.
                    let biases = match (
                        f32_of("ffn_gate_exps.bias")?,
                        f32_of("ffn_up_exps.bias")?,
                        f32_of("ffn_down_exps.bias")?,
                    ) {
                        (Some(g), Some(u), Some(d)) => Some((g, u, d)),
                        _ => None,
                    };
                    let mut stacked = |n: &str| split_experts(&get(&name(n))?, count, device);
                    let gates = stacked("ffn_gate_exps.weight")?;
                    let ups = stacked("ffn_up_exps.weight")?;
                    let downs = stacked("ffn_down_exps.weight")?;
                    let mut experts = Vec::with_capacity(count);
                    for (e, ((gate, up), down)) in gates.into_iter().zip(ups).zip(downs).enumerate()
                    {
                        let bias = match &biases {
                            Some((g, u, d)) => Some((g.get(e)?, u.get(e)?, d.get(e)?)),
                            None => None,
                        };
                        experts.push(Expert {
                            gate,
                            up,
                            down,
                            bias,
                        });
                    }
                    Ffn::Experts(Experts {
                        router,
                        router_bias,
                        activation: config.activation,
                        used,
                        experts,
                    })
                }
            };
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                bias,
                output_bias,
                sinks,
                qk_norm,
                post_attention_norm,
                ffn_norm,
                ffn,
                post_ffn_norm,
                window: config.sliding.filter(|s| s.covers(l)).map(|s| s.size),
            });
        }
        let half = config.head_dim / 2;
        let inv_freq = |base: f32, scale: f32| {
            let f: Vec<f32> = (0..half)
                .map(|i| 1.0 / (scale * base.powf(2.0 * i as f32 / config.head_dim as f32)))
                .collect();
            Tensor::from_vec(f, (1, half), device)
        };
        let inv_freq_windowed = match config.sliding.and_then(|s| s.rope_base) {
            Some(base) => Some(inv_freq(base, 1.0)?),
            None => None,
        };
        let (full_inv_freq, rope_mscale) = match config.yarn {
            Some(yarn) => {
                let (f, mscale) = yarn.inverse_frequencies(config.rope_base, config.head_dim);
                (Tensor::from_vec(f, (1, half), device)?, mscale)
            }
            None => (inv_freq(config.rope_base, config.rope_scale)?, 1.0),
        };
        Ok(Self {
            inv_freq: full_inv_freq,
            inv_freq_windowed,
            rope_mscale,
            config,
            embed,
            layers,
            norm,
            output,
            device: device.clone(),
        })
    }

    /// Where the weights (and so the KV caches) live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes the KV cache takes per token (f32 keys and values).
    pub fn kv_bytes_per_token(&self) -> usize {
        let c = &self.config;
        c.layers * 2 * c.kv_heads * c.head_dim * 4
    }

    /// Feeds `tokens` (shape `[1, n]`) after the `cache.len()` tokens the
    /// cache holds, extends the cache, and returns the logits of the last
    /// position (`[1, vocab]`). On error the cache is left as it was.
    ///
    /// On the CPU the pass runs on one of rayon's threads. Each matmul
    /// and the attention spread over those threads; called from outside
    /// the pool, every one of the ~200 parallel calls of a decoding step
    /// queued its work for the pool, woke it and put the caller to sleep
    /// until it was done, and the pool's threads spun between calls
    /// against the caller's small operations on the same cores. From
    /// inside, the calling worker takes its own share at once and the
    /// others steal the rest: `cargo bench -p clawpen-inference --bench
    /// local` went from 27.5-28.6 to 30.0-30.7 decode tok/s and 108 to
    /// 116-118 prompt tok/s on the 1.5B Q4_K_M model, 2 threads. Only the
    /// pass is lent to the pool, not the whole generation: a generation
    /// blocked on a slow client must not hold a worker, and where two
    /// models decode at once a worker waiting inside one pass may run the
    /// other's, which delays this one by at most that one pass.
    pub fn forward(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        if self.device.is_cpu() {
            rayon::scope(|_| self.forward_here(tokens, cache))
        } else {
            self.forward_here(tokens, cache)
        }
    }

    /// [`Self::forward`] on the calling thread.
    fn forward_here(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, n) = tokens.dims2()?;
        let pos = cache.len;
        let full = self.span(pos, n, &self.inv_freq, None)?;
        let windowed = match &self.config.sliding {
            Some(s) => {
                let inv_freq = self.inv_freq_windowed.as_ref().unwrap_or(&self.inv_freq);
                Some(self.span(pos, n, inv_freq, Some(s.size))?)
            }
            None => None,
        };
        let mut layers_kv = cache.layers.clone();
        layers_kv.resize(self.layers.len(), None);
        let mut x = self.embed.forward(tokens)?;
        if let Some(scale) = self.config.embedding_scale {
            x = (x * f64::from(scale))?;
        }
        for (layer, kv) in self.layers.iter().zip(layers_kv.iter_mut()) {
            let span = match (layer.window, &windowed) {
                (Some(_), Some(w)) => w,
                _ => &full,
            };
            let h = layer.attn_norm.forward(&x)?;
            let mut h = self.attention(layer, &h, span, kv)?;
            if let Some(norm) = &layer.post_attention_norm {
                h = norm.forward(&h)?;
            }
            x = (x + h)?;
            let h = layer.ffn_norm.forward(&x)?;
            let mut h = match &layer.ffn {
                Ffn::Dense { gate, up, down } => {
                    let gated = self
                        .config
                        .activation
                        .gated(&gate.forward(&h)?, &up.forward(&h)?)?;
                    down.forward(&gated)?
                }
                Ffn::Experts(moe) => moe.forward(&h)?,
            };
            if let Some(norm) = &layer.post_ffn_norm {
                h = norm.forward(&h)?;
            }
            x = (x + h)?;
        }
        let last = x.narrow(1, n - 1, 1)?;
        let mut logits = self
            .output
            .forward(&self.norm.forward(&last)?)?
            .squeeze(1)?;
        if let Some(cap) = self.config.logit_softcap {
            logits = ((logits / f64::from(cap))?.tanh()? * f64::from(cap))?;
        }
        cache.layers = layers_kv;
        cache.len = pos + n;
        Ok(logits)
    }

    /// The rotary tables and mask of positions `pos..pos + n` for layers
    /// of inverse frequencies `inv_freq` and sliding `window`.
    fn span(&self, pos: usize, n: usize, inv_freq: &Tensor, window: Option<usize>) -> Result<Span> {
        let positions: Vec<f32> = (pos..pos + n).map(|p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (n, 1), &self.device)?;
        let angles = positions.broadcast_mul(inv_freq)?;
        // The CPU's attention (`super::attention`) masks as it goes; one
        // token sees every key unless a window hides some.
        let masked = n > 1 || window.is_some_and(|w| pos + n > w);
        let (mut cos, mut sin) = (angles.cos()?, angles.sin()?);
        if self.rope_mscale != 1.0 {
            cos = (cos * f64::from(self.rope_mscale))?;
            sin = (sin * f64::from(self.rope_mscale))?;
        }
        Ok(Span {
            pos,
            cos,
            sin,
            mask: if masked && !self.device.is_cpu() {
                Some(causal_mask(n, pos, window, &self.device)?)
            } else {
                None
            },
        })
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        span: &Span,
        kv: &mut Option<LayerKv>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let Span {
            pos,
            ref cos,
            ref sin,
            ..
        } = *span;
        let (b, n, _) = x.dims3()?;
        let (mut q, mut k, mut v) = (
            layer.wq.forward(x)?,
            layer.wk.forward(x)?,
            layer.wv.forward(x)?,
        );
        if let Some((bq, bk, bv)) = &layer.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let mut q = q.reshape((b, n, c.heads, c.head_dim))?;
        let mut k = k.reshape((b, n, c.kv_heads, c.head_dim))?;
        let v = v
            .reshape((b, n, c.kv_heads, c.head_dim))?
            .transpose(1, 2)?
            .contiguous()?;
        if let Some((qn, kn)) = &layer.qk_norm {
            q = qn.forward(&q.contiguous()?)?;
            k = kn.forward(&k.contiguous()?)?;
        }
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let rope = |t: &Tensor| {
            if c.rope_neox {
                candle_nn::rotary_emb::rope(t, cos, sin)
            } else {
                candle_nn::rotary_emb::rope_i(t, cos, sin)
            }
        };
        let q = rope(&q)?;
        let k = rope(&k)?;
        let (k, v) = LayerKv::append(kv, pos, &k, &v)?;
        // The `groups` query heads that share a KV head are consecutive,
        // so they are stacked as `groups * n` rows against that one head:
        // no copy of the keys and values per query head (candle's
        // `repeat_kv`), which at decode time moved 7x the whole KV cache
        // through memory per layer and token for Qwen2.5-0.5B.
        let groups = c.heads / c.kv_heads;
        let q = q.reshape((b, c.kv_heads, groups * n, c.head_dim))?;
        let y = if self.device.is_cpu() {
            // One pass per block of query rows: see `attention`.
            let op = CausalAttention {
                pos,
                n,
                scale: c.attention_scale,
                window: layer.window,
                sinks: layer.sinks.as_ref().map(|s| s.values.clone()),
            };
            q.apply_op3_no_bwd(&k, &v, &op)?
        } else {
            let scale = f64::from(c.attention_scale);
            let sinks = layer.sinks.as_ref().map(|s| &s.tensor);
            with_tensor_ops(&q, &k, &v, span.mask.as_ref(), n, scale, sinks)?
        };
        let y = y
            .reshape((b, c.heads, n, c.head_dim))?
            .transpose(1, 2)?
            .reshape((b, n, c.heads * c.head_dim))?;
        match &layer.output_bias {
            Some(b) => layer.wo.forward(&y)?.broadcast_add(b),
            None => layer.wo.forward(&y),
        }
    }
}

/// The positions one forward pass feeds: `n` tokens from `pos`.
struct Span {
    pos: usize,
    /// Rotary cos and sin, `[n, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// The additive causal mask where candle's ops compute attention (not
    /// on the CPU) and some key is hidden from some query.
    mask: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[1, 1, n, 2]` keys (values the same) for tokens `from..from + n`,
    /// each holding its own position.
    fn tokens(from: usize, n: usize) -> Tensor {
        let data: Vec<f32> = (from..from + n).flat_map(|t| [t as f32; 2]).collect();
        Tensor::from_vec(data, (1, 1, n, 2), &Device::Cpu).unwrap()
    }

    fn positions(t: &Tensor) -> Vec<f32> {
        t.squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
            .into_iter()
            .map(|row| row[0])
            .collect()
    }

    #[test]
    fn kv_appends_in_place_only_after_the_furthest_writer() {
        // A conversation of 3 tokens, then one more: in place.
        let mut a = None;
        LayerKv::append(&mut a, 0, &tokens(0, 3), &tokens(0, 3)).unwrap();
        let buffer = a.as_ref().unwrap().k.clone();
        let (k, _) = LayerKv::append(&mut a, 3, &tokens(3, 1), &tokens(3, 1)).unwrap();
        assert_eq!(a.as_ref().unwrap().k.id(), buffer.id(), "not in place");
        assert_eq!(positions(&k), [0.0, 1.0, 2.0, 3.0]);

        // A second conversation sharing the first 2 tokens (the prefix
        // cache's view) must not write over token 2 of the first.
        let mut b = a.clone();
        let (kb, _) = LayerKv::append(&mut b, 2, &tokens(10, 1), &tokens(10, 1)).unwrap();
        assert_eq!(positions(&kb), [0.0, 1.0, 10.0]);
        assert!(
            b.as_ref().unwrap().k.id() != buffer.id(),
            "a shorter prefix copies"
        );
        let whole = a.as_ref().unwrap().k.narrow(2, 0, 4).unwrap();
        assert_eq!(positions(&whole), [0.0, 1.0, 2.0, 3.0]);

        // The first goes on in place; the copy is unaffected.
        let (k, _) = LayerKv::append(&mut a, 4, &tokens(4, 2), &tokens(4, 2)).unwrap();
        assert_eq!(positions(&k), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(a.as_ref().unwrap().k.id(), buffer.id());
        let bk = b.as_ref().unwrap().k.narrow(2, 0, 3).unwrap();
        assert_eq!(positions(&bk), [0.0, 1.0, 10.0]);
    }

    #[test]
    fn kv_buffers_grow_past_their_capacity_keeping_what_they_hold() {
        let mut a = None;
        LayerKv::append(
            &mut a,
            0,
            &tokens(0, KV_MIN_CAPACITY),
            &tokens(0, KV_MIN_CAPACITY),
        )
        .unwrap();
        let (k, v) = LayerKv::append(
            &mut a,
            KV_MIN_CAPACITY,
            &tokens(KV_MIN_CAPACITY, 3),
            &tokens(KV_MIN_CAPACITY, 3),
        )
        .unwrap();
        let expected: Vec<f32> = (0..KV_MIN_CAPACITY + 3).map(|t| t as f32).collect();
        assert_eq!(positions(&k), expected);
        assert_eq!(positions(&v), expected);
        assert!(a.as_ref().unwrap().k.dim(2).unwrap() > KV_MIN_CAPACITY + 3);
    }

    #[test]
    fn routing_takes_the_top_k_and_renormalises() {
        let r = route(&[0.1, 0.4, 0.2, 0.3], 2);
        assert_eq!(r.iter().map(|(e, _)| *e).collect::<Vec<_>>(), [1, 3]);
        assert!((r[0].1 - 4.0 / 7.0).abs() < 1e-6);
        assert!((r[1].1 - 3.0 / 7.0).abs() < 1e-6);
        // Ties go to the lower index, as a stable sort would.
        assert_eq!(route(&[0.25; 4], 1), [(0, 1.0)]);
    }
}
