"""``tfrec serve``: a local model server that answers TF Serving's REST and gRPC APIs.

Stock TF Serving cannot load ``tfrec_retrieve_scann`` (ScaNN's ops are not linked in), and
not every machine has TF Serving. This server loads the same SavedModels from the same
folder layout (``EXPORT_DIR/<name>/<version>/``) and answers the same requests, so a
client written against TF Serving (``serving/client.py``, curl, tensorflow-serving-api)
works against either.

REST (``port``)::

    POST /v1/models/<name>[/versions/<v>]:predict    {"inputs": {...}} or {"instances": [...]}
    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature inputs / outputs, dtypes, shapes

gRPC (``grpc_port``): ``tensorflow.serving.PredictionService`` (``Predict``,
``GetModelMetadata``) and ``tensorflow.serving.ModelService`` (``GetModelStatus``).

Like TF Serving with its default version policy, each model serves its newest version.
A poller looks for newer versions (and new models) every ``poll_seconds``; the version
in service keeps answering until the new one has loaded, and a version that fails to
load is reported in the model's status and retried only once its files change.
Optional inputs (signature arguments with defaults, kept in the SignatureDef) may be
left out of a request; the server fills them in. A request is checked against the
signature before it reaches TensorFlow (input names, dtypes, shapes, batch size), and
a bad one is answered with HTTP 400/404 or gRPC INVALID_ARGUMENT/NOT_FOUND and a
message naming the input at fault.

Not supported: version labels, ``:classify`` / ``:regress`` (the exported models only
have predict signatures) and more than one loaded version per model.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.saved_model import DEFAULT_SIGNATURE, read_signature_defs, register_custom_ops
from tfrec.errors import TfrecError

if TYPE_CHECKING:
    from typing import Self

MAX_BODY_BYTES = 64 * 1024 * 1024
BYTES_SUFFIX = "_bytes"  # TF Serving writes string outputs with this suffix as {"b64": ...}

INVALID_ARGUMENT, NOT_FOUND, UNIMPLEMENTED, INTERNAL = "INVALID_ARGUMENT", "NOT_FOUND", "UNIMPLEMENTED", "INTERNAL"
HTTP_STATUS = {INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST, NOT_FOUND: HTTPStatus.NOT_FOUND,
               UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED, INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR}


class ServingError(Exception):
    """A request the server refuses; ``code`` is a gRPC status name, mapped to an HTTP status for REST."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


