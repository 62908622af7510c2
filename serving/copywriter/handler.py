"""A RunInference model handler that writes one product's pitch with a keras-hub causal LM.

Like ``serving.batch.handler``, it is a ``ModelHandler`` of our own: RunInference loads the
generator once per worker (``load_model``), shares it between threads and reports its
metrics. Each request is one prompt; the N samples of up to ``copy.prompts_per_call`` prompts
are generated as one batch (fixed shapes, so keras-hub compiles once), judged by the guard,
the passing ones ranked by their text-embedding similarity to the title; the verdict is the
inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from tfrec.copywriter.generator import Generator, Sampling
from tfrec.copywriter.guard import choose

METRICS_NAMESPACE = "tfrec_copy"


@dataclasses.dataclass(frozen=True)
class CopyRequest:
    """One prompt: the product (and the product bought before, when personalised) and its instruction."""

    title: str
    instruction: str
    because: str | None = None


@dataclasses.dataclass
class CopyModel:
    """What a worker holds: the generator, and a text embedder scoring samples against titles."""

    generator: Generator
    embed: object | None = None

    def score(self, texts: list[str], title: str) -> list[float]:
        """Cosine similarity of each text to the title (0 for all without an embedder)."""
        if self.embed is None:
            return [0.0] * len(texts)
        vectors = self.embed.encode([title, *texts], verbose=False)
        return (vectors[1:] @ vectors[0]).astype(np.float64).tolist()


class CopyModelHandler(ModelHandler[CopyRequest, PredictionResult, CopyModel]):
    """``CopyRequest``s -> ``PredictionResult``s whose ``inference`` is a ``Verdict`` as a dict.

    Args:
      generator: ``copy.generator`` (``smollm2``, a ``.gguf`` file or a keras-hub preset).
      model_cache: where a GGUF generator is converted once.
      sampling: samples per prompt and the fixed sampler settings.
      scorer: a keras-hub text embedder preset (``pkg:`` allowed) ranking the passing samples;
        None ranks them in sampling order.
    """

    def __init__(self, generator: str, model_cache: str, sampling: Sampling = Sampling(),
                 scorer: str | None = None):
        super().__init__(min_batch_size=1, max_batch_size=sampling.prompts)
        self.generator = generator
        self.model_cache = model_cache
        self.sampling = sampling
        self.scorer = scorer

    def load_model(self) -> CopyModel:
        import os

        generator = Generator.from_preset(self.generator, os.path.expanduser(self.model_cache), self.sampling)
        embed = None
        if self.scorer:
            from tfrec.config import TextEncoderConfig
            from tfrec.models.text import pretrained_pipeline

            embed = pretrained_pipeline(TextEncoderConfig(preset=self.scorer, sequence_length=64))
        return CopyModel(generator, embed)

    def run_inference(self, batch: Sequence[CopyRequest], model: CopyModel, inference_args: dict | None = None
                      ) -> Iterable[PredictionResult]:
        results = []
        sampled = model.generator.generate_many([request.instruction for request in batch])
        for request, samples in zip(batch, sampled, strict=True):
            verdict = choose(samples, request.title, request.because, model.generator.prompt(request.instruction),
                             score=model.score)
            results.append(PredictionResult(request, verdict.to_json(), self.generator))
        return results

    def get_num_bytes(self, batch: Sequence[CopyRequest]) -> int:
        return sum(len(request.instruction) for request in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE
