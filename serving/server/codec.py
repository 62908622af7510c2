"""TF Serving's JSON codec: request bodies to named values, arrays to and from JSON.

One implementation for the server and for ``serving/client.py``. TF Serving's REST API
carries strings as JSON strings, or as ``{"b64": "..."}`` when they are not text (and
always for outputs whose name ends in ``_bytes``); numbers as JSON numbers (never NaN or
Infinity, which are not JSON); tensors as nested lists.

The server side reads a body in steps that keep a hostile one cheap: the body's size is
checked before it is read (``rest.py``), nesting deeper than ``MAX_JSON_DEPTH`` is
refused while parsing, each input's shape is taken from its nesting and checked against
the signature and the limits (``checks.py``) before its array is built.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.server.status import invalid

if TYPE_CHECKING:
    from serving.server.checks import Signature, TensorSpec

BYTES_SUFFIX = "_bytes"  # TF Serving writes string outputs with this suffix as {"b64": ...}
MAX_JSON_DEPTH = 64
"""Deepest nesting a request body may have (a predict request needs 5 levels)."""


# ------------------------------------------------------------------ JSON values (client and server)


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def bytes_to_json(value: bytes, as_b64: bool = False) -> Any:
    """Bytes as a JSON string when they are UTF-8 text (and ``as_b64`` is off), else ``{"b64": ...}``."""
    if not as_b64:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def to_json(value: Any) -> Any:
    """Numpy arrays and scalars, lists, dicts and bytes as JSON values."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return bytes_to_json(value)
    return value


def from_json(value: Any) -> Any:
    """A JSON value with every ``{"b64": ...}`` decoded to bytes."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if is_b64(value):
        return base64.b64decode(value["b64"])
    return value


def dumps(payload: Any) -> bytes:
    """Compact JSON; a NaN or infinity (which JSON cannot carry) raises ValueError."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


# ------------------------------------------------------------------ request bodies (server)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; send finite numbers")


def parse_body(body: bytes) -> dict:
    """A request body as a JSON object: malformed, too deeply nested or NaN-carrying bodies are refused."""
    try:
        request = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise invalid(f"the request body nests JSON deeper than this server reads ({MAX_JSON_DEPTH} levels)") \
            from None
    except (UnicodeDecodeError, ValueError) as e:
        raise invalid(f"malformed JSON: {e}") from None
    if not isinstance(request, dict):
        raise invalid("the request body must be a JSON object")
    if _depth(request) > MAX_JSON_DEPTH:
        raise invalid(f"the request body nests JSON deeper than this server reads ({MAX_JSON_DEPTH} levels)")
    return request


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (each level is walked once)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            return depth
        nested = []
        for node in level:
            if isinstance(node, list):
                nested.extend(n for n in node if isinstance(n, (list, dict)))
            elif isinstance(node, dict):
                nested.extend(n for n in node.values() if isinstance(n, (list, dict)))
        level = nested
    return depth


def json_shape(value: Any) -> tuple[int, ...]:
    """The shape a (nested) JSON list declares, read along its first elements."""
    shape, probe = [], value
    while isinstance(probe, list):
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    return tuple(shape)


def _leaf_converter(dtype) -> tuple[Callable[[Any], Any], str]:
    """A function checking and converting one JSON value to ``dtype`` (a ``tf.DType``), and what it expects."""
    if dtype.name == "string":
        def to_bytes(value):
            if isinstance(value, str):
                return value.encode("utf-8")
            if is_b64(value):
                try:
                    return base64.b64decode(value["b64"], validate=True)
                except binascii.Error as e:
                    raise TypeError(f"bad base64: {e}") from e
            raise TypeError
        return to_bytes, "strings"
    if dtype.name == "bool":
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
    raise invalid(f"this server cannot fill a {dtype.name} input from JSON")


def array_from_json(spec: TensorSpec, value: Any) -> np.ndarray:
    """A (nested) JSON list of ``spec``'s dtype as an array; errors name the input and the element.

    Call it once the shape ``json_shape(value)`` has been admitted: it walks that many levels.
    """
    convert, expected = _leaf_converter(spec.dtype)
    shape = json_shape(value)
    leaves: list = []

    def walk(node: Any, depth: int, where: tuple[int, ...]) -> None:
        if depth < len(shape):
            if not isinstance(node, list) or len(node) != shape[depth]:
                raise invalid(f"input '{spec.name}' is not rectangular: {spec.name}{_where(where)} has "
                              f"{_size_text(node)} where {spec.name}{_where(where[:-1] + (0,))} has {shape[depth]}"
                              + (" (pad histories to one length with empty ids \"\")" if spec.dtype.name == "string"
                                 else ""))
            for i, child in enumerate(node):
                walk(child, depth + 1, where + (i,))
            return
        if isinstance(node, list):
            raise invalid(f"input '{spec.name}' is not rectangular: {spec.name}{_where(where)} is a list "
                          f"where {spec.name}{_where(where[:-1] + (0,))} is a single value")
        try:
            leaves.append(convert(node))
        except TypeError as e:
            reason = f" ({e})" if str(e) else ""
            raise invalid(f"input '{spec.name}' ({spec.dtype.name}) takes {expected}; "
                          f"{spec.name}{_where(where)} is {_json_text(node)}{reason}") from None

    walk(value, 0, ())
    if spec.dtype.name == "string":
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
            return bytes_to_json(value, as_b64)
        return value

    return text(values)


def columnar_values(signature: Signature, inputs: Any) -> dict[str, Any]:
    """``{"inputs": ...}``'s named JSON values (a bare value fills the only required input)."""
    if not isinstance(inputs, dict) or is_b64(inputs):
        return {signature.sole_input().name: inputs}
    signature.check_names(inputs)
    return dict(inputs)


def row_values(signature: Signature, instances: Any) -> dict[str, list]:
    """``{"instances": [...]}``: one value (or one object of named values) per example, as columns."""
    if not isinstance(instances, list) or not instances:
        raise invalid("'instances' must be a non-empty list, one entry per example")
    named = [isinstance(i, dict) and not is_b64(i) for i in instances]
    if not any(named):
        spec = signature.sole_input()
        _check_row_input(signature, spec)
        return {spec.name: instances}
    if not all(named):
        raise invalid("'instances' mixes objects and plain values: use one object of named inputs per example")
    names = list(instances[0])
    for i, instance in enumerate(instances):
        if set(instance) != set(names):
            raise invalid(f"instance {i} names inputs {sorted(instance)} but instance 0 names {sorted(names)}: "
                          f"every instance must name the same inputs")
    signature.check_names(names)
    for name in names:
        _check_row_input(signature, signature.inputs[name])
    return {name: [instance[name] for instance in instances] for name in names}


def _check_row_input(signature: Signature, spec: TensorSpec) -> None:
    if spec.is_scalar:
        raise invalid(f"input '{spec.name}' of {signature.model} is a single value per request, which the row "
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
            raise invalid(f"output '{name}' has no batch dimension matching the others, so it cannot be split "
                          f"into rows: send the columnar form {{\"inputs\": {{...}}}}")
    columns = {name: array_to_json(name, array) for name, array in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [{name: column[i] for name, column in columns.items()} for i in range(batch or 0)]
