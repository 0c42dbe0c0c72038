//! Tiny but real GGUF models for the local engine's tests: random weights,
//! real llama / qwen2 metadata, a byte-level BPE vocabulary trained here on
//! a few sentences, and a ChatML chat template with tools (Hermes style).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clawpen_inference::engine::local::tokenizer::byte_char;
use clawpen_inference::{InferenceConfig, ModelLocations};

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const LAYERS: usize = 2;
pub const FFN: usize = 64;
pub const CONTEXT: u32 = 512;
/// qwen3's own head size (not `HIDDEN / HEADS`, as in the real models).
pub const QWEN3_HEAD_DIM: usize = 16;
/// qwen3moe: experts per layer, used per token, and their hidden size.
pub const EXPERTS: usize = 4;
pub const EXPERTS_USED: usize = 2;
pub const EXPERT_FFN: usize = 32;

/// A Qwen2.5-style ChatML template with tools: the family it implies is
/// Hermes (`<tool_call>`).
pub const CHAT_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
You may call functions.
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
For each call, return JSON within <tool_call></tool_call> XML tags.<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tc in message.tool_calls %}
<tool_call>
{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content.strip() }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

const CORPUS: &str = "the quick brown fox jumps over the lazy dog. the weather in paris is \
    sunny, the weather in london is rainy. call the weather tool with the city name. \
    hello world, hello there, the answer is there in the world.";

/// The service on the local engine serving `models` (no model folders
/// searched), with keep-alives every half second.
pub fn config(models: Vec<PathBuf>) -> InferenceConfig {
    InferenceConfig {
        locations: ModelLocations::none(),
        local_models: models,
        keepalive_interval: std::time::Duration::from_millis(500),
        ..InferenceConfig::default()
    }
}

/// Special tokens after the BPE vocabulary: (text, GGUF token type).
pub const SPECIALS: &[(&str, i32)] = &[
    ("<|endoftext|>", 3),
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("<tool_call>", 4),
    ("</tool_call>", 4),
];

/// A byte-level BPE trained on [`CORPUS`]: (tokens, merges).
pub fn train_bpe(merges_wanted: usize) -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = (0u8..=255).map(|b| byte_char(b).to_string()).collect();
    let mut words: Vec<Vec<String>> = CORPUS
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            let w = if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            };
            w.bytes().map(|b| byte_char(b).to_string()).collect()
        })
        .collect();
    let mut merges = Vec::new();
    for _ in 0..merges_wanted {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        let Some((best, n)) = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        else {
            break;
        };
        if n < 2 {
            break;
        }
        let joined = format!("{}{}", best.0, best.1);
        for w in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == best.0 && w[i + 1] == best.1 {
                    w[i] = joined.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{} {}", best.0, best.1));
        tokens.push(joined);
    }
    (tokens, merges)
}

/// The metadata and tensors of a tiny model of `arch` (`llama`, `qwen2`,
/// `qwen3`, `qwen3moe`), shaped as llama.cpp writes each.
pub struct TinyModel {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<(String, QTensor)>,
}

impl TinyModel {
    pub fn new(arch: &str) -> Self {
        Self::with_dtype(arch, GgmlDType::F32)
    }

