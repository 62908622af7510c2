"""A tiny Llama written as a GGUF file the way llama.cpp writes one, and its forward pass in NumPy.

The weights are random, in Hugging Face layout; the file holds them in llama.cpp's layout
(query and key rows permuted for its rotary code, the embedding quantized to Q8_0), with a
byte-level BPE vocabulary of the 256 byte symbols, a few merges and three control tokens.
"""

from __future__ import annotations

import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN = 32, 2, 4, 2, 48
HEAD_DIM = HIDDEN // HEADS
ROPE_BASE, EPS = 10000.0, 1e-5
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "a n", "o n", "e r", "i n", "r e"]


def byte_symbols() -> list[str]:
    """GPT-2's byte -> printable symbol table, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    codes, extra = [], 0
    for byte in range(256):
        if byte in printable:
            codes.append(byte)
        else:
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def vocabulary() -> list[str]:
    merged = ["".join(merge.split(" ")) for merge in MERGES]
    return CONTROL + byte_symbols() + merged


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's converter does to query and key rows (the inverse of the project's unpermute)."""
    out, inputs = weight.shape
    return weight.reshape(heads, 2, out // heads // 2, inputs).swapaxes(1, 2).reshape(out, inputs)


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging Face-named float32 weights of the tiny model (embedding tied to the output)."""
    rng = np.random.default_rng(seed)
    vocab = len(vocabulary())

    def normal(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {"model.embed_tokens.weight": normal(vocab, HIDDEN, scale=0.5),
               "model.norm.weight": 1 + normal(HIDDEN, scale=0.1)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        weights |= {
            p + "input_layernorm.weight": 1 + normal(HIDDEN, scale=0.1),
            p + "post_attention_layernorm.weight": 1 + normal(HIDDEN, scale=0.1),
            p + "self_attn.q_proj.weight": normal(HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": normal(KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": normal(HIDDEN, HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": normal(FFN, HIDDEN),
            p + "mlp.up_proj.weight": normal(FFN, HIDDEN),
            p + "mlp.down_proj.weight": normal(HIDDEN, FFN),
        }
    return weights


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


def write_gguf(path, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Writes ``weights`` as a llama GGUF file; returns the weights as the file holds them
    after dequantization (the embedding went through Q8_0), in Hugging Face layout."""
    import gguf
    from gguf.quants import dequantize, quantize

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(ROPE_BASE)
    writer.add_layer_norm_rms_eps(EPS)
    writer.add_tokenizer_model("gpt2")
    tokens = vocabulary()
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token in CONTROL else 1 for token in tokens])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    stored = dict(weights)
    embedding = quantize(weights["model.embed_tokens.weight"], gguf.GGMLQuantizationType.Q8_0)
    stored["model.embed_tokens.weight"] = dequantize(embedding, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("token_embd.weight", embedding, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for i in range(LAYERS):
        for hf, name in GGUF_NAMES.items():
            value = weights[f"model.layers.{i}.{hf}.weight"]
            if name in ("attn_q", "attn_k"):
                value = llama_cpp_permute(value, HEADS if name == "attn_q" else KV_HEADS)
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def _rms_norm(x, scale):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS) * scale


def _rotary(x, positions):
    """Hugging Face's rotate-half rotary embedding of ``x`` ``[T, heads, head_dim]``."""
    inv_freq = 1.0 / ROPE_BASE ** (np.arange(0, HEAD_DIM, 2) / HEAD_DIM)
    angles = np.concatenate([np.outer(positions, inv_freq)] * 2, axis=-1)[:, None, :]
    half = HEAD_DIM // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def forward(weights: dict[str, np.ndarray], token_ids: list[int]) -> np.ndarray:
    """Logits ``[T, vocab]`` of a Llama decoder in float64: RMSNorm, rotary embedding,
    grouped-query causal attention, SwiGLU MLP, tied output embedding."""
    w = {name: value.astype(np.float64) for name, value in weights.items()}
    x = w["model.embed_tokens.weight"][token_ids]
    steps = len(token_ids)
    positions = np.arange(steps)
    causal = np.tril(np.ones((steps, steps), bool))
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        h = _rms_norm(x, w[p + "input_layernorm.weight"])
        q = _rotary((h @ w[p + "self_attn.q_proj.weight"].T).reshape(steps, HEADS, HEAD_DIM), positions)
        k = _rotary((h @ w[p + "self_attn.k_proj.weight"].T).reshape(steps, KV_HEADS, HEAD_DIM), positions)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(steps, KV_HEADS, HEAD_DIM)
        group = HEADS // KV_HEADS
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(HEAD_DIM)
        scores = np.where(causal[None], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = np.einsum("hqk,khd->qhd", probs, v).reshape(steps, HIDDEN)
        x = x + attended @ w[p + "self_attn.o_proj.weight"].T
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    return _rms_norm(x, w["model.norm.weight"]) @ w["model.embed_tokens.weight"].T
