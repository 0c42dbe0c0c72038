//! One decoder-only transformer for every architecture the local engine
//! runs (llama, qwen2, qwen3, qwen3moe, and llama-style MoE such as
//! Mixtral), with the KV cache held *outside* the weights.
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
//! attention, SwiGLU feed-forward or a mixture of experts routed by
//! candle's `FusedMoeGGUF`; the architecture differences are data
//! (biases, q/k norms, head size, rope layout, experts), read from the
//! GGUF metadata by [`super::gguf`].

use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear};
use candle_transformers::fused_moe::FusedMoeGGUF;
use candle_transformers::quantized_nn::RmsNorm;

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
}

/// Keys and values of the tokens seen so far, per layer, shape
/// `[1, kv_heads, tokens, head_dim]`. Cloning shares the tensors.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

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

    /// The cache of the first `n` tokens (a view: no copy).
    pub fn truncated(&self, n: usize) -> Result<Self> {
        if n >= self.len {
            return Ok(self.clone());
        }
        if n == 0 {
            return Ok(Self::default());
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((k.narrow(2, 0, n)?, v.narrow(2, 0, n)?))),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers, len: n })
    }
}

struct Layer {
    attn_norm: RmsNorm,
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    /// qwen2: biases of the q, k, v projections.
    bias: Option<(Tensor, Tensor, Tensor)>,
    /// qwen3: RMS norms of each head's queries and keys, before RoPE.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    ffn_norm: RmsNorm,
    ffn: Ffn,
}

enum Ffn {
    Dense {
        gate: QMatMul,
        up: QMatMul,
        down: QMatMul,
    },
    Experts(Box<FusedMoeGGUF>),
}

/// The weights; see the module documentation.
pub struct Transformer {
    config: Config,
    embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    /// Rotary inverse frequencies, `head_dim / 2` of them.
    inv_freq: Tensor,
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
    pub fn from_gguf<R: Read + Seek>(
        config: Config,
        content: &Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let mut get = |name: &str| content.tensor(reader, name, device);
        let has = |name: &str| content.tensor_infos.contains_key(name);
        let eps = config.rms_eps;
        let embed_q = get("token_embd.weight")?;
        let embed = Embedding::new(embed_q.dequantize(device)?, config.embedding);
        let norm = RmsNorm::from_qtensor(get("output_norm.weight")?, eps)?;
        // Small models tie the output projection to the embeddings.
        let output = if has("output.weight") {
            QMatMul::from_qtensor(get("output.weight")?)?
        } else {
            QMatMul::from_qtensor(embed_q)?
        };
        let mut layers = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let name = |n: &str| format!("blk.{l}.{n}");
            let mut mm = |n: &str| QMatMul::from_qtensor(get(&name(n))?);
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
            let mut norm = |n: &str| RmsNorm::from_qtensor(get(&name(n))?, eps);
            let qk_norm = if has(&name("attn_q_norm.weight")) {
                Some((norm("attn_q_norm.weight")?, norm("attn_k_norm.weight")?))
            } else {
                None
            };
            let attn_norm = norm("attn_norm.weight")?;
            let ffn_norm = norm("ffn_norm.weight")?;
            let ffn = match config.experts {
                None => {
                    let mut mm = |n: &str| QMatMul::from_qtensor(get(&name(n))?);
                    Ffn::Dense {
                        gate: mm("ffn_gate.weight")?,
                        up: mm("ffn_up.weight")?,
                        down: mm("ffn_down.weight")?,
                    }
                }
                Some((_, used)) => {
                    let router = get(&name("ffn_gate_inp.weight"))?
                        .dequantize(device)?
                        .to_dtype(DType::F32)?;
                    let mut experts =
                        |n: &str| -> Result<Arc<QTensor>> { Ok(Arc::new(get(&name(n))?)) };
                    Ffn::Experts(Box::new(FusedMoeGGUF {
                        gate: Linear::new(router, None),
                        gate_experts: experts("ffn_gate_exps.weight")?,
                        up_experts: experts("ffn_up_exps.weight")?,
                        down_experts: experts("ffn_down_exps.weight")?,
                        act: candle_nn::Activation::Silu,
                        // Qwen3-MoE and Mixtral renormalise the chosen
                        // experts' weights to sum to one.
                        norm_topk_prob: true,
                        num_experts_per_tok: used,
                        dtype: DType::F32,
                    }))
                }
            };
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                bias,
                qk_norm,
                ffn_norm,
                ffn,
            });
        }
        let half = config.head_dim / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| {
                1.0 / config
                    .rope_base
                    .powf(2.0 * i as f32 / config.head_dim as f32)
            })
            .collect();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            output,
            inv_freq,
            device: device.clone(),
        })
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
    pub fn forward(&self, tokens: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (_, n) = tokens.dims2()?;
        let pos = cache.len;
        let (cos, sin) = self.rotary(pos, n)?;
        let mask = if n > 1 {
            Some(causal_mask(n, pos, &self.device)?)
        } else {
            None
        };
        let mut layers_kv = cache.layers.clone();
        layers_kv.resize(self.layers.len(), None);
        let mut x = self.embed.forward(tokens)?;
        for (layer, kv) in self.layers.iter().zip(layers_kv.iter_mut()) {
            let h = layer.attn_norm.forward(&x)?;
            let h = self.attention(layer, &h, &cos, &sin, mask.as_ref(), kv)?;
            x = (x + h)?;
            let h = layer.ffn_norm.forward(&x)?;
            let h = match &layer.ffn {
                Ffn::Dense { gate, up, down } => {
                    let g = candle_nn::ops::silu(&gate.forward(&h)?)?;
                    down.forward(&(g * up.forward(&h)?)?)?
                }
                Ffn::Experts(moe) => moe.forward(&h, n > 1)?,
            };
            x = (x + h)?;
        }
        let last = x.narrow(1, n - 1, 1)?;
        let logits = self
            .output
            .forward(&self.norm.forward(&last)?)?
            .squeeze(1)?;
        cache.layers = layers_kv;
        cache.len = pos + n;
        Ok(logits)
    }

    /// cos and sin of positions `pos..pos + n`, `[n, head_dim / 2]`.
    fn rotary(&self, pos: usize, n: usize) -> Result<(Tensor, Tensor)> {
        let positions: Vec<f32> = (pos..pos + n).map(|p| p as f32).collect();
        let positions = Tensor::from_vec(positions, (n, 1), &self.device)?;
        let angles = positions.broadcast_mul(&self.inv_freq)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        kv: &mut Option<(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let c = &self.config;
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
        let (k, v) = match kv.as_ref() {
            Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        let groups = c.heads / c.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, groups)?;
        let v = candle_transformers::utils::repeat_kv(v, groups)?;
        let att = (q.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
        let att = match mask {
            Some(m) => att.broadcast_add(m)?,
            None => att,
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        let y = y.transpose(1, 2)?.reshape((b, n, c.heads * c.head_dim))?;
        layer.wo.forward(&y)
    }
}

/// Additive mask `[n, pos + n]`: query `i` (at position `pos + i`) sees
/// keys up to its own position.
fn causal_mask(n: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let total = pos + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (n, total), device)
}
