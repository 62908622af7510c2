"""Clients for TF Serving's REST and gRPC APIs: stock TF Serving and ``tfrec serve`` alike.

Both clients take named inputs (lists or numpy arrays) and give back a dict of numpy
arrays, string outputs as ``str`` arrays, so application code does not care which
protocol (or which server) answers::

    from serving.client import GrpcClient, RestClient

    rest = RestClient("http://127.0.0.1:8501")
    out = rest.predict("tfrec_retrieve", {"history": [["85123A", "71053"]], "k": 10})
    out["item_ids"][0]            # array of 10 item ids, best first

    with GrpcClient("127.0.0.1:8500") as grpc_client:
        grpc_client.predict("tfrec_retrieve", {"history": [["85123A", "71053"]]})

``predict_versioned`` also says which version of the model answered (gRPC:
``model_spec.version``; REST: ``tfrec serve``'s ``X-Model-Version`` header). A request
the server refuses raises ``ServingClientError`` carrying the server's own message and
its status (the HTTP status for REST, the gRPC status code's name for gRPC). JSON carries
no dtypes, so REST numbers come back as int64 / float64 arrays; gRPC arrays keep the
tensor's dtype. A gRPC request must carry the signature's dtypes: the gRPC client
converts Python values (lists, ints, ``[]``) to them, reading the model's metadata once
per model, and sends numpy arrays as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import requests

from serving.saved_model import DEFAULT_SIGNATURE
from serving.server.codec import from_json, is_b64, to_json
from serving.server.rest import VERSION_HEADER

if TYPE_CHECKING:
    from typing import Self


class ServingClientError(Exception):
    """A failed call: ``code`` is the HTTP status (REST) or gRPC status name; ``message`` the server's text."""

    def __init__(self, message: str, code: int | str | None = None):
        super().__init__(f"{message} [{code}]" if code is not None else message)
        self.message, self.code = message, code


# ------------------------------------------------------------------ REST


def _array_from_json(value: Any) -> np.ndarray:
    return np.asarray(from_json(value))


