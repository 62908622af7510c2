"""TF Serving's gRPC API: ``PredictionService`` and ``ModelService``.

Each input's TensorProto is checked on its declared dtype and ``tensor_shape`` before
it is expanded, so a few bytes declaring millions of values cost nothing. A TensorProto
that holds every value (``tensor_content``, or one value per element) becomes an array
directly; any other goes through ``tf.make_ndarray``, which costs more than the rest of
reading a small request. Errors carry TF Serving's status codes: ``:classify`` / ``:regress`` /
``MultiInference`` on predict signatures, version labels and a metadata request that
names no field are INVALID_ARGUMENT, as TF Serving 2.20 answers them.
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.server.checks import TensorSpec
from serving.server.service import Service
from serving.server.status import ServingError, invalid

SIGNATURE_DEF_FIELD = "signature_def"
_VALUE_FIELDS = {
    types_pb2.DT_STRING: ("string_val", np.dtype(object)), types_pb2.DT_INT32: ("int_val", np.dtype(np.int32)),
    types_pb2.DT_INT64: ("int64_val", np.dtype(np.int64)), types_pb2.DT_FLOAT: ("float_val", np.dtype(np.float32)),
    types_pb2.DT_DOUBLE: ("double_val", np.dtype(np.float64)), types_pb2.DT_BOOL: ("bool_val", np.dtype(bool)),
}
"""The repeated field holding a TensorProto's values and their NumPy dtype, for the dtypes read without
``tf.make_ndarray``."""
_NO_DEADLINE_SECONDS = 1e6


def _spec_version(spec) -> int | None:
    version = str(spec.version.value) if spec.HasField("version") else None
    return Service.version_of(spec.name, version, spec.version_label or None)


def proto_shape(name: str, proto) -> tuple[int, ...]:
    """The shape a TensorProto declares (nothing is expanded)."""
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{name}' declares an unknown rank: give its shape")
    return tuple(d.size for d in proto.tensor_shape.dim)


def array_from_proto(spec: TensorSpec, proto) -> np.ndarray:
    """An admitted TensorProto as an array (its dtype checked; its shape already admitted)."""
    if proto.dtype != spec.dtype.as_datatype_enum:
        got = tf.as_dtype(proto.dtype).name if proto.dtype else "no dtype"
        raise invalid(f"input '{spec.name}' must be {spec.dtype.name}, got {got}")
    try:
        found = _complete_array(proto)
        return found if found is not None else tf.make_ndarray(proto)
    except Exception as e:  # noqa: BLE001 (a malformed TensorProto)
        raise invalid(f"input '{spec.name}' is not a valid TensorProto: {e}") from None


def _complete_array(proto) -> np.ndarray | None:
    """The array of a TensorProto that holds every one of its values (``tensor_content`` of the right size,
    or one value per element in its dtype's field), as ``tf.make_ndarray`` gives it; ``None`` for any other
    (a value repeated to fill the shape, another dtype), which ``tf.make_ndarray`` expands."""
    known = _VALUE_FIELDS.get(proto.dtype)
    if known is None:
        return None
    field, numpy_dtype = known
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = math.prod(shape)
    if proto.tensor_content:
        size = count * numpy_dtype.itemsize
        if numpy_dtype.kind == "O" or sys.byteorder != "little" or len(proto.tensor_content) != size:
            return None
        return np.frombuffer(proto.tensor_content, dtype=numpy_dtype).reshape(shape).copy()
    values = getattr(proto, field)
    if len(values) != count:
        return None
    return np.array(list(values), dtype=numpy_dtype).reshape(shape)


def fill_tensor_proto(proto, array: np.ndarray) -> None:
    """Writes an output array into an empty TensorProto, as ``tf.make_tensor_proto`` would but at a
    fraction of its cost (which is more than the rest of a small answer): strings as ``string_val``,
    numbers as their bytes in ``tensor_content``."""
    if array.dtype == object:
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(array.reshape(-1).tolist())
    else:
        proto.dtype = tf.as_dtype(array.dtype).as_datatype_enum
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size


def _grpc_call(context: grpc.ServicerContext, answer: Callable[[], Any]) -> Any:
    """Runs ``answer``; a ServingError (or any failure) aborts the call with its status and message."""
    try:
        return answer()
    except ServingError as e:
        context.abort(getattr(grpc.StatusCode, e.code), e.message)
    except Exception as e:  # noqa: BLE001 (report, keep serving)
        traceback.print_exc(file=sys.stderr)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error: {e}")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` over a ``Service``."""

    def __init__(self, service: Service):
        self.service = service

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        left = context.time_remaining()  # a call without a deadline has years left
        deadline = time.monotonic() + left if left is not None and left < _NO_DEADLINE_SECONDS else None
        return _grpc_call(context, lambda: self._predict(request, deadline))

    def _predict(self, request: predict_pb2.PredictRequest, deadline: float | None) -> predict_pb2.PredictResponse:
        spec = request.model_spec
        servable, signature = self.service.resolve(spec.name, _spec_version(spec), spec.signature_name)
        batch = self.service.admit(signature, {name: proto_shape(name, proto)
                                               for name, proto in request.inputs.items()})
        arrays = {name: array_from_proto(signature.inputs[name], proto) for name, proto in request.inputs.items()}
        outputs = self.service.predict(signature, arrays, batch, deadline)
        wanted = list(request.output_filter) or list(outputs)
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise invalid(f"output_filter names unknown output '{unknown[0]}'; {spec.name} has "
                          f"{', '.join(outputs)}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
        for name in wanted:
            fill_tensor_proto(response.outputs[name], outputs[name])
        return response

    def Classify(self, request, context):
        return _grpc_call(context, lambda: self._not_predict(request, "classify"))

    def Regress(self, request, context):
        return _grpc_call(context, lambda: self._not_predict(request, "regress"))

    def MultiInference(self, request, context):
        def answer():
            if not request.tasks:
                raise invalid("Inference tasks are empty.")
            task = request.tasks[0]
            return self._not_predict(task, task.method_name.rsplit("/", 1)[-1] or "inference")

        return _grpc_call(context, answer)

    def _not_predict(self, request, verb: str):
        spec = request.model_spec
        _, signature = self.service.resolve(spec.name, _spec_version(spec), spec.signature_name)
        raise self.service.not_predict_error(signature, verb)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return _grpc_call(context, lambda: self._metadata(request))

    def _metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest):
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != SIGNATURE_DEF_FIELD:
                raise invalid(f"Metadata field {name} is not supported")
        spec = request.model_spec
        servable, signatures = self.service.metadata(spec.name, _spec_version(spec))
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService`` (version status) over a ``Service``."""

    def __init__(self, service: Service):
        self.service = service

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                       context) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        return _grpc_call(context, lambda: self.service.status(spec.name, _spec_version(spec)))


def add_services(server: grpc.Server, service: Service) -> None:
    """Adds TF Serving's two gRPC services, answering from ``service``, to ``server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(service), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(service), server)