# ------------------------------------------------------------------ signatures


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a signature, as its SignatureDef describes it."""

    name: str
    dtype: tf.DType
    shape: tuple[int | None, ...] | None  # None: unknown rank
    default: np.ndarray | None = None  # inputs only: the value used when a request leaves it out

    @property
    def is_scalar(self) -> bool:
        return self.shape == ()

    def shape_text(self) -> str:
        if self.shape is None:
            return "any shape"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def check_shape(self, shape: tuple[int, ...]) -> None:
        if self.shape is None:
            return
        fits = len(shape) == len(self.shape) and all(w is None or w == g for g, w in zip(shape, self.shape))
        if not fits:
            raise _invalid(f"input '{self.name}' has shape {list(shape)}, but the signature takes "
                           f"{_rank_text(len(self.shape))} of shape {self.shape_text()}")


def _rank_text(rank: int) -> str:
    return {0: "a single value", 1: "a list", 2: "a list of lists"}.get(rank, f"a {rank}-dimensional array")


def _tensor_spec(name: str, info: meta_graph_pb2.TensorInfo, default: np.ndarray | None = None) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(
        d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    return TensorSpec(name, tf.as_dtype(info.dtype), shape, default)


@dataclass(frozen=True)
class Signature:
    """A callable signature of a loaded model, with its inputs' specs and defaults."""

    model: str
    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    function: Callable[..., Mapping[str, tf.Tensor]] = field(repr=False)

    @classmethod
    def from_def(cls, model: str, name: str, signature_def: meta_graph_pb2.SignatureDef, function) -> Signature:
        inputs = {}
        for key, info in signature_def.inputs.items():
            default = tf.make_ndarray(signature_def.defaults[key]) if key in signature_def.defaults else None
            inputs[key] = _tensor_spec(key, info, default)
        outputs = {key: _tensor_spec(key, info) for key, info in signature_def.outputs.items()}
        return cls(model, name, inputs, outputs, function)

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
            raise _invalid(f"unknown input '{unknown[0]}': {self.model} takes {self.describe_inputs()}")
        missing = [n for n in self.required if n not in names]
        if missing:
            raise _invalid(f"missing input '{missing[0]}': {self.model} takes {self.describe_inputs()}")

    def sole_input(self) -> TensorSpec:
        """The input a request may fill without naming it: the only required one."""
        if len(self.required) != 1:
            raise _invalid(f"{self.model} takes several inputs ({self.describe_inputs()}): name them, "
                           f'e.g. {{"inputs": {{"{self.required[0] if self.required else "name"}": ...}}}}')
        return self.inputs[self.required[0]]

    def batch_size(self, arrays: Mapping[str, np.ndarray]) -> int:
        """The request's batch: the largest first dimension of the required (per-example) inputs."""
        sizes = [arrays[n].shape[0] for n in self.required if arrays[n].ndim >= 1]
        return max(sizes, default=1)

    def run(self, arrays: Mapping[str, np.ndarray], max_batch: int) -> dict[str, np.ndarray]:
        """Checks ``arrays`` (dtypes already match) against the signature, fills defaults, runs it."""
        self.check_names(arrays)
        for name, array in arrays.items():
            self.inputs[name].check_shape(array.shape)
        batch = self.batch_size(arrays)
        if batch > max_batch:
            biggest = max((n for n in self.required if arrays[n].ndim >= 1), key=lambda n: arrays[n].shape[0])
            raise _invalid(f"input '{biggest}' carries a batch of {batch}; this server takes at most "
                           f"{max_batch} per request (--max-batch)")
        feed = {name: tf.constant(arrays.get(name, spec.default), dtype=spec.dtype)
                for name, spec in self.inputs.items()}
        try:
            outputs = self.function(**feed)
        except tf.errors.InvalidArgumentError as e:
            raise _invalid(f"{self.model}: {tf_error_text(e.message)}") from e
        return {name: tensor.numpy() for name, tensor in outputs.items()}


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


_TF_ERROR_NOISE = ("Graph execution error", "Detected at node", "<stack traces")


def tf_error_text(message: str) -> str:
    """The lines of a TensorFlow error that say what went wrong, without node names and stack traces."""
    kept = [line.strip() for line in message.splitlines()
            if line.strip() and not line[0].isspace() and not line.startswith(_TF_ERROR_NOISE)]
    return re.sub(r"\s*\[Op:[^\]]*\]$", "", " ".join(kept)) or _first_line(message)


@dataclass
class Servable:
    """One loaded version of one model."""

    name: str
    version: int
    path: Path
    signatures: dict[str, Signature]
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    loaded: Any = field(repr=False, default=None)  # keeps the variables the signatures read alive

    def signature(self, name: str | None) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise _invalid(f"{self.name} has no signature '{name}'; it has {', '.join(sorted(self.signatures))}")
        return self.signatures[name]

    def metadata(self) -> get_model_metadata_pb2.SignatureDefMap:
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signature_defs.items():
            defs.signature_def[key].CopyFrom(value)
        return defs


def load_servable(name: str, version_dir: Path) -> Servable:
    loaded = tf.saved_model.load(str(version_dir))
    defs = read_signature_defs(version_dir)
    signatures = {key: Signature.from_def(name, key, defs[key], function)
                  for key, function in loaded.signatures.items() if key in defs}
    return Servable(name, int(version_dir.name), version_dir, signatures, defs, loaded)


# ------------------------------------------------------------------ model folder


@dataclass
class VersionStatus:
    state: str  # AVAILABLE, LOADING or END (unloaded, or failed to load)
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: tuple = ()  # of the files, for a version that failed: retried when they change


def _versions_on_disk(model_dir: Path) -> list[int]:
    try:
        return sorted((int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), reverse=True)
    except OSError:
        return []


def _fingerprint(version_dir: Path) -> tuple:
    return tuple(sorted((str(p.relative_to(version_dir)), p.stat().st_size)
                        for p in version_dir.rglob("*") if p.is_file()))


def _error_code(error: Exception) -> str:
    if isinstance(error, tf.errors.OpError):
        return error_codes_pb2.Code.Name(error.error_code)
    return "UNKNOWN"