class RestClient:
    """TF Serving's REST API at ``base_url`` (e.g. ``http://127.0.0.1:8501``), over one keep-alive session."""

    def __init__(self, base_url: str = "http://127.0.0.1:8501", timeout: float = 30.0,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()
        self._output_names: dict[tuple[str, int | None, str], list[str]] = {}

    def _url(self, model: str, version: int | None, suffix: str = "") -> str:
        path = f"{self.base_url}/v1/models/{model}"
        return path + (f"/versions/{int(version)}" if version is not None else "") + suffix

    def _call(self, method: str, url: str, body: dict | None = None) -> Any:
        return self._exchange(method, url, body)[0]

    def _exchange(self, method: str, url: str, body: dict | None = None) -> tuple[Any, Mapping[str, str]]:
        """The answer's JSON and its headers; a ``ServingClientError`` for any other answer than 200 JSON."""
        try:
            response = self.session.request(method, url, json=body, timeout=self.timeout)
        except requests.RequestException as e:
            raise ServingClientError(f"cannot reach {url}: {e}", "UNAVAILABLE") from e
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code != 200:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise ServingClientError(message or response.text.strip() or response.reason, response.status_code)
        if payload is None:
            raise ServingClientError(f"{url} answered something other than JSON: {response.text[:200]!r}",
                                     response.status_code)
        return payload, response.headers

    def predict(self, model: str, inputs: Mapping[str, Any], version: int | None = None,
                signature_name: str | None = None) -> dict[str, np.ndarray]:
        """Columnar ``{"inputs": {...}}`` request; returns every output by name."""
        return self.predict_versioned(model, inputs, version, signature_name)[0]

    def predict_versioned(self, model: str, inputs: Mapping[str, Any], version: int | None = None,
                          signature_name: str | None = None) -> tuple[dict[str, np.ndarray], int | None]:
        """``predict``, and the version of the model that answered: ``tfrec serve``'s ``X-Model-Version``
        header (``None`` from a server that does not send it, such as TF Serving)."""
        body: dict[str, Any] = {"inputs": {name: to_json(value) for name, value in inputs.items()}}
        if signature_name:
            body["signature_name"] = signature_name
        payload, headers = self._exchange("POST", self._url(model, version, ":predict"), body)
        outputs = payload["outputs"]
        if not isinstance(outputs, dict) or is_b64(outputs):  # one output: TF Serving leaves its name out
            (name,) = self._single_output(model, version, signature_name or DEFAULT_SIGNATURE)
            outputs = {name: outputs}
        answered = headers.get(VERSION_HEADER, "")
        return ({name: _array_from_json(value) for name, value in outputs.items()},
                int(answered) if answered.isdigit() else None)

    def predict_rows(self, model: str, instances: list, version: int | None = None,
                     signature_name: str | None = None) -> list:
        """Row ``{"instances": [...]}`` request; returns ``predictions`` as the server sent them."""
        body: dict[str, Any] = {"instances": to_json(instances)}
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", self._url(model, version, ":predict"), body)["predictions"]

    def status(self, model: str, version: int | None = None) -> list[dict]:
        """``model_version_status``: ``[{"version": "1", "state": "AVAILABLE", "status": {...}}, ...]``."""
        return self._call("GET", self._url(model, version))["model_version_status"]

    def metadata(self, model: str, version: int | None = None) -> dict:
        """``{"model_spec": ..., "metadata": {"signature_def": {"signature_def": {name: SignatureDef}}}}``."""
        return self._call("GET", self._url(model, version, "/metadata"))

    def signature(self, model: str, version: int | None = None, name: str = DEFAULT_SIGNATURE) -> dict:
        """One SignatureDef as JSON: ``{"inputs": {...}, "outputs": {...}, "method_name": ...}``."""
        signatures = self.metadata(model, version)["metadata"]["signature_def"]["signature_def"]
        if name not in signatures:
            raise ServingClientError(f"{model} has no signature '{name}'; it has {sorted(signatures)}")
        return signatures[name]

    def _single_output(self, model: str, version: int | None, signature_name: str) -> list[str]:
        key = (model, version, signature_name)
        if key not in self._output_names:
            self._output_names[key] = list(self.signature(model, version, signature_name)["outputs"])
        return self._output_names[key]

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ gRPC


class GrpcClient:
    """TF Serving's gRPC API (``PredictionService``, ``ModelService``) at ``target`` (e.g. ``127.0.0.1:8500``)."""

    def __init__(self, target: str = "127.0.0.1:8500", timeout: float = 30.0,
                 max_message_bytes: int = 64 * 1024 * 1024):
        import grpc
        from tensorflow_serving.apis import (
            model_service_pb2_grpc,
            prediction_service_pb2_grpc,
        )

        self.target, self.timeout = target, timeout
        self._grpc = grpc
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._dtypes: dict[tuple[str, int | None, str], dict[str, int]] = {}

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except self._grpc.RpcError as e:
            raise ServingClientError(e.details() or str(e), e.code().name) from None

    @staticmethod
    def _model_spec(spec, model: str, version: int | None, signature_name: str | None = None) -> None:
        spec.name = model
        if version is not None:
            spec.version.value = int(version)
        if signature_name is not None:
            spec.signature_name = signature_name

    def predict(self, model: str, inputs: Mapping[str, Any], version: int | None = None,
                signature_name: str = DEFAULT_SIGNATURE, output_filter: list[str] | None = None
                ) -> dict[str, np.ndarray]:
        """``Predict``; Python values take the signature's dtypes, numpy arrays are sent as they are."""
        return self.predict_versioned(model, inputs, version, signature_name, output_filter)[0]

    def predict_versioned(self, model: str, inputs: Mapping[str, Any], version: int | None = None,
                          signature_name: str = DEFAULT_SIGNATURE, output_filter: list[str] | None = None
                          ) -> tuple[dict[str, np.ndarray], int | None]:
        """``predict``, and the version of the model that answered (the response's ``model_spec.version``)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, model, version, signature_name)
        dtypes = None
        for name, value in inputs.items():
            dtype = None
            if not isinstance(value, (np.ndarray, np.generic)):
                dtypes = dtypes if dtypes is not None else self._input_dtypes(model, version, signature_name)
                dtype = dtypes.get(name)
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        request.output_filter.extend(output_filter or [])
        response = self._call(self.predictions.Predict, request)
        answered = response.model_spec.version.value if response.model_spec.HasField("version") else None
        return {name: _decoded(tf.make_ndarray(proto)) for name, proto in response.outputs.items()}, answered

    def _input_dtypes(self, model: str, version: int | None, signature_name: str) -> dict[str, int]:
        """The signature's input dtypes (``DataType`` enums), asked once per model, version and signature."""
        key = (model, version, signature_name)
        if key not in self._dtypes:
            signatures = self._signature_defs(model, version).signature_def
            if signature_name not in signatures:
                raise ServingClientError(f"{model} has no signature '{signature_name}'; it has {sorted(signatures)}")
            self._dtypes[key] = {name: info.dtype for name, info in signatures[signature_name].inputs.items()}
        return self._dtypes[key]

    def status(self, model: str, version: int | None = None) -> list[dict]:
        """Same shape as ``RestClient.status``."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, model, version)
        response = self._call(self.models.GetModelStatus, request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)["model_version_status"]

    def metadata(self, model: str, version: int | None = None) -> dict:
        """Same shape as ``RestClient.metadata``."""
        from google.protobuf import json_format

        response, signatures = self._metadata(model, version)
        return {
            "model_spec": {"name": response.model_spec.name, "signature_name": response.model_spec.signature_name,
                           "version": str(response.model_spec.version.value)},
            "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
        }

    def _signature_defs(self, model: str, version: int | None):
        return self._metadata(model, version)[1]

    def _metadata(self, model: str, version: int | None):
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._model_spec(request.model_spec, model, version)
        request.metadata_field.append("signature_def")
        response = self._call(self.predictions.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return response, signatures

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decoded(array: np.ndarray) -> np.ndarray:
    """String tensors (object arrays of bytes) as ``str`` arrays, as the REST client returns them."""
    if array.dtype != object:
        return array
    try:
        return np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(array) if array.size else array.astype(str)
    except UnicodeDecodeError:
        return array
