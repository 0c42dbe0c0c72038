"""Writes a tiny llama-architecture GGUF for tests: random weights, a small
byte-level BPE vocabulary trained here, a ChatML chat template.

Usage: python3 tiny_gguf.py OUT.gguf [N_EMBD N_LAYER N_FF]

(The optional sizes make a bigger model for benchmarks, where per-token
time should look like a real model's.)

The model's text is gibberish; what matters is that llama.cpp loads it,
tokenizes real prompts, renders the template and streams tokens. The
end-of-turn token's output row is zero, so with temperature 0 the model
never stops by itself: generation runs to `max_tokens`, outputs are never
empty. Needs `pip install gguf numpy`.
"""

import sys
from collections import Counter

import gguf
import numpy as np

N_EMBD, N_FF, N_LAYER, N_HEAD, N_CTX = 64, 128, 2, 4, 1024
CORPUS = (
    "the quick brown fox jumps over the lazy dog. what is the weather in oslo? "
    "you are a helpful assistant. hello, world! tools, calls, results and answers. "
) * 4
N_MERGES = 96
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
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


def main(path, sizes):
    global N_EMBD, N_LAYER, N_FF
    if sizes:
        N_EMBD, N_LAYER, N_FF = (int(x) for x in sizes)
    vocab, merges = train_bpe()
    tokens = vocab + SPECIALS
    types = [gguf.TokenType.NORMAL] * len(vocab) + [gguf.TokenType.CONTROL] * len(SPECIALS)
    n_vocab = len(tokens)
    eot = tokens.index("<|im_end|>")

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("clawpen-tiny-test")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(eot)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)

    rng = np.random.default_rng(7)

    def t(*shape, scale=0.5):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", t(n_vocab, N_EMBD))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = t(n_vocab, N_EMBD)
    out[eot] = 0.0
    w.add_tensor("output.weight", out)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + n + ".weight", t(N_EMBD, N_EMBD, scale=0.1))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", t(N_FF, N_EMBD, scale=0.1))
        w.add_tensor(p + "ffn_up.weight", t(N_FF, N_EMBD, scale=0.1))
        w.add_tensor(p + "ffn_down.weight", t(N_EMBD, N_FF, scale=0.1))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:5])
