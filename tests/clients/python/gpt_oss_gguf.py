"""Writes a tiny gpt-oss-architecture GGUF for tests: random weights, a small
byte-level BPE vocabulary trained here plus the harmony special tokens, a
simplified harmony chat template.

Usage: python3 gpt_oss_gguf.py OUT.gguf [--seed N]

`general.architecture` is "gpt-oss" (llama.cpp's LLM_ARCH_OPENAI_MOE). The
structure is the real one at toy sizes: q/k/v/o projections with biases,
per-head attention sinks, alternating sliding-window / full attention
layers (window 8, so a short prompt already crosses it), YaRN rope
scaling, a biased router over 4 experts (2 used) and MXFP4 expert
weights with F32 per-expert biases. Everything that is not an expert
weight is F32.

The model's text is gibberish; what matters is that llama.cpp loads it,
tokenizes real prompts, renders the template and runs the gpt-oss graph.
Needs `pip install gguf numpy`.
"""

import argparse
from collections import Counter

import gguf
import numpy as np

ARCH = "gpt-oss"
N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = 16
N_EXPERT = 4
N_EXPERT_USED = 2
N_FF_EXP = 64
N_CTX = 4096
ROPE_FREQ_BASE = 150000.0
RMS_EPS = 1e-5
SLIDING_WINDOW = 8
YARN_FACTOR = 32.0
YARN_ORIG_CTX = 4096

CORPUS = (
    "the quick brown fox jumps over the lazy dog. what is the weather in oslo? "
    "you are a helpful assistant. hello, world! tools, calls, results and answers. "
    "user system developer assistant analysis commentary final functions json "
    "get_weather location city {\"location\": \"oslo\"} namespace type reasoning "
) * 4
N_MERGES = 160

# The harmony (o200k_harmony) special tokens gpt-oss uses. All CONTROL.
SPECIALS = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|return|>",
    "<|constrain|>",
    "<|channel|>",
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|call|>",
]
BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"

# Simplified harmony template. Tools (if any) are listed in a developer
# message, TypeScript-ish like the real one; assistant tool calls go to the
# commentary channel addressed to functions.NAME and end with <|call|>; tool
# results come back from functions.NAME on the commentary channel; plain
# assistant text is on the final channel. `tojson` output is emitted on its
# own, never concatenated with `+`: in jinja2 it is Markup, and Markup + str
# HTML-escapes the str ('=>' would become '=&gt;', '<|call|>' '&lt;|call|&gt;').
TEMPLATE = (
    "{%- set ns = namespace(last_tool='') -%}"
    "{%- if tools -%}"
    "{{- '<|start|>developer<|message|># Tools\\n\\nnamespace functions {\\n' -}}"
    "{%- for tool in tools -%}"
    "{%- if tool.function is defined -%}{%- set f = tool.function -%}{%- else -%}{%- set f = tool -%}{%- endif -%}"
    "{%- if f.description is defined and f.description -%}{{- '\\n// ' + f.description -}}{%- endif -%}"
    "{{- '\\ntype ' + f.name + ' = (_: ' -}}{{- f.parameters | tojson -}}{{- ') => any;\\n' -}}"
    "{%- endfor -%}"
    "{{- '\\n} // namespace functions<|end|>' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{%- if message.content -%}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + message.content + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- if message.tool_calls is defined and message.tool_calls -%}"
    "{%- for tc in message.tool_calls -%}"
    "{%- if tc.function is defined -%}{%- set fn = tc.function -%}{%- else -%}{%- set fn = tc -%}{%- endif -%}"
    "{%- set ns.last_tool = fn.name -%}"
    "{{- '<|start|>assistant<|channel|>commentary to=functions.' + fn.name + ' <|constrain|>json<|message|>' -}}"
    "{%- if fn.arguments is string -%}{{- fn.arguments -}}{%- else -%}{{- fn.arguments | tojson -}}{%- endif -%}"
    "{{- '<|call|>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- elif message.role == 'tool' -%}"
    "{%- if message.name is defined and message.name -%}{%- set tname = message.name -%}{%- else -%}{%- set tname = ns.last_tool -%}{%- endif -%}"
    "{{- '<|start|>functions.' + tname + ' to=assistant<|channel|>commentary<|message|>'"
    " + (message.content or '') + '<|end|>' -}}"
    "{%- else -%}"
    "{{- '<|start|>' + message.role + '<|message|>' + (message.content or '') + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start|>assistant' -}}{%- endif -%}"
)