class ModelRegistry:
    """The models of an export folder: the servable in service for each, and every version's status."""

    def __init__(self, export_dir: str | Path, log: Callable[[str], None] = print):
        self.export_dir = Path(export_dir)
        self.log = log
        self._lock = threading.Lock()
        self._serving: dict[str, Servable] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._status)

    def serving(self) -> dict[str, Servable]:
        with self._lock:
            return dict(self._serving)

    def refresh(self) -> list[Servable]:
        """Loads every model's newest loadable version that is newer than the one in service."""
        loaded = []
        model_dirs = sorted(p for p in self.export_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        for model_dir in model_dirs:
            servable = self._refresh_model(model_dir)
            if servable is not None:
                loaded.append(servable)
        return loaded

    def _refresh_model(self, model_dir: Path) -> Servable | None:
        name = model_dir.name
        for version in _versions_on_disk(model_dir):
            with self._lock:
                current = self._serving.get(name)
                status = self._status.setdefault(name, {}).get(version)
            if current is not None and version <= current.version:
                return None
            path = model_dir / str(version)
            if not any((path / f).exists() for f in ("saved_model.pb", "saved_model.pbtxt")):
                continue
            fingerprint = _fingerprint(path)
            if status is not None and status.error_code != "OK" and status.fingerprint == fingerprint:
                continue  # failed before and unchanged since
            servable = self._load(name, version, path, fingerprint)
            if servable is not None:
                return servable
        return None

    def _load(self, name: str, version: int, path: Path, fingerprint: tuple) -> Servable | None:
        with self._lock:
            self._status[name][version] = VersionStatus("LOADING")
        try:
            servable = load_servable(name, path)
        except Exception as e:  # noqa: BLE001 (any failure leaves the version in service answering)
            message = _first_line(str(e))
            with self._lock:
                self._status[name][version] = VersionStatus("END", _error_code(e), message, fingerprint)
            self.log(f"  {name} version {version} failed to load: {message}")
            return None
        with self._lock:
            previous = self._serving.get(name)
            self._serving[name] = servable
            self._status[name][version] = VersionStatus("AVAILABLE")
            if previous is not None:
                self._status[name][previous.version] = VersionStatus("END")
        if previous is not None:
            self.log(f"  {name}: now serving version {version} (was {previous.version})")
        return servable

    def get(self, name: str, version: int | None = None) -> Servable:
        with self._lock:
            servable = self._serving.get(name)
            statuses = dict(self._status.get(name, {}))
            known = sorted(self._status)
        if name not in known:
            raise ServingError(NOT_FOUND, f"unknown model '{name}'; this server has: {', '.join(known) or 'none'}")
        if servable is None:
            failures = "; ".join(f"version {v}: {s.error_message}" for v, s in statuses.items() if s.error_message)
            detail = f" ({failures})" if failures else ""
            raise ServingError(NOT_FOUND, f"model '{name}' has no version loaded{detail}")
        if version is not None and version != servable.version:
            raise ServingError(NOT_FOUND, f"model '{name}' has no version {version} loaded; "
                                          f"it serves version {servable.version}")
        return servable

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        """``(version, status)`` of every version tried, newest first (only ``version`` if given)."""
        with self._lock:
            if name not in self._status:
                known = ", ".join(sorted(self._status)) or "none"
                raise ServingError(NOT_FOUND, f"unknown model '{name}'; this server has: {known}")
            statuses = sorted(self._status[name].items(), reverse=True)
        if version is not None:
            statuses = [(v, s) for v, s in statuses if v == version]
            if not statuses:
                raise ServingError(NOT_FOUND, f"model '{name}' has no version {version}")
        return statuses


# ------------------------------------------------------------------ JSON <-> arrays


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _leaf_converter(dtype: tf.DType) -> tuple[Callable[[Any], Any], str]:
    """A function checking and converting one JSON value to ``dtype``, and what it expects, in words."""
    if dtype == tf.string:
        def to_bytes(value):
            if isinstance(value, str):
                return value.encode("utf-8")
            if _is_b64(value):
                try:
                    return base64.b64decode(value["b64"], validate=True)
                except binascii.Error as e:
                    raise TypeError(f"bad base64: {e}") from e
            raise TypeError
        return to_bytes, "strings"
    if dtype == tf.bool:
        def to_bool(value):
            if type(value) is not bool:
                raise TypeError
            return value
        return to_bool, "true or false"
    if dtype.is_integer:
        low, high = dtype.min, dtype.max

        def to_int(value):
            if type(value) is not int:
                raise TypeError
            if not low <= value <= high:
                raise TypeError(f"out of {dtype.name}'s range")
            return value
        return to_int, "JSON integers"
    if dtype.is_floating:
        def to_float(value):
            if type(value) not in (int, float):
                raise TypeError
            return value
        return to_float, "JSON numbers"
    raise _invalid(f"this server cannot fill a {dtype.name} input from JSON")


def _json_shape(value: Any) -> list[int]:
    shape, probe = [], value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    return shape


def array_from_json(spec: TensorSpec, value: Any) -> np.ndarray:
    """A (nested) JSON list of ``spec``'s dtype as an array; errors name the input and the element."""
    convert, expected = _leaf_converter(spec.dtype)
    shape = _json_shape(value)
    leaves: list = []

    def walk(node: Any, depth: int, where: tuple[int, ...]) -> None:
        if depth < len(shape):
            if not isinstance(node, list) or len(node) != shape[depth]:
                raise _invalid(f"input '{spec.name}' is not rectangular: {spec.name}{_where(where)} has "
                               f"{_size_text(node)} where {spec.name}{_where(where[:-1] + (0,))} has {shape[depth]}"
                               + (" (pad histories to one length with empty ids \"\")" if spec.dtype == tf.string
                                  else ""))
            for i, child in enumerate(node):
                walk(child, depth + 1, where + (i,))
            return
        if isinstance(node, list):
            raise _invalid(f"input '{spec.name}' is not rectangular: {spec.name}{_where(where)} is a list "
                           f"where {spec.name}{_where(where[:-1] + (0,))} is a single value")
        try:
            leaves.append(convert(node))
        except TypeError as e:
            reason = f" ({e})" if str(e) else ""
            raise _invalid(f"input '{spec.name}' ({spec.dtype.name}) takes {expected}; "
                           f"{spec.name}{_where(where)} is {_json_text(node)}{reason}") from None

    walk(value, 0, ())
    if spec.dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    return np.array(leaves, dtype=spec.dtype.as_numpy_dtype).reshape(shape)


def _where(indices: tuple[int, ...]) -> str:
    return "".join(f"[{i}]" for i in indices)


def _size_text(node: Any) -> str:
    return f"{len(node)} elements" if isinstance(node, list) else "a single value"


def _json_text(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def array_to_json(name: str, array: np.ndarray) -> Any:
    """An output array as nested JSON lists; strings as JSON strings (``{"b64": ...}`` when not UTF-8)."""
    values = array.tolist()
    if array.dtype != object:
        return values
    as_b64 = name.endswith(BYTES_SUFFIX)

    def text(value: Any) -> Any:
        if isinstance(value, list):
            return [text(v) for v in value]
        if isinstance(value, bytes):
            if not as_b64:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value

    return text(values)


def columnar_inputs(signature: Signature, inputs: Any) -> dict[str, np.ndarray]:
    if not isinstance(inputs, dict) or _is_b64(inputs):
        spec = signature.sole_input()
        return {spec.name: array_from_json(spec, inputs)}
    signature.check_names(inputs)
    return {name: array_from_json(signature.inputs[name], value) for name, value in inputs.items()}


def row_inputs(signature: Signature, instances: Any) -> dict[str, np.ndarray]:
    """``{"instances": [...]}``: one value (or one object of named values) per example, stacked."""
    if not isinstance(instances, list) or not instances:
        raise _invalid("'instances' must be a non-empty list, one entry per example")
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if not any(named):
        spec = signature.sole_input()
        _check_row_input(signature, spec)
        return {spec.name: array_from_json(spec, instances)}
    if not all(named):
        raise _invalid("'instances' mixes objects and plain values: use one object of named inputs per example")
    names = list(instances[0])
    for i, instance in enumerate(instances):
        if set(instance) != set(names):
            raise _invalid(f"instance {i} names inputs {sorted(instance)} but instance 0 names {sorted(names)}: "
                           f"every instance must name the same inputs")
    signature.check_names(names)
    columns = {}
    for name in names:
        spec = signature.inputs[name]
        _check_row_input(signature, spec)
        columns[name] = array_from_json(spec, [instance[name] for instance in instances])
    return columns


def _check_row_input(signature: Signature, spec: TensorSpec) -> None:
    if spec.is_scalar:
        raise _invalid(f"input '{spec.name}' of {signature.model} is a single value per request, which the row "
                       f"form ({{\"instances\": [...]}}) cannot carry: send the columnar form "
                       f"{{\"inputs\": {{...}}}} to set it, or leave it out to use its default")


def columnar_outputs(outputs: Mapping[str, np.ndarray]) -> Any:
    """``{"outputs": ...}``'s value: named outputs, or the bare value when there is one (as TF Serving)."""
    if len(outputs) == 1:
        name, array = next(iter(outputs.items()))
        return array_to_json(name, array)
    return {name: array_to_json(name, array) for name, array in outputs.items()}


def row_outputs(outputs: Mapping[str, np.ndarray]) -> list:
    """``{"predictions": [...]}``'s value: one entry (an object when several outputs) per example."""
    sizes = {name: array.shape[0] if array.ndim else None for name, array in outputs.items()}
    batch = next(iter(sizes.values()), None)
    for name, size in sizes.items():
        if size is None or size != batch:
            raise _invalid(f"output '{name}' has no batch dimension matching the others, so it cannot be split "
                           f"into rows: send the columnar form {{\"inputs\": {{...}}}}")
    columns = {name: array_to_json(name, array) for name, array in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [{name: column[i] for name, column in columns.items()} for i in range(batch or 0)]


def parse_version(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit():
        raise _invalid(f"version must be a whole number, got '{text}'")
    return int(text)


# ------------------------------------------------------------------ the server


class ModelServer:
    """Serves an export folder over REST and gRPC until ``stop()``; usable as a context manager.

    ``port`` / ``grpc_port`` 0 picks a free port (see ``rest_url`` / ``grpc_target``);
    ``grpc_port=None`` turns gRPC off.
    """

    def __init__(self, export_dir: str | Path, host: str = "127.0.0.1", port: int = 8501,
                 grpc_port: int | None = 8500, poll_seconds: float = 2.0, max_batch: int = 256,
                 log: Callable[[str], None] = print):
        self.export_dir = Path(export_dir)
        self.host, self.port, self.grpc_port = host, port, grpc_port
        self.poll_seconds, self.max_batch = poll_seconds, max_batch
        self.log = log
        self.registry = ModelRegistry(self.export_dir, log)
        self._http: _HttpServer | None = None
        self._grpc: grpc.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # -- lifecycle

    def start(self) -> ModelServer:
        if not self.export_dir.is_dir():
            raise TfrecError(f"{self.export_dir} is not a folder: pass the output folder of `tfrec export`")
        if self.max_batch < 1:
            raise TfrecError(f"max_batch must be at least 1, got {self.max_batch}")
        try:  # ports first, so that a port in use fails before minutes of loading
            self._http = self._bind_http()
            if self.grpc_port is not None:
                self._grpc = self._bind_grpc()
            for missing in register_custom_ops():
                self.log(f"warning: cannot import {missing}: models that need its ops will not load")
            self.registry.refresh()
        except BaseException:
            self.stop()
            raise
        if self._grpc is not None:
            self._grpc.start()
        self._spawn(self._http.serve_forever, "rest", 0.25)
        self._spawn(self._poll, "poller")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._http is not None:
            if any(t.name == "tfrec-serve-rest" for t in self._threads):
                self._http.shutdown()  # waits for serve_forever to return: only when it runs
            self._http.close_connections()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1.0).wait()  # also releases the port of a server never started
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target: Callable, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=f"tfrec-serve-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            try:
                self.registry.refresh()
            except Exception as e:  # noqa: BLE001 (the poller must survive a bad folder state)
                self.log(f"warning: looking for new versions failed: {e}")

    def _bind_http(self) -> _HttpServer:
        try:
            return _HttpServer((self.host, self.port), self)
        except OSError as e:
            raise TfrecError(f"cannot listen for REST on {self.host}:{self.port}: {e.strerror or e}; "
                             f"pick another --port") from e

    def _bind_grpc(self) -> grpc.Server:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="tfrec-serve-grpc"),
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", MAX_BODY_BYTES),
                     ("grpc.max_send_message_length", MAX_BODY_BYTES)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        address = f"[{self.host}]:{self.grpc_port}" if ":" in self.host else f"{self.host}:{self.grpc_port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:  # grpcio's way of saying it could not bind
            bound = 0
        if not bound:
            raise TfrecError(f"cannot listen for gRPC on {address}: the port is in use, or the address is not "
                             f"this machine's; pick another --grpc-port (0 turns gRPC off)")
        self.grpc_port = bound
        return server

    # -- addresses

    @property
    def rest_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def grpc_target(self) -> str | None:
        if self._grpc is None:
            return None
        return f"[{self.host}]:{self.grpc_port}" if ":" in self.host else f"{self.host}:{self.grpc_port}"

    def describe(self) -> str:
        lines = [f"tfrec serve: {self.export_dir.resolve()}"]
        serving = self.registry.serving()
        for name in self.registry.names():
            if name in serving:
                lines.append(f"  {name:<22} version {serving[name].version}")
            else:
                failures = [f"version {v}: {s.error_message}" for v, s in self.registry.status(name) if s.error_message]
                lines.append(f"  {name:<22} not loaded ({'; '.join(failures) or 'no complete version yet'})")
        if not serving:
            lines.append("  (no models yet: waiting for `tfrec export` to write EXPORT/<name>/<version>/)")
        lines.append(f"REST  {self.rest_url}/v1/models/<name>:predict   (status: GET {self.rest_url}/v1/models/<name>)")
        if self.grpc_target:
            lines.append(f"gRPC  {self.grpc_target}   (tensorflow.serving.PredictionService, ModelService)")
        if not _is_loopback(self.host):
            lines.append(f"warning: listening on {self.host}, beyond this machine, with no authentication")
        lines.append(f"Looking for new versions every {self.poll_seconds:g}s; Ctrl-C stops.")
        return "\n".join(lines)

    # -- requests, shared by REST and gRPC

    def resolve(self, model: str, version: int | None, signature_name: str | None) -> tuple[Servable, Signature]:
        servable = self.registry.get(model, version)
        return servable, servable.signature(signature_name)

    def rest_predict(self, model: str, version: int | None, body: bytes) -> dict:
        request = _parse_json(body)
        unknown = sorted(set(request) - {"signature_name", "inputs", "instances"})
        if unknown:
            raise _invalid(f"unknown key '{unknown[0]}': a predict request holds \"inputs\" (columnar form) or "
                           f"\"instances\" (row form), and optionally \"signature_name\"")
        if ("inputs" in request) == ("instances" in request):
            raise _invalid("a predict request holds exactly one of \"inputs\" (columnar form) and \"instances\" "
                           "(row form)")
        _, signature = self.resolve(model, version, request.get("signature_name"))
        if "inputs" in request:
            outputs = signature.run(columnar_inputs(signature, request["inputs"]), self.max_batch)
            return {"outputs": columnar_outputs(outputs)}
        outputs = signature.run(row_inputs(signature, request["instances"]), self.max_batch)
        return {"predictions": row_outputs(outputs)}

    def rest_status(self, model: str, version: int | None) -> dict:
        proto = self.status_proto(model, version)
        return json_format.MessageToDict(proto, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def rest_metadata(self, model: str, version: int | None) -> dict:
        servable = self.registry.get(model, version)
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": json_format.MessageToDict(servable.metadata(),
                                                                    preserving_proto_field_name=True)},
        }

    def status_proto(self, model: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in self.registry.status(model, version):
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = error_codes_pb2.Code.Value(status.error_code)
            entry.status.error_message = status.error_message
        return response


def _parse_json(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise _invalid(f"malformed JSON: {e}") from None
    if not isinstance(request, dict):
        raise _invalid("the request body must be a JSON object")
    return request


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------ REST

_ROUTE = re.compile(r"^/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>[^/:]+))?"
                    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$")


class _HttpServer(ThreadingHTTPServer):
    """A thread per connection; remembers open connections so that ``stop()`` can close idle keep-alives."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 resets connections when many clients connect at once

    def __init__(self, address: tuple[str, int], app: ModelServer):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RestHandler)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfrec-serve"
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    server: _HttpServer

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args) -> None:  # quiet: a line per request is noise
        pass

    def _answer(self, method: str) -> None:
        try:
            status, payload = self._route(method)
        except ServingError as e:
            status, payload = HTTP_STATUS[e.code], {"error": e.message}
        except Exception as e:  # noqa: BLE001 (report, keep serving)
            traceback.print_exc(file=sys.stderr)
            status, payload = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {e}"}
        self._send(status, payload)

    def _route(self, method: str) -> tuple[HTTPStatus, dict]:
        path = self.path.split("?", 1)[0]
        match = _ROUTE.match(path)
        body = self._body()  # read whatever the request carries, so that the next one on the connection parses
        if match is None:
            raise ServingError(NOT_FOUND, f"no such endpoint: {method} {path} (try POST /v1/models/<name>:predict "
                                          f"or GET /v1/models/<name>)")
        app: ModelServer = self.server.app
        model, version = match["model"], parse_version(match["version"])
        verb = match["verb"]
        if verb is None:
            self._require(method, "GET", path)
            if match["metadata"]:
                return HTTPStatus.OK, app.rest_metadata(model, version)
            return HTTPStatus.OK, app.rest_status(model, version)
        self._require(method, "POST", path)
        if verb != "predict":
            code = UNIMPLEMENTED if verb in ("classify", "regress") else INVALID_ARGUMENT
            raise ServingError(code, f"this server answers :predict, not :{verb}")
        return HTTPStatus.OK, app.rest_predict(model, version, body)

    @staticmethod
    def _require(method: str, wanted: str, path: str) -> None:
        if method != wanted:
            raise _invalid(f"{path} takes {wanted}, not {method}")

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise _invalid("chunked request bodies are not supported: send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise _invalid("Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise _invalid(f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES}")
        return self.rfile.read(length)

    def _send(self, status: HTTPStatus, payload: dict) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


# ------------------------------------------------------------------ gRPC


def _spec_version(spec) -> int | None:
    if spec.version_label:
        raise _invalid(f"version labels are not supported (got '{spec.version_label}'): ask for a version number")
    return spec.version.value if spec.HasField("version") else None


def array_from_proto(spec: TensorSpec, proto) -> np.ndarray:
    if proto.dtype != spec.dtype.as_datatype_enum:
        got = tf.as_dtype(proto.dtype).name if proto.dtype else "no dtype"
        raise _invalid(f"input '{spec.name}' must be {spec.dtype.name}, got {got}")
    try:
        return tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 (a malformed TensorProto)
        raise _invalid(f"input '{spec.name}' is not a valid TensorProto: {e}") from None


def _grpc_call(context: grpc.ServicerContext, answer: Callable[[], Any]) -> Any:
    """Runs ``answer``; a ServingError (or any failure) aborts the call with its status and message."""
    try:
        return answer()
    except ServingError as e:
        context.abort(getattr(grpc.StatusCode, e.code), e.message)
    except Exception as e:  # noqa: BLE001 (report, keep serving)
        traceback.print_exc(file=sys.stderr)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, app: ModelServer):
        self.app = app

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        return _grpc_call(context, lambda: self._predict(request))

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        servable, signature = self.app.resolve(spec.name, _spec_version(spec), spec.signature_name)
        signature.check_names(request.inputs)
        arrays = {name: array_from_proto(signature.inputs[name], proto) for name, proto in request.inputs.items()}
        outputs = signature.run(arrays, self.app.max_batch)
        wanted = list(request.output_filter) or list(outputs)
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise _invalid(f"output_filter names unknown output '{unknown[0]}'; {spec.name} has "
                           f"{', '.join(outputs)}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for name in wanted:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return _grpc_call(context, lambda: self._metadata(request))

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
        fields = list(request.metadata_field) or ["signature_def"]
        if fields != ["signature_def"]:
            raise _invalid(f"metadata_field may only be 'signature_def', got {fields}")
        spec = request.model_spec
        servable = self.app.registry.get(spec.name, _spec_version(spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.metadata())
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, app: ModelServer):
        self.app = app

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        return _grpc_call(context, lambda: self.app.status_proto(spec.name, _spec_version(spec)))


# ------------------------------------------------------------------ entry point


def serve(export_dir: str | Path, host: str = "127.0.0.1", port: int = 8501, grpc_port: int = 8500,
          poll_seconds: float = 2.0, max_batch: int = 256) -> None:
    """``tfrec serve``: serves ``export_dir`` until Ctrl-C or SIGTERM (``grpc_port=0``: no gRPC)."""
    server = ModelServer(export_dir, host, port, grpc_port or None, poll_seconds, max_batch)
    server.start()
    print(server.describe(), flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("tfrec serve: stopping", flush=True)
        server.stop()
        signal.signal(signal.SIGTERM, previous)
