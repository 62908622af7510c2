"""``ModelServer``: one export folder served over REST and gRPC, and the request path both share.

``port`` / ``grpc_port`` 0 picks a free port (see ``rest_url`` / ``grpc_target``);
``grpc_port=None`` turns gRPC off. ``limits`` bound what a request and a client may
cost (see ``checks.Limits``); they come from the config's ``serve`` section. ``page``
answers ``GET /`` with the page to look at recommendations (``serving.server.page``),
its sample customers read from the data folder ``examples``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import threading
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING

import grpc
from google.protobuf import json_format
from tensorflow.core.protobuf import error_codes_pb2
from tensorflow_serving.apis import get_model_status_pb2

from serving.saved_model import check_export_root, register_custom_ops
from serving.server import codec
from serving.server.checks import Limits, Signature
from serving.server.grpc_service import add_services
from serving.server.page import Page
from serving.server.registry import ModelRegistry, Servable
from serving.server.rest import RestServer
from serving.server.status import UNIMPLEMENTED, ServingError, invalid
from tfrec import fileio
from tfrec.errors import TfrecError

if TYPE_CHECKING:
    from typing import Self

_VERB_KIND = {"classify": "classification", "regress": "regression"}
_GRPC_WORKERS = 16


class ModelServer:
    """Serves an export folder over REST and gRPC until ``stop()``; usable as a context manager."""

    def __init__(self, export_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8501,
                 grpc_port: int | None = 8500, poll_seconds: float = 2.0, max_batch: int | None = None,
                 log: Callable[[str], None] = print, limits: Limits | None = None, page: bool = True,
                 examples: str | os.PathLike | None = None):
        self.export_dir = os.fspath(export_dir)
        self.host, self.port, self.grpc_port = host, port, grpc_port
        self.poll_seconds = poll_seconds
        limits = limits or Limits()
        self.limits = dataclasses.replace(limits, max_batch=max_batch) if max_batch is not None else limits
        self.log = log
        self.registry = ModelRegistry(self.export_dir, log)
        self.page = Page(self.export_dir, self.limits, self._versions, examples, log) if page else None
        self._http: RestServer | None = None
        self._grpc: grpc.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def max_batch(self) -> int:
        return self.limits.max_batch

    # -- lifecycle

    def start(self) -> ModelServer:
        check_export_root(self.export_dir)
        self.limits.validate()
        try:  # ports first, so that a port in use fails before minutes of loading
            self._http = self._bind_http()
            if self.grpc_port is not None:
                self._grpc = self._bind_grpc()
            if self.page is not None:
                self.page.load()
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

    def _bind_http(self) -> RestServer:
        try:
            return RestServer((self.host, self.port), self, self.limits, self.page)
        except OSError as e:
            raise TfrecError(f"cannot listen for REST on {self.host}:{self.port}: {e.strerror or e}; "
                             f"pick another --port") from e

    def _bind_grpc(self) -> grpc.Server:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=_GRPC_WORKERS, thread_name_prefix="tfrec-serve-grpc"),
            maximum_concurrent_rpcs=self.limits.max_connections,
            options=[("grpc.so_reuseport", 0),
                     ("grpc.max_receive_message_length", self.limits.max_body_bytes),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        add_services(server, self)
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

    def _versions(self) -> dict[str, int]:
        return {name: servable.version for name, servable in self.registry.serving().items()}

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

    @property
    def open_connections(self) -> int:
        """REST connections open now (idle keep-alives included)."""
        return self._http.open_connections if self._http is not None else 0

    def describe(self) -> str:
        where = self.export_dir if fileio.is_url(self.export_dir) else os.path.abspath(self.export_dir)
        lines = [f"tfrec serve: {where}"]
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
        if self.page is not None:
            page = self.page
            samples = f"; {len(page.samples)} sample customers from {page.examples}" if page.examples else ""
            lines.append(f"Page  {self.rest_url}/   (recommendations to look at{samples})")
        if self.grpc_target:
            lines.append(f"gRPC  {self.grpc_target}   (tensorflow.serving.PredictionService, ModelService)")
        limits = self.limits
        lines.append(f"Limits: batch {limits.max_batch}, history {limits.max_history}, body "
                     f"{limits.max_body_bytes:,} bytes, {limits.max_connections} connections, "
                     f"{limits.request_timeout_seconds:g}s to send a request")
        if not _is_loopback(self.host):
            lines.append(f"warning: listening on {self.host}, beyond this machine, with no authentication")
        lines.append(f"Looking for new versions every {self.poll_seconds:g}s; Ctrl-C stops.")
        return "\n".join(lines)

    # -- requests, shared by REST and gRPC

    @staticmethod
    def version_of(model: str, version: str | None, label: str | None) -> int | None:
        """The version a request names (None: the one in service); labels are refused as TF Serving does
        when none are configured."""
        if label:
            raise invalid(f"Unrecognized servable version label: {label} (tfrec serve keeps no version labels; "
                          f"ask for /versions/<number> or leave the version out for {model}'s newest)")
        if version is None:
            return None
        if not version.isdigit():
            raise invalid(f"Failed to convert version: {version} to numeric.")
        return int(version)

    def resolve(self, model: str, version: int | None, signature_name: str | None) -> tuple[Servable, Signature]:
        servable = self.registry.get(model, version)
        return servable, servable.signature(signature_name)

    @staticmethod
    def not_predict_error(signature: Signature, verb: str) -> ServingError:
        """What TF Serving answers for ``:classify`` / ``:regress`` on a signature of another kind."""
        wanted = f"tensorflow/serving/{verb}"
        if signature.method_name != wanted:
            kind = _VERB_KIND.get(verb, verb)
            return invalid(f"Expected {kind} signature method_name to be {wanted}. Was: {signature.method_name} "
                           f"({signature.model} has predict signatures: use :predict)")
        return ServingError(UNIMPLEMENTED, f"this server runs predict signatures only, not :{verb}")

    def rest_call(self, model: str, version: int | None, verb: str, body: bytes) -> dict:
        if verb == "predict":
            return self.rest_predict(model, version, body)
        if verb in _VERB_KIND:
            request = codec.parse_body(body)
            name = request.get("signature_name")
            _, signature = self.resolve(model, version, name if isinstance(name, str) else None)
            raise self.not_predict_error(signature, verb)
        raise invalid(f"Malformed request: POST :{verb} (this server answers :predict, :classify and :regress)")

    def rest_predict(self, model: str, version: int | None, body: bytes) -> dict:
        request = codec.parse_body(body)
        unknown = sorted(set(request) - {"signature_name", "inputs", "instances"})
        if unknown:
            raise invalid(f"unknown key '{unknown[0]}': a predict request holds \"inputs\" (columnar form) or "
                          f"\"instances\" (row form), and optionally \"signature_name\"")
        if ("inputs" in request) == ("instances" in request):
            raise invalid("a predict request holds exactly one of \"inputs\" (columnar form) and \"instances\" "
                          "(row form)")
        name = request.get("signature_name")
        if name is not None and not isinstance(name, str):
            raise invalid("'signature_name' key must be a string value.")
        _, signature = self.resolve(model, version, name)
        columnar = "inputs" in request
        values = (codec.columnar_values(signature, request["inputs"]) if columnar
                  else codec.row_values(signature, request["instances"]))
        signature.admit({key: codec.json_shape(value) for key, value in values.items()}, self.limits)
        arrays = {key: codec.array_from_json(signature.inputs[key], value) for key, value in values.items()}
        del request, values  # the parsed body can be large: let it go before the model runs
        outputs = signature.call(arrays)
        if columnar:
            return {"outputs": codec.columnar_outputs(outputs)}
        return {"predictions": codec.row_outputs(outputs)}

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


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