def bytes_to_unicode():
    """GPT-2's reversible byte → printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def train_bpe():
    enc = bytes_to_unicode()
    vocab = [enc[b] for b in range(256)]
    words = [[enc[b] for b in (" " + w).encode()] for w in CORPUS.split()]
    merges = []
    for _ in range(N_MERGES):
        pairs = Counter()
        for w in words:
            pairs.update(zip(w, w[1:]))
        if not pairs:
            break
        (a, b), _count = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    return vocab, merges


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    vocab, merges = train_bpe()
    tokens = vocab + SPECIALS
    types = [gguf.TokenType.NORMAL] * len(vocab) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(args.out, ARCH)
    w.add_name("clawpen-tiny-gpt-oss-test")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF_EXP)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_sliding_window(SLIDING_WINDOW)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(YARN_FACTOR)
    w.add_rope_scaling_orig_ctx_len(YARN_ORIG_CTX)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_MXFP4_MOE)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index(BOS))
    w.add_eos_token_id(tokens.index(EOS))
    w.add_pad_token_id(tokens.index(PAD))
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)

    rng = np.random.default_rng(args.seed)

    # numpy shapes are ggml's ne reversed: a ggml {in, out} matrix is
    # numpy (out, in); the experts' {in, out, n_expert} is (n_expert, out, in).
    def mat(*shape):
        fan_in = shape[-1]
        return (rng.standard_normal(shape) * (0.5 / np.sqrt(fan_in))).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    def mxfp4(name, arr):
        q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.MXFP4)
        # q is uint8 with the byte shape (..., row_bytes); add_tensor turns it
        # back into the element shape with quant_shape_from_byte_shape.
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.MXFP4)

    q_dim, kv_dim = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM

    w.add_tensor("token_embd.weight", rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32))
    w.add_tensor("output_norm.weight", norm(N_EMBD))
    w.add_tensor("output.weight", mat(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(N_EMBD))
        w.add_tensor(p + "attn_q.weight", mat(q_dim, N_EMBD))
        w.add_tensor(p + "attn_q.bias", bias(q_dim))
        w.add_tensor(p + "attn_k.weight", mat(kv_dim, N_EMBD))
        w.add_tensor(p + "attn_k.bias", bias(kv_dim))
        w.add_tensor(p + "attn_v.weight", mat(kv_dim, N_EMBD))
        w.add_tensor(p + "attn_v.bias", bias(kv_dim))
        w.add_tensor(p + "attn_output.weight", mat(N_EMBD, q_dim))
        w.add_tensor(p + "attn_output.bias", bias(N_EMBD))
        w.add_tensor(p + "attn_sinks.weight", rng.standard_normal(N_HEAD).astype(np.float32))
        w.add_tensor(p + "post_attention_norm.weight", norm(N_EMBD))
        w.add_tensor(p + "ffn_gate_inp.weight", mat(N_EXPERT, N_EMBD))
        w.add_tensor(p + "ffn_gate_inp.bias", bias(N_EXPERT))
        mxfp4(p + "ffn_gate_exps.weight", mat(N_EXPERT, N_FF_EXP, N_EMBD))
        w.add_tensor(p + "ffn_gate_exps.bias", bias(N_EXPERT, N_FF_EXP))
        mxfp4(p + "ffn_up_exps.weight", mat(N_EXPERT, N_FF_EXP, N_EMBD))
        w.add_tensor(p + "ffn_up_exps.bias", bias(N_EXPERT, N_FF_EXP))
        mxfp4(p + "ffn_down_exps.weight", mat(N_EXPERT, N_EMBD, N_FF_EXP))
        w.add_tensor(p + "ffn_down_exps.bias", bias(N_EXPERT, N_EMBD))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
