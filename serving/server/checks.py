"""Request checks against a model's signature, and the limits every request must stay within.

A request is checked in two steps, so that nothing large is built for a request the
server will refuse:

1. ``Signature.admit``: input names, and each input's *declared* shape (from the JSON
   nesting, or the gRPC TensorProto's ``tensor_shape``) against the SignatureDef and the
   server's limits (``ServeConfig``: batch size, history length, values per input), and one batch
   size shared by every per-example input. Only then are arrays built.
2. ``Signature.check_values``: the values (no NaN or infinity; for a model whose whole request
   is one item id, ids of its catalogue); then ``Signature.run`` calls the model (alone, or
   merged with other requests by ``serving.server.batching``), whose own InvalidArgument
   errors come back as the request's error with their message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from serving.server.status import RESOURCE_EXHAUSTED, ServingError, invalid, over_limit, tf_error_text
from tfrec.config import ServeConfig

PREDICT_METHOD = "tensorflow/serving/predict"
HISTORY_INPUT = "history"
"""The input whose second dimension is a user's history: bounded by ``serve.max_history``."""
REQUEST_WIDE_INPUTS = frozenset({"exclude_ids"})
"""List inputs that hold one list for the whole request, not one entry per example."""
K_INPUT = "k"
"""The number of results per row: outputs with an unknown second dimension hold ``k`` columns."""
ID_INPUT = "item_id"
"""An input of item ids; when it is a model's only required input, the ids must be known."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a signature, as its SignatureDef describes it."""

    name: str
    dtype: tf.DType
    shape: tuple[int | None, ...] | None  # None: unknown rank
    default: np.ndarray | None = None  # inputs only: the value used when a request leaves it out

    @classmethod
    def from_info(cls, name: str, info: meta_graph_pb2.TensorInfo, default: np.ndarray | None = None) -> TensorSpec:
        shape = None if info.tensor_shape.unknown_rank else tuple(
            d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
        return cls(name, tf.as_dtype(info.dtype), shape, default)

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()

    def shape_text(self) -> str:
        if self.shape is None:
            return "any shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def check_shape(self, shape: tuple[int, ...]) -> None:
        if any(d < 0 for d in shape):
            raise invalid(f"input '{self.name}' declares shape {list(shape)}: dimensions cannot be negative")
        if self.shape is None:
            return
        fits = len(shape) == len(self.shape) and all(w is None or w == g for g, w in zip(shape, self.shape))
        if not fits:
            raise invalid(f"input '{self.name}' has shape {list(shape)}, but the signature takes "
                          f"{_rank_text(len(self.shape))} of shape {self.shape_text()}")


def _rank_text(rank: int) -> str:
    return {0: "a single value", 1: "a list", 2: "a list of lists"}.get(rank, f"a {rank}-dimensional array")


@dataclass(frozen=True)
class Signature:
    """A callable signature of a loaded model, with its inputs' specs and defaults."""

    model: str
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    function: Callable[..., Mapping[str, tf.Tensor]] = field(repr=False)
    method_name: str = PREDICT_METHOD
    known_ids: np.ndarray | None = field(default=None, repr=False)  # sorted bytes: the model's catalogue
    categorical_fields: int | None = None  # categorical columns the model reads (None: not known)

    @classmethod
    def from_def(cls, model: str, name: str, signature_def: meta_graph_pb2.SignatureDef, function,
                 known_ids: np.ndarray | None = None, categorical_fields: int | None = None) -> Signature:
        inputs = {}
        for key, info in signature_def.inputs.items():
            default = tf.make_ndarray(signature_def.defaults[key]) if key in signature_def.defaults else None
            inputs[key] = TensorSpec.from_info(key, info, default)
        outputs = {key: TensorSpec.from_info(key, info) for key, info in signature_def.outputs.items()}
        return cls(model, name, inputs, outputs, function, signature_def.method_name or PREDICT_METHOD,
                   known_ids, categorical_fields)

    @property
    def required(self) -> list[str]:
        return sorted(n for n, s in self.inputs.items() if s.default is None)

    @property
    def optional(self) -> list[str]:
        return sorted(n for n, s in self.inputs.items() if s.default is not None)

    def describe_inputs(self) -> str:
        text = f"required: {', '.join(self.required) or 'none'}"
        return text + (f"; optional: {', '.join(self.optional)}" if self.optional else "")

    def check_names(self, names: Iterable[str]) -> None:
        names = list(names)
        unknown = [n for n in names if n not in self.inputs]
        if unknown:
            raise invalid(f"unknown input '{unknown[0]}': {self.model} takes {self.describe_inputs()}")
        missing = [n for n in self.required if n not in names]
        if missing:
            raise invalid(f"missing input '{missing[0]}': {self.model} takes {self.describe_inputs()}")

    def sole_input(self) -> TensorSpec:
        """The input a request may fill without naming it: the only required one."""
        if len(self.required) != 1:
            raise invalid(f"{self.model} takes several inputs ({self.describe_inputs()}): name them, "
                          f'e.g. {{"inputs": {{"{self.required[0] if self.required else "name"}": ...}}}}')
        return self.inputs[self.required[0]]

    @property
    def top_k_outputs(self) -> frozenset[str]:
        """Outputs holding ``k`` columns per row (``[B, k]``): those whose second dimension is not fixed."""
        if K_INPUT not in self.inputs:
            return frozenset()
        return frozenset(n for n, s in self.outputs.items() if s.shape is not None and len(s.shape) >= 2
                         and s.shape[1] is None)

    def per_example(self, name: str) -> bool:
        """Whether input ``name`` holds one entry per example (its first dimension is the batch)."""
        spec = self.inputs[name]
        return name not in REQUEST_WIDE_INPUTS and (spec.shape is None or len(spec.shape) >= 1)

    # -- step 1: declared shapes, before any array is built

    def admit(self, shapes: Mapping[str, tuple[int, ...]], limits: ServeConfig) -> int:
        """Checks the request's input names and declared shapes against the signature and ``limits``.

        Returns the batch size. Runs on shapes alone, so a request that declares a huge
        tensor is refused before anything of its size exists.
        """
        self.check_names(shapes)
        for name, shape in shapes.items():
            self.inputs[name].check_shape(shape)
            if name == HISTORY_INPUT and len(shape) >= 2 and shape[1] > limits.max_history:
                raise over_limit(f"input '{name}' holds histories of {shape[1]:,} items", limits.max_history,
                                 "serve.max_history; send the most recent items")
            values = math.prod(shape)
            if values > limits.max_values:
                raise over_limit(f"input '{name}' holds {values:,} values", limits.max_values,
                                 "serve.max_batch × serve.max_history")
        return self._batch(shapes, limits)

    def _batch(self, shapes: Mapping[str, tuple[int, ...]], limits: ServeConfig) -> int:
        sizes = {}
        for name, shape in shapes.items():
            if not shape or not self.per_example(name):
                continue
            if name not in self.required and math.prod(shape) == 0:
                continue  # an empty optional input: "none given", as its default
            sizes[name] = shape[0]
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"'{n}' {s}" for n, s in sizes.items())
            raise invalid(f"inputs carry different batch sizes ({listed}): every per-example input of "
                          f"{self.model} needs one entry per example")
        batch = next(iter(sizes.values()), 1)
        if batch > limits.max_batch:
            name = next(iter(sizes))
            raise over_limit(f"input '{name}' carries a batch of {batch:,}", limits.max_batch,
                             "serve.max_batch, --max-batch")
        return batch

    # -- step 2: values, then the model

    def call(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Checks the values of admitted arrays (dtypes already match), fills defaults, runs the model."""
        self.check_values(arrays)
        return self.run(arrays)

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs the model on checked arrays, the inputs they leave out at their defaults."""
        feed = {name: tf.constant(arrays.get(name, spec.default), dtype=spec.dtype)
                for name, spec in self.inputs.items()}
        try:
            outputs = self.function(**feed)
        except tf.errors.InvalidArgumentError as e:
            raise invalid(f"{self.model}: {tf_error_text(e.message)}") from e
        except tf.errors.ResourceExhaustedError as e:
            raise ServingError(RESOURCE_EXHAUSTED, f"{self.model}: {tf_error_text(e.message)}") from e
        return {name: tensor.numpy() for name, tensor in outputs.items()}

    def check_values(self, arrays: Mapping[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise invalid(f"input '{name}' holds NaN or infinity: {self.model} takes finite numbers")
        if self.required == [ID_INPUT] and self.known_ids is not None:
            self._check_known(arrays[ID_INPUT])
        categories = arrays.get("categories")
        if categories is not None and categories.size and self.categorical_fields == 0:
            raise invalid(f"input 'categories' was given, but {self.model}'s catalogue has no categorical "
                          f"fields: leave it out")

    def _check_known(self, ids: np.ndarray) -> None:
        """For a model whose whole request is an item id: every id must be one of its catalogue."""
        flat = [bytes(i) for i in ids.reshape(-1)]
        known = self.known_ids
        fits = np.array([len(i) <= known.dtype.itemsize for i in flat], bool)  # a longer id is not one of them
        wanted = np.array([i if f else b"" for i, f in zip(flat, fits)], dtype=known.dtype)
        found = np.zeros(len(flat), bool)
        if len(known) and len(flat):
            at = np.minimum(np.searchsorted(known, wanted), len(known) - 1)
            found = fits & (known[at] == wanted)
        if not found.all():
            i = int(np.argmin(found))
            unknown = flat[i].decode("utf-8", "replace")
            raise invalid(f"{ID_INPUT}[{i}] '{unknown}' is not an item of {self.model}'s catalogue "
                          f"({len(known):,} items): it answers only for known items")