    /// Matrices stored as `dtype` (`Q8_0`, `Q4_0`: what real GGUFs hold);
    /// norms and biases stay F32, as llama.cpp writes them.
    pub fn with_dtype(arch: &str, dtype: GgmlDType) -> Self {
        let (mut tokens, merges) = train_bpe(60);
        let mut types = vec![1i32; tokens.len()];
        for (t, ty) in SPECIALS {
            tokens.push((*t).to_owned());
            types.push(*ty);
        }
        let vocab = tokens.len();
        let id_of = |t: &str| tokens.iter().position(|x| x == t).unwrap() as u32;
        let a = |k: &str| format!("{arch}.{k}");
        let metadata = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.name".into(), Value::String(format!("tiny-{arch}"))),
            (a("context_length"), Value::U32(CONTEXT)),
            (a("embedding_length"), Value::U32(HIDDEN as u32)),
            (a("feed_forward_length"), Value::U32(FFN as u32)),
            (a("block_count"), Value::U32(LAYERS as u32)),
            (a("attention.head_count"), Value::U32(HEADS as u32)),
            (a("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
            (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
            (
                a("rope.dimension_count"),
                Value::U32((HIDDEN / HEADS) as u32),
            ),
            (a("rope.freq_base"), Value::F32(10000.0)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("qwen2".into())),
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(tokens.iter().cloned().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.into_iter().map(Value::I32).collect()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(merges.into_iter().map(Value::String).collect()),
            ),
            (
                "tokenizer.ggml.bos_token_id".into(),
                Value::U32(id_of("<|endoftext|>")),
            ),
            (
                "tokenizer.ggml.eos_token_id".into(),
                Value::U32(id_of("<|im_end|>")),
            ),
            (
                "tokenizer.chat_template".into(),
                Value::String(CHAT_TEMPLATE.into()),
            ),
        ];
        let qwen3 = arch == "qwen3" || arch == "qwen3moe";
        let moe = arch == "qwen3moe";
        let head_dim = if qwen3 {
            QWEN3_HEAD_DIM
        } else {
            HIDDEN / HEADS
        };
        let mut metadata = metadata;
        if qwen3 {
            metadata.retain(|(k, _)| k != &a("rope.dimension_count"));
            metadata.extend([
                (a("attention.key_length"), Value::U32(head_dim as u32)),
                (a("attention.value_length"), Value::U32(head_dim as u32)),
                (a("rope.dimension_count"), Value::U32(head_dim as u32)),
                // candle's reference qwen3 computes in f16 unless told.
                ("general.dtype".into(), Value::U32(0)),
            ]);
        }
        if moe {
            metadata.extend([
                (a("expert_count"), Value::U32(EXPERTS as u32)),
                (a("expert_used_count"), Value::U32(EXPERTS_USED as u32)),
                (
                    a("expert_feed_forward_length"),
                    Value::U32(EXPERT_FFN as u32),
                ),
            ]);
        }
        let q = HEADS * head_dim;
        let kv = KV_HEADS * head_dim;
        let mut shapes: Vec<(String, Vec<usize>, bool)> = vec![
            ("token_embd.weight".into(), vec![vocab, HIDDEN], false),
            ("output_norm.weight".into(), vec![HIDDEN], true),
            ("output.weight".into(), vec![vocab, HIDDEN], false),
        ];
        for l in 0..LAYERS {
            let p = |n: &str| format!("blk.{l}.{n}");
            shapes.extend([
                (p("attn_q.weight"), vec![q, HIDDEN], false),
                (p("attn_k.weight"), vec![kv, HIDDEN], false),
                (p("attn_v.weight"), vec![kv, HIDDEN], false),
                (p("attn_output.weight"), vec![HIDDEN, q], false),
                (p("attn_norm.weight"), vec![HIDDEN], true),
                (p("ffn_norm.weight"), vec![HIDDEN], true),
            ]);
            if moe {
                shapes.extend([
                    (p("ffn_gate_inp.weight"), vec![EXPERTS, HIDDEN], false),
                    (
                        p("ffn_gate_exps.weight"),
                        vec![EXPERTS, EXPERT_FFN, HIDDEN],
                        false,
                    ),
                    (
                        p("ffn_up_exps.weight"),
                        vec![EXPERTS, EXPERT_FFN, HIDDEN],
                        false,
                    ),
                    (
                        p("ffn_down_exps.weight"),
                        vec![EXPERTS, HIDDEN, EXPERT_FFN],
                        false,
                    ),
                ]);
            } else {
                shapes.extend([
                    (p("ffn_gate.weight"), vec![FFN, HIDDEN], false),
                    (p("ffn_up.weight"), vec![FFN, HIDDEN], false),
                    (p("ffn_down.weight"), vec![HIDDEN, FFN], false),
                ]);
            }
            if qwen3 {
                shapes.extend([
                    // Random, not ones: a model that mixed up the two
                    // norms would differ from the reference.
                    (p("attn_q_norm.weight"), vec![head_dim], false),
                    (p("attn_k_norm.weight"), vec![head_dim], false),
                ]);
            }
            if arch == "qwen2" {
                shapes.extend([
                    (p("attn_q.bias"), vec![HIDDEN], false),
                    (p("attn_k.bias"), vec![kv], false),
                    (p("attn_v.bias"), vec![kv], false),
                ]);
            }
        }
        let tensors = shapes
            .into_iter()
            .map(|(name, shape, ones)| {
                let matrix = shape.len() >= 2;
                let t = if ones {
                    Tensor::ones(shape, candle_core::DType::F32, &Device::Cpu).unwrap()
                } else {
                    Tensor::randn(0f32, 0.5, shape, &Device::Cpu).unwrap()
                };
                let dtype = if matrix { dtype } else { GgmlDType::F32 };
                (name, QTensor::quantize(&t, dtype).unwrap())
            })
            .collect();
        Self { metadata, tensors }
    }

    /// The same model that can never end its turn by itself: the output
    /// rows of its end-of-turn tokens are zero, so their logit is 0 while
    /// the largest of the other random logits is positive (greedy never
    /// picks them). For tests that need a generation to run on.
    pub fn never_ending(mut self) -> Self {
        let ends: Vec<usize> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .map(|t| {
                let Some((_, Value::Array(tokens))) = self
                    .metadata
                    .iter()
                    .find(|(k, _)| k == "tokenizer.ggml.tokens")
                else {
                    panic!("no tokens")
                };
                tokens
                    .iter()
                    .position(|v| v.to_string().unwrap() == t)
                    .unwrap()
            })
            .collect();
        for (name, q) in &mut self.tensors {
            if name == "output.weight" {
                let mut rows: Vec<Vec<f32>> =
                    q.dequantize(&Device::Cpu).unwrap().to_vec2().unwrap();
                for e in &ends {
                    rows[*e].iter_mut().for_each(|x| *x = 0.0);
                }
                let t = Tensor::new(rows, &Device::Cpu).unwrap();
                *q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
            }
        }
        self
    }

    /// A model that writes `script` (token texts; one that is not in the
    /// vocabulary is added as a user-defined token) after a prompt ending
    /// in a newline, greedily: no layers, one-hot embeddings, and an output
    /// matrix whose column for each token points at the next one, so the
    /// next token depends only on the last. Pieces must be distinct.
    pub fn scripted(arch: &str, script: &[&str]) -> Self {
        Self::scripted_branches(arch, &[("\n", script)])
    }

    /// [`Self::scripted`] with one script per last prompt token: each
    /// `(start, script)` is written after a prompt ending in `start` (a
    /// single byte, e.g. `"\n"` or `"\t"`, or a token of the vocabulary).
    /// Pieces must be distinct across scripts, except the last (an end
    /// token, which leads nowhere).
    pub fn scripted_branches(arch: &str, branches: &[(&str, &[&str])]) -> Self {
        let base = Self::new(arch);
        let get = |key: &str| {
            base.metadata
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_vec().unwrap().clone())
                .unwrap()
        };
        let mut tokens: Vec<String> = get("tokenizer.ggml.tokens")
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect();
        let mut types: Vec<i32> = get("tokenizer.ggml.token_type")
            .iter()
            .map(|v| v.to_i32().unwrap())
            .collect();
        for piece in branches.iter().flat_map(|(_, script)| script.iter()) {
            if !tokens.iter().any(|t| t == piece) {
                tokens.push((*piece).to_owned());
                types.push(4);
            }
        }
        let vocab = tokens.len();
        let hidden = vocab.div_ceil(32) * 32;
        let id = |t: &str| tokens.iter().position(|x| x == t).unwrap();
        let mut embd = vec![vec![0f32; hidden]; vocab];
        for (i, row) in embd.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        let mut output = vec![vec![0f32; hidden]; vocab];
        for (start, script) in branches {
            let mut prev = match start.as_bytes() {
                [byte] => id(&byte_char(*byte).to_string()),
                _ => id(start),
            };
            for piece in script.iter() {
                let next = id(piece);
                output[next][prev] = 10.0;
                prev = next;
            }
        }
        let q = |rows: Vec<Vec<f32>>| {
            QTensor::quantize(&Tensor::new(rows, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()
        };
        let norm = QTensor::quantize(
            &Tensor::ones(hidden, candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let a = |k: &str| format!("{arch}.{k}");
        let mut model = base
            .set(&a("embedding_length"), Value::U32(hidden as u32))
            .set(&a("block_count"), Value::U32(0))
            .set(
                &a("rope.dimension_count"),
                Value::U32((hidden / HEADS) as u32),
            )
            .set(
                "tokenizer.ggml.tokens",
                Value::Array(tokens.iter().cloned().map(Value::String).collect()),
            )
            .set(
                "tokenizer.ggml.token_type",
                Value::Array(types.into_iter().map(Value::I32).collect()),
            );
        model.tensors = vec![
            ("token_embd.weight".into(), q(embd)),
            ("output_norm.weight".into(), norm),
            ("output.weight".into(), q(output)),
        ];
        model
    }

    /// A scripted model for one turn of an agent's tool loop: asked
    /// anything, it calls `tool` with `arguments` (a JSON object, written as
    /// the Hermes grammar spaces it); given the tool's answer, it says
    /// `answer`. Its template ([`CHAT_TEMPLATE`], with the generation prompt
    /// ending in a tab after a tool message) is what tells the turns apart.
    pub fn tool_loop(arch: &str, tool: &str, arguments: &str, answer: &str) -> Self {
        let call = format!("\n{{\"name\": \"{tool}\", \"arguments\": {arguments}}}\n");
        let template = CHAT_TEMPLATE.replace(
            "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            // An expression, not text after a tag: templates are rendered
            // with `trim_blocks`, which eats a newline after `{% else %}`.
            "{%- if add_generation_prompt %}<|im_start|>assistant\
             {{ \"\\t\" if messages[-1].role == \"tool\" else \"\\n\" }}{% endif %}",
        );
        assert_ne!(template, CHAT_TEMPLATE, "the template's ending moved");
        Self::scripted_branches(
            arch,
            &[
                ("\n", &["<tool_call>", &call, "</tool_call>", "<|im_end|>"]),
                ("\t", &[answer, "<|im_end|>"]),
            ],
        )
        .set("tokenizer.chat_template", Value::String(template))
    }

    /// Replaces (or adds) one metadata value.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_owned(), value));
        self
    }

    /// Writes the GGUF to `dir/name.gguf`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.gguf"));
        let mut f = std::fs::File::create(&path).unwrap();
        let md: Vec<(&str, &Value)> = self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut f, &md, &ts).unwrap();
        path
    }
}

/// A `qwen3moe` model made of a dense `qwen3` one: every layer's
/// feed-forward copied into each of [`EXPERTS`] experts (stacked as
/// llama.cpp writes them), plus a random router.
pub fn experts_of(dense: &TinyModel) -> TinyModel {
    let metadata = dense
        .metadata
        .iter()
        .map(|(k, v)| {
            let k = match k.strip_prefix("qwen3.") {
                Some(rest) => format!("qwen3moe.{rest}"),
                None => k.clone(),
            };
            let v = match (k.as_str(), v) {
                ("general.architecture", _) => Value::String("qwen3moe".into()),
                _ => v.clone(),
            };
            (k, v)
        })
        .chain([
            (
                "qwen3moe.expert_count".to_owned(),
                Value::U32(EXPERTS as u32),
            ),
            (
                "qwen3moe.expert_used_count".to_owned(),
                Value::U32(EXPERTS_USED as u32),
            ),
            (
                "qwen3moe.expert_feed_forward_length".to_owned(),
                Value::U32(FFN as u32),
            ),
        ])
        .collect();
    let mut tensors = Vec::new();
    for (name, q) in &dense.tensors {
        let stacked = ["ffn_gate", "ffn_up", "ffn_down"]
            .into_iter()
            .find(|f| name.ends_with(&format!(".{f}.weight")));
        match stacked {
            Some(f) => {
                let w = q.dequantize(&Device::Cpu).unwrap();
                let copies = Tensor::stack(&vec![w; EXPERTS], 0).unwrap();
                let layer = name.trim_end_matches(&format!(".{f}.weight"));
                tensors.push((
                    format!("{layer}.{f}_exps.weight"),
                    QTensor::quantize(&copies, GgmlDType::F32).unwrap(),
                ));
                if f == "ffn_gate" {
                    let router = Tensor::randn(0f32, 1.0, (EXPERTS, HIDDEN), &Device::Cpu).unwrap();
                    tensors.push((
                        format!("{layer}.ffn_gate_inp.weight"),
                        QTensor::quantize(&router, GgmlDType::F32).unwrap(),
                    ));
                }
            }
            None => {
                let t = q.dequantize(&Device::Cpu).unwrap();
                tensors.push((name.clone(), QTensor::quantize(&t, q.dtype()).unwrap()));
            }
        }
    }
    TinyModel { metadata, tensors }
}

/// The sizes of a model to benchmark at.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    /// The trained vocabulary is padded with unused tokens up to this.
    pub vocab: usize,
    pub context: u32,
}

/// Qwen2.5-0.5B's sizes.
pub const QWEN2_5_0_5B: Shape = Shape {
    hidden: 896,
    layers: 24,
    heads: 14,
    kv_heads: 2,
    ffn: 4864,
    vocab: 151_936,
    context: 32_768,
};

/// Qwen2.5-1.5B's sizes: rows of whole 256-blocks, so its Q4_K_M mix is
/// Q4_K and Q6_K throughout.
pub const QWEN2_5_1_5B: Shape = Shape {
    hidden: 1536,
    layers: 28,
    heads: 12,
    kv_heads: 2,
    ffn: 8960,
    vocab: 151_936,
    context: 32_768,
};

/// How a benchmark model's matrices are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Q8_0,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the output and for
    /// `attn_v` / `ffn_down` in the layers llama.cpp gives more bits; a
    /// matrix whose rows do not split into 256-blocks falls back as
    /// llama.cpp does (Q4_K → Q5_0, Q6_K → Q8_0: most of a 0.5B model).
    Q4KM,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8_0 => "Q8_0",
            Quant::Q4KM => "Q4_K_M",
        }
    }

    fn dtype(self, name: &str, layer: Option<usize>, layers: usize, cols: usize) -> GgmlDType {
        let want = match self {
            Quant::Q8_0 => return GgmlDType::Q8_0,
            Quant::Q4KM => {
                // llama.cpp's `use_more_bits`.
                let more =
                    |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
                let wide = name == "output.weight"
                    || ((name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
                        && layer.is_some_and(more));
                if wide {
                    GgmlDType::Q6K
                } else {
                    GgmlDType::Q4K
                }
            }
        };
        match (want, cols % 256) {
            (w, 0) => w,
            (GgmlDType::Q6K, _) => GgmlDType::Q8_0,
            _ => GgmlDType::Q5_0,
        }
    }
}

impl TinyModel {
    /// A qwen2 model of `shape` with random weights stored as `quant`, the
    /// tests' tokenizer (padded to the vocabulary size) and chat template;
    /// it never ends its turn (zero output rows for the end tokens), so
    /// decoding runs to `max_tokens`.
    pub fn shaped(shape: Shape, quant: Quant) -> Self {
        let base = Self::new("qwen2");
        let get = |key: &str| {
            base.metadata
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.to_vec().unwrap().clone())
                .unwrap()
        };
        let mut tokens: Vec<Value> = get("tokenizer.ggml.tokens");
        let mut types: Vec<Value> = get("tokenizer.ggml.token_type");
        let ends: Vec<usize> = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| {
                matches!(
                    t.to_string().unwrap().as_str(),
                    "<|im_end|>" | "<|endoftext|>"
                )
            })
            .map(|(i, _)| i)
            .collect();
        for i in tokens.len()..shape.vocab {
            tokens.push(Value::String(format!("[unused{i}]")));
            types.push(Value::I32(1));
        }
        let a = |k: &str| format!("qwen2.{k}");
        let mut model = base
            .set(&a("context_length"), Value::U32(shape.context))
            .set(&a("embedding_length"), Value::U32(shape.hidden as u32))
            .set(&a("feed_forward_length"), Value::U32(shape.ffn as u32))
            .set(&a("block_count"), Value::U32(shape.layers as u32))
            .set(&a("attention.head_count"), Value::U32(shape.heads as u32))
            .set(
                &a("attention.head_count_kv"),
                Value::U32(shape.kv_heads as u32),
            )
            .set(
                &a("rope.dimension_count"),
                Value::U32((shape.hidden / shape.heads) as u32),
            )
            .set(&a("rope.freq_base"), Value::F32(1_000_000.0))
            .set("tokenizer.ggml.tokens", Value::Array(tokens))
            .set("tokenizer.ggml.token_type", Value::Array(types));
        let (h, kv) = (shape.hidden, shape.kv_heads * (shape.hidden / shape.heads));
        let mut shapes: Vec<(String, Option<usize>, Vec<usize>)> = vec![
            ("token_embd.weight".into(), None, vec![shape.vocab, h]),
            ("output_norm.weight".into(), None, vec![h]),
            ("output.weight".into(), None, vec![shape.vocab, h]),
        ];
        for l in 0..shape.layers {
            let p = |n: &str| format!("blk.{l}.{n}");
            for (n, dims) in [
                ("attn_q.weight", vec![h, h]),
                ("attn_k.weight", vec![kv, h]),
                ("attn_v.weight", vec![kv, h]),
                ("attn_output.weight", vec![h, h]),
                ("ffn_gate.weight", vec![shape.ffn, h]),
                ("ffn_up.weight", vec![shape.ffn, h]),
                ("ffn_down.weight", vec![h, shape.ffn]),
                ("attn_norm.weight", vec![h]),
                ("ffn_norm.weight", vec![h]),
                ("attn_q.bias", vec![h]),
                ("attn_k.bias", vec![kv]),
                ("attn_v.bias", vec![kv]),
            ] {
                shapes.push((p(n), Some(l), dims));
            }
        }
        model.tensors = shapes
            .into_iter()
            .map(|(name, layer, dims)| {
                let cols = *dims.last().unwrap();
                if dims.len() == 1 {
                    let t = if name.ends_with("norm.weight") {
                        Tensor::ones(dims, candle_core::DType::F32, &Device::Cpu)
                    } else {
                        Tensor::randn(0f32, 0.02, dims, &Device::Cpu)
                    }
                    .unwrap();
                    return (name, QTensor::quantize(&t, GgmlDType::F32).unwrap());
                }
                // Scaled so activations keep their size through the layers.
                let std = 1.0 / (cols as f32).sqrt();
                let mut t = Tensor::randn(0f32, std, dims, &Device::Cpu).unwrap();
                if name == "output.weight" {
                    let mut keep = vec![1f32; shape.vocab];
                    for e in &ends {
                        keep[*e] = 0.0;
                    }
                    let keep = Tensor::from_vec(keep, (shape.vocab, 1), &Device::Cpu).unwrap();
                    t = t.broadcast_mul(&keep).unwrap();
                }
                let dtype = quant.dtype(&name, layer, shape.layers, cols);
                (name, QTensor::quantize(&t, dtype).unwrap())
            })
            .collect();
        model
    }
}

/// Keeps candle from oversubscribing the shared cores.
pub fn limit_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
}

/// The index of the largest logit (the greedy choice).
pub fn argmax(logits: &[f32]) -> usize {
    logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .expect("logits")
}

/// The text an engine's stream generated (its other events left out); a
/// failed event fails the test.
pub async fn generated_text(stream: clawpen_inference::engine::EngineStream) -> String {
    use futures::StreamExt;
    stream
        .filter_map(|e| async move {
            match e.unwrap() {
                clawpen_inference::engine::EngineEvent::Text(t) => Some(t),
                _ => None,
            }
        })
        .collect()
        .await
}
