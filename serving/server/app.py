"""``ModelServer``: one export folder served over REST and gRPC: binding, threads and polling.

The requests themselves are answered by the protocol-neutral ``Service``
(``serving.server.service``): the server builds it and hands it to both front ends
(``rest``, ``grpc_service``), neither of which knows the server. ``grpc_port`` 0 turns gRPC
off; ``ANY_PORT`` (for REST, also 0) binds a free port (see ``rest_url`` / ``grpc_target``).
``limits`` (the config's ``serve`` section) bound what a request and a client may cost.
``page`` answers ``GET /`` with the page to look at recommendations
(``serving.server.page``), its sample customers read from the data folder ``examples``.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING

import grpc

from serving.saved_model import check_export_root, register_custom_ops
from serving.server.grpc_service import add_services
from serving.server.page import Page
from serving.server.registry import ModelRegistry
from serving.server.rest import ModelApi, RestServer, Route
from serving.server.service import Service
from tfrec import fileio
from tfrec.config import ServeConfig
from tfrec.errors import TfrecError

if TYPE_CHECKING:
    from typing import Self

ANY_PORT = -1
"""A port argument asking for any free port (tests, benchmarks); read the bound one from the server."""


class ModelServer:
    """Serves an export folder over REST and gRPC until ``stop()``; usable as a context manager.

    Args:
        export_dir: the export folder (``EXPORT/<name>/<version>/``).
        host: the address to bind.
        port: the REST port (0 or ``ANY_PORT``: a free one).
        grpc_port: the gRPC port; 0 turns gRPC off, ``ANY_PORT`` binds a free one.
        poll_seconds: how often to look for new versions.
        max_batch: overrides ``limits.max_batch``.
        log: where loading, failures and warnings are reported.
        limits: the ``serve`` settings whose limits bound requests and clients (default: the defaults).
        page: answer ``GET /`` with the page to look at recommendations.
        examples: a data folder whose test customers the page offers as samples.
        copy: a ``tfrec copy`` output whose pitches the page shows under the products.
    """

    def __init__(self, export_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8501,
                 grpc_port: int = 8500, poll_seconds: float = 2.0, max_batch: int | None = None,
                 log: Callable[[str], None] = print, limits: ServeConfig | None = None, page: bool = True,
                 examples: str | os.PathLike | None = None, copy: str | os.PathLike | None = None):
        self.export_dir = os.fspath(export_dir)
        self.host, self.port, self.grpc_port = host, port, grpc_port
        self.poll_seconds = poll_seconds
        limits = limits or ServeConfig()
        if max_batch is not None:
            limits = ServeConfig(**(limits.model_dump() | {"max_batch": max_batch}))
        self.limits = limits
        self.log = log
        self.service = Service(self.export_dir, self.limits, log)
        self.page = Page(self.export_dir, self.limits, self.service.versions, examples, log, copy) if page else None
        self._http: RestServer | None = None
        self._grpc: grpc.Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def registry(self) -> ModelRegistry:
        """The served models (the service's registry)."""
        return self.service.registry

    @property
    def max_batch(self) -> int:
        return self.limits.max_batch

    # -- lifecycle

    def start(self) -> ModelServer:
        check_export_root(self.export_dir)
        try:  # ports first, so that a port in use fails before minutes of loading
            self._http = self._bind_http()
            if self.grpc_port:
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

    def routes(self) -> list[Route]:
        """The REST routes, asked in turn: the page (``GET`` outside ``/v1/``), then TF Serving's API."""
        return [*([self.page] if self.page is not None else []), ModelApi(self.service)]

    def _bind_http(self) -> RestServer:
        port = 0 if self.port == ANY_PORT else self.port
        try:
            return RestServer((self.host, port), self.routes(), self.limits)
        except OSError as e:
            raise TfrecError(f"cannot listen for REST on {self.host}:{self.port}: {e.strerror or e}; "
                             f"pick another --port") from e

    def _bind_grpc(self) -> grpc.Server:
        server = grpc.server(
            # a thread per concurrent call (as REST has per connection), so that all of them can be batched
            futures.ThreadPoolExecutor(max_workers=self.limits.max_connections, thread_name_prefix="tfrec-serve-grpc"),
            maximum_concurrent_rpcs=self.limits.max_connections,
            options=[("grpc.so_reuseport", 0),
                     ("grpc.max_receive_message_length", self.limits.max_body_bytes),
                     ("grpc.max_send_message_length", 64 * 1024 * 1024)])
        add_services(server, self.service)
        port = 0 if self.grpc_port == ANY_PORT else self.grpc_port
        address = f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"
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
            samples += f"; {len(page.pitches):,} pitches from {page.copy}" if page.copy else ""
            lines.append(f"Page  {self.rest_url}/   (recommendations to look at{samples})")
        if self.grpc_target:
            lines.append(f"gRPC  {self.grpc_target}   (tensorflow.serving.PredictionService, ModelService)")
        limits = self.limits
        lines.append(f"Limits: batch {limits.max_batch}, history {limits.max_history}, body "
                     f"{limits.max_body_bytes:,} bytes, {limits.max_connections} connections, "
                     f"{limits.request_timeout_seconds:g}s to send a request")
        batching = limits.batching
        lines.append(f"Batching: up to {batching.max_batch_size} examples per call, {batching.batch_timeout_micros} µs "
                     f"timeout, {batching.num_batch_threads} threads, {batching.max_enqueued_batches} batches queued "
                     "per request kind" if batching.enabled else "Batching: off (each request is its own model call)")
        if not _is_loopback(self.host):
            lines.append(f"warning: listening on {self.host}, beyond this machine, with no authentication")
        lines.append(f"Looking for new versions every {self.poll_seconds:g}s; Ctrl-C stops.")
        return "\n".join(lines)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
