"""The GGUF converter: a tiny Llama written as llama.cpp writes it, converted, loaded by keras-hub,
gives the logits of an independent NumPy forward pass over the same weights."""

import json

import numpy as np
import pytest
from tiny_llama import CONTROL, EPS, HEADS, forward, llama_cpp_permute, vocabulary

from tfrec.copywriter.generator import Generator, load_causal_lm
from tfrec.copywriter.gguf_llama import converted, unpermute
from tfrec.errors import TfrecError


def test_unpermute_undoes_llama_cpp_permutation():
    weight = np.arange(16 * 5, dtype=np.float32).reshape(16, 5)
    assert np.array_equal(unpermute(llama_cpp_permute(weight, HEADS), HEADS), weight)
    assert not np.array_equal(llama_cpp_permute(weight, HEADS), weight)


def test_converted_folder_describes_a_llama(tiny_preset):
    config = json.loads((tiny_preset / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert config["rms_norm_eps"] == pytest.approx(EPS)
    tokenizer = json.loads((tiny_preset / "tokenizer.json").read_text())
    assert [token["content"] for token in tokenizer["added_tokens"]] == CONTROL
    assert [step["type"] for step in tokenizer["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    special = json.loads((tiny_preset / "tokenizer_config.json").read_text())
    assert (special["bos_token"], special["eos_token"]) == ("<|im_start|>", "<|im_end|>")


def test_keras_hub_logits_match_a_numpy_forward_pass(tiny_gguf, tiny_preset):
    _, weights = tiny_gguf
    causal_lm, is_chat = load_causal_lm(str(tiny_preset))
    assert is_chat
    token_ids = [1, 40, 200, 70, 90, 3 + 256, 12, 2]
    logits = causal_lm({"token_ids": np.array([token_ids]), "padding_mask": np.ones((1, len(token_ids)), bool)})
    expected = forward(weights, token_ids)
    assert np.asarray(logits).shape == (1, len(token_ids), len(vocabulary()))
    np.testing.assert_allclose(np.asarray(logits)[0], expected, atol=2e-4, rtol=1e-4)


def test_tokenizer_applies_the_files_merges(tiny_preset):
    causal_lm, _ = load_causal_lm(str(tiny_preset))
    tokenizer = causal_lm.preprocessor.tokenizer
    ids = np.asarray(tokenizer("the then")).tolist()
    tokens = vocabulary()
    assert [tokens[i] for i in ids] == ["t", "he", "Ġthe", "n"]
    assert tokenizer.detokenize(np.array(ids)) == "the then"


def test_conversion_runs_once_per_file(tiny_gguf, tmp_path):
    first = converted(tiny_gguf[0], tmp_path)
    stamp = (tmp_path / first.split("/")[-1] / "model.safetensors").stat().st_mtime_ns
    assert converted(tiny_gguf[0], tmp_path) == first
    assert (tmp_path / first.split("/")[-1] / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_generator_samples_as_many_pitches_as_asked(tiny_preset):
    from tfrec.copywriter.generator import Sampling

    causal_lm, is_chat = load_causal_lm(str(tiny_preset))
    generator = Generator(causal_lm, is_chat, Sampling(samples=3, max_length=64))
    pitches = generator.generate("Product: red mug\nWrite a one-sentence product description.")
    assert len(pitches) == 3 and all(isinstance(p, str) for p in pitches)
    several = Generator(causal_lm, is_chat, Sampling(samples=2, max_length=64, prompts=2))
    sampled = several.generate_many([f"Product: {t}\nWrite a one-sentence product description."
                                     for t in ("red mug", "blue lamp", "heart tin")])
    assert [len(s) for s in sampled] == [2, 2, 2]  # the second call's batch filled up, its extra dropped
    tokenizer = generator.causal_lm.preprocessor.tokenizer
    scored = generator.token_losses(["the red mug", "then"])
    assert [len(ids) for ids, _ in scored] == [len(tokenizer(t)) - 1 for t in ("the red mug", "then")]
    context = generator.title_context()
    assert context.endswith("<|im_start|>user\nProduct: ")
    (ids, losses), = generator.token_losses(["the red mug"], context)
    assert ids == np.asarray(tokenizer(context + "the red mug")).tolist()[len(tokenizer(context)):]
    assert len(losses) == len(ids) and np.all(losses > 0)


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(TfrecError, match="bad.gguf"):
        converted(bad, tmp_path / "cache")
