"""The request path both front ends share, whatever the protocol.

``Service`` owns the models of an export folder (``registry``) and the ``serve`` limits,
and answers in protocol-neutral terms: which version a request names, the servable and
signature it resolves to, whether its inputs are admitted, the model's answer (merged
with concurrent requests' by ``batching``), the models' status and metadata. ``rest``
turns HTTP/JSON into these calls, ``grpc_service`` TensorProtos; the server (``app``)
builds the service and hands it to both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving.server.batching import Batcher
from serving.server.checks import Signature
from serving.server.registry import ModelRegistry, Servable
from serving.server.status import UNIMPLEMENTED, ServingError, invalid
from tfrec.config import ServeConfig

_VERB_KIND = {"classify": "classification", "regress": "regression"}


class Service:
    """The served models and the rules every request follows.

    Args:
        export_dir: the export folder (``EXPORT/<name>/<version>/``).
        limits: the ``serve`` settings; their limits bound every request.
        log: where loading and failures are reported.
    """

    def __init__(self, export_dir: str, limits: ServeConfig, log: Callable[[str], None] = print):
        self.export_dir, self.limits = export_dir, limits
        self.registry = ModelRegistry(export_dir, log)
        self.batcher = Batcher(limits.batching) if limits.batching.enabled else None

    @staticmethod
    def version_of(model: str, version: str | None, label: str | None) -> int | None:
        """The version a request names (``None``: the one in service); labels are refused as TF Serving
        does when none are configured."""
        if label:
            raise invalid(f"Unrecognized servable version label: {label} (tfrec serve keeps no version labels; "
                          f"ask for /versions/<number> or leave the version out for {model}'s newest)")
        if version is None:
            return None
        if not version.isdigit():
            raise invalid(f"Failed to convert version: {version} to numeric.")
        return int(version)

    def servable(self, model: str, version: int | None) -> Servable:
        """The loaded version ``version`` of ``model`` (``None``: the one in service)."""
        return self.registry.get(model, version)

    def resolve(self, model: str, version: int | None, signature_name: str | None) -> tuple[Servable, Signature]:
        """The servable and signature a request names."""
        servable = self.servable(model, version)
        return servable, servable.signature(signature_name)

    def admit(self, signature: Signature, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Checks a request's declared input shapes against ``signature`` and the limits; returns its batch."""
        return signature.admit(shapes, self.limits)

    def predict(self, signature: Signature, arrays: Mapping[str, np.ndarray], batch: int,
                deadline: float | None = None) -> dict[str, np.ndarray]:
        """The outputs for one admitted request: its values checked alone, then the model run, merged
        with concurrent requests when batching is on (``deadline``: ``time.monotonic()`` it may wait until)."""
        signature.check_values(arrays)
        if self.batcher is None:
            return signature.run(arrays)
        return self.batcher.run(signature, arrays, batch, deadline)

    @staticmethod
    def not_predict_error(signature: Signature, verb: str) -> ServingError:
        """What TF Serving answers for ``:classify`` / ``:regress`` on a signature of another kind."""
        wanted = f"tensorflow/serving/{verb}"
        if signature.method_name != wanted:
            kind = _VERB_KIND.get(verb, verb)
            return invalid(f"Expected {kind} signature method_name to be {wanted}. Was: {signature.method_name} "
                           f"({signature.model} has predict signatures: use :predict)")
        return ServingError(UNIMPLEMENTED, f"this server runs predict signatures only, not :{verb}")

    def status(self, model: str, version: int | None) -> get_model_status_pb2.GetModelStatusResponse:
        """The state of each version of ``model`` (or of ``version`` only), as TF Serving's ModelService says it."""
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, status in self.registry.status(model, version):
            entry = response.model_version_status.add()
            entry.version = number
            entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(status.state)
            entry.status.error_code = error_codes_pb2.Code.Value(status.error_code)
            entry.status.error_message = status.error_message
        return response

    def metadata(self, model: str, version: int | None) -> tuple[Servable, get_model_metadata_pb2.SignatureDefMap]:
        """The servable a metadata request names and its signatures (a ``SignatureDefMap``)."""
        servable = self.servable(model, version)
        return servable, servable.metadata()

    def versions(self) -> dict[str, int]:
        """``{model name: version}`` of the models in service now."""
        return {name: servable.version for name, servable in self.registry.serving().items()}
