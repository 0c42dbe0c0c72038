"""Writes a tiny gpt-oss-architecture GGUF for tests: random weights, a small
byte-level BPE vocabulary trained here plus the harmony special tokens, a
simplified harmony chat template.

Usage: python3 gpt_oss_gguf.py OUT.gguf [--seed N] [--shape tiny|bench]

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

`--shape bench` (the default is `tiny`, described above) writes a model big
enough to time a CPU engine against llama.cpp: 1024 wide, 8 layers, 16
query / 4 KV heads of 64, 16 experts (4 used) of 1024, sliding window 128,
context 8192, a ~4k-token BPE vocabulary trained on a synthetic word list,
Q8_0 embedding / output / attention matrices (router, norms, biases and
sinks F32), MXFP4 experts, and a template whose system line names the
harmony channels (`analysis`). About 250 MB.
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

# --shape bench. Rope and YaRN settings are the tiny shape's.
BENCH = dict(
    n_embd=1024,
    n_layer=8,
    n_head=16,
    n_head_kv=4,
    head_dim=64,
    n_expert=16,
    n_expert_used=4,
    n_ff_exp=1024,
    n_ctx=8192,
    sliding_window=128,
)
BENCH_MERGES = 3800  # vocabulary: 256 bytes + up to this many merges + specials

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

# The bench shape's template: the tiny one after a harmony-like system
# message naming the channels (an engine may key reasoning on `analysis`).
BENCH_TEMPLATE = (
    "{{- '<|start|>system<|message|>Reasoning: low\\n\\n"
    "# Valid channels: analysis, commentary, final.<|end|>' -}}"
) + TEMPLATE


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


def bench_word_counts():
    """A synthetic corpus as {word: count}: the tiny CORPUS's words (common)
    plus pseudo-words built from syllables with Zipf-like counts, digits and
    punctuation. Fixed (independent of --seed)."""
    import random

    r = random.Random(1234)
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t",
              "v", "w", "y", "z", "ch", "sh", "th", "st", "tr", "pl", "br", "gr", "qu", "wh"]
    vowels = ["a", "e", "i", "o", "u", "y", "ai", "ea", "ou", "ee", "oo", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rt", "x"]
    words = {}
    for i in range(12000):
        n_syl = r.choice((1, 1, 2, 2, 2, 3, 3, 4))
        w = "".join(r.choice(onsets) + r.choice(vowels) + r.choice(codas) for _ in range(n_syl))
        if r.random() < 0.1:
            w = w.capitalize()
        words.setdefault(w, 1 + int(2000 / (i + 1)))
    for i, w in enumerate(dict.fromkeys(CORPUS.split())):
        words[w] = words.get(w, 0) + 5000
    for n in range(1000):
        words[str(n)] = words.get(str(n), 0) + 1 + int(300 / (n + 1))
    for p in [".", ",", "?", "!", ":", ";", "(", ")", "\"", "'", "-", "{", "}", "[", "]"]:
        words[p] = 3000
    return words


def train_bpe_fast(word_counts, n_merges):
    """The same byte-level BPE as train_bpe, on word counts, updating pair
    counts incrementally (a heap with lazy deletion, ties broken by the pair's
    text) so thousands of merges take seconds. A merge whose result is already
    in the vocabulary adds no second copy."""
    import heapq
    from collections import defaultdict

    enc = bytes_to_unicode()
    vocab = [enc[b] for b in range(256)]
    seen = set(vocab)
    words = [[enc[b] for b in (" " + w).encode()] for w in word_counts]
    counts = list(word_counts.values())
    pair_count = defaultdict(int)
    where = defaultdict(set)
    for i, w in enumerate(words):
        for q in zip(w, w[1:]):
            pair_count[q] += counts[i]
            where[q].add(i)
    heap = [(-c, q) for q, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < n_merges and heap:
        negc, (a, b) = heapq.heappop(heap)
        if negc == 0 or pair_count.get((a, b), 0) != -negc:
            continue  # stale entry
        merges.append(f"{a} {b}")
        if a + b not in seen:
            seen.add(a + b)
            vocab.append(a + b)
        changed = set()
        for i in sorted(where.pop((a, b))):
            w, c = words[i], counts[i]
            for q in zip(w, w[1:]):
                pair_count[q] -= c
                changed.add(q)
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(a + b)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            for q in zip(out, out[1:]):
                pair_count[q] += c
                where[q].add(i)
                changed.add(q)
            words[i] = out
        for q in changed:
            c = pair_count[q]
            if c <= 0:
                pair_count.pop(q, None)
                where.pop(q, None)
            else:
                heapq.heappush(heap, (-c, q))
    return vocab, merges


MXFP4_MIDPOINTS = np.array([0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0], dtype=np.float32)


def quantize_mxfp4_fast(arr):
    """gguf.quants.quantize(arr, MXFP4) without its 16-way argmin per value
    (the same scale; nearest e2m1 value by searchsorted; equal up to exact
    ties): a 16x1024x1024 tensor takes ~0.3 s instead of ~2 s."""
    blocks = arr.reshape(-1, 32)
    d = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        e = np.where(d > 0, np.floor(np.log2(d)) - 2 + 127, 0).astype(np.uint8)
    scale = gguf.quants.MXFP4.e8m0_to_fp32_half(e)
    x = blocks / scale
    idx = np.searchsorted(MXFP4_MIDPOINTS, np.abs(x)).astype(np.uint8)
    idx |= ((x < 0) & (idx > 0)).astype(np.uint8) << np.uint8(3)
    qs = idx[:, :16] | (idx[:, 16:] << np.uint8(4))
    out = np.concatenate([e, qs], axis=-1)
    return out.reshape(*arr.shape[:-1], arr.shape[-1] // 32 * 17)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--shape", choices=("tiny", "bench"), default="tiny")
    args = ap.parse_args()
    bench = args.shape == "bench"

    if bench:
        d = BENCH
        vocab, merges = train_bpe_fast(bench_word_counts(), BENCH_MERGES)
    else:
        d = dict(
            n_embd=N_EMBD,
            n_layer=N_LAYER,
            n_head=N_HEAD,
            n_head_kv=N_HEAD_KV,
            head_dim=HEAD_DIM,
            n_expert=N_EXPERT,
            n_expert_used=N_EXPERT_USED,
            n_ff_exp=N_FF_EXP,
            n_ctx=N_CTX,
            sliding_window=SLIDING_WINDOW,
        )
        vocab, merges = train_bpe()
    n_embd, n_head, n_head_kv, head_dim = d["n_embd"], d["n_head"], d["n_head_kv"], d["head_dim"]
    n_expert, n_ff_exp = d["n_expert"], d["n_ff_exp"]
    tokens = vocab + SPECIALS
    types = [gguf.TokenType.NORMAL] * len(vocab) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(args.out, ARCH)
    w.add_name("clawpen-bench-gpt-oss" if bench else "clawpen-tiny-gpt-oss-test")
    w.add_context_length(d["n_ctx"])
    w.add_embedding_length(n_embd)
    w.add_block_count(d["n_layer"])
    w.add_feed_forward_length(n_ff_exp)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_sliding_window(d["sliding_window"])
    w.add_expert_count(n_expert)
    w.add_expert_used_count(d["n_expert_used"])
    w.add_expert_feed_forward_length(n_ff_exp)
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
    w.add_chat_template(BENCH_TEMPLATE if bench else TEMPLATE)

    rng = np.random.default_rng(args.seed)

    # numpy shapes are ggml's ne reversed: a ggml {in, out} matrix is
    # numpy (out, in); the experts' {in, out, n_expert} is (n_expert, out, in).
    def mat(*shape):
        fan_in = shape[-1]
        if bench:  # float32 draws: half the time, and these are big
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.5 / np.sqrt(fan_in))
        return (rng.standard_normal(shape) * (0.5 / np.sqrt(fan_in))).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    def bias(*shape):
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    def mxfp4(name, arr):
        if bench:
            q = quantize_mxfp4_fast(arr)
        else:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.MXFP4)
        # q is uint8 with the byte shape (..., row_bytes); add_tensor turns it
        # back into the element shape with quant_shape_from_byte_shape.
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.MXFP4)

    def dense(name, arr):
        """Embedding / output / attention matrices: F32 (tiny), Q8_0 (bench)."""
        if bench:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, arr)

    q_dim, kv_dim = n_head * head_dim, n_head_kv * head_dim

    if bench:
        dense("token_embd.weight", rng.standard_normal((n_vocab, n_embd), dtype=np.float32))
    else:
        dense("token_embd.weight", rng.standard_normal((n_vocab, n_embd)).astype(np.float32))
    w.add_tensor("output_norm.weight", norm(n_embd))
    dense("output.weight", mat(n_vocab, n_embd))
    for i in range(d["n_layer"]):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", norm(n_embd))
        dense(p + "attn_q.weight", mat(q_dim, n_embd))
        w.add_tensor(p + "attn_q.bias", bias(q_dim))
        dense(p + "attn_k.weight", mat(kv_dim, n_embd))
        w.add_tensor(p + "attn_k.bias", bias(kv_dim))
        dense(p + "attn_v.weight", mat(kv_dim, n_embd))
        w.add_tensor(p + "attn_v.bias", bias(kv_dim))
        dense(p + "attn_output.weight", mat(n_embd, q_dim))
        w.add_tensor(p + "attn_output.bias", bias(n_embd))
        w.add_tensor(p + "attn_sinks.weight", rng.standard_normal(n_head).astype(np.float32))
        w.add_tensor(p + "post_attention_norm.weight", norm(n_embd))
        w.add_tensor(p + "ffn_gate_inp.weight", mat(n_expert, n_embd))
        w.add_tensor(p + "ffn_gate_inp.bias", bias(n_expert))
        mxfp4(p + "ffn_gate_exps.weight", mat(n_expert, n_ff_exp, n_embd))
        w.add_tensor(p + "ffn_gate_exps.bias", bias(n_expert, n_ff_exp))
        mxfp4(p + "ffn_up_exps.weight", mat(n_expert, n_ff_exp, n_embd))
        w.add_tensor(p + "ffn_up_exps.bias", bias(n_expert, n_ff_exp))
        mxfp4(p + "ffn_down_exps.weight", mat(n_expert, n_embd, n_ff_exp))
        w.add_tensor(p + "ffn_down_exps.bias", bias(n_expert, n_embd))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
