"""TF Serving's REST API over HTTP/1.1: routes, bodies, and a bound on what each client may hold.

Routes (TF Serving's)::

    POST /v1/models/<name>[/versions/<v>]:predict    {"inputs": {...}} or {"instances": [...]}; the header
                                                     X-Model-Version names the version that answered
    POST /v1/models/<name>[/versions/<v>]:classify   400: the exported models have predict signatures
    GET  /v1/models/<name>[/versions/<v>]            version status
    GET  /v1/models/<name>[/versions/<v>]/metadata   signature inputs / outputs, dtypes, shapes
    .../labels/<label>...                            400: this server has no version labels

A thread per connection, at most ``max_connections`` of them: one more is answered 503
and closed at once. A connection must send each whole request (headers and body) within
``request_timeout_seconds`` and may wait idle between requests for
``idle_timeout_seconds``; a watchdog closes the ones that do not, so a client that sends
a byte now and then holds a connection for a bounded time and never holds up others.
The body's ``Content-Length`` must be a plain number within ``max_body_bytes``, checked
before the body is read.

The server answers each request through its ``routes``, asked in turn: ``ModelApi`` (the
routes above, over the protocol-neutral ``Service``) and, in front of it, the page to look
at recommendations (``serving.server.page``), all behind the same connection cap and
timeouts. Another set of paths is one more ``Route``: ``route(method, path, body)``
returning a ``Reply``, or ``None`` for a path that is not its own.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format

from serving.server import codec
from serving.server.codec import dumps
from serving.server.hosts import HostCheck
from serving.server.service import Service
from serving.server.status import NOT_FOUND, ServingError, invalid, over_limit
from tfrec.config import ServeConfig


@dataclasses.dataclass(frozen=True)
class Reply:
    """One answer to an HTTP request, written as it is."""

    status: HTTPStatus
    content_type: str
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


def json_reply(status: HTTPStatus, payload: dict, headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer (a model's output that is not JSON, such as NaN, becomes a 500)."""
    try:
        return Reply(status, "application/json", dumps(payload), headers or {})
    except ValueError as e:
        return Reply(HTTPStatus.INTERNAL_SERVER_ERROR, "application/json",
                     dumps({"error": f"the model's answer is not JSON: {e}"}))


Route = Callable[[str, str, bytes], "Reply | None"]
"""``route(method, path, body)``: the answer, or ``None`` when the path is not the route's.
A ``ServingError`` it raises is answered as JSON with its status."""

_ROUTE = re.compile(r"^/v1/models(?:/(?P<model>[^/:]+))?"
                    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
                    r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$")
VERSION_HEADER = "X-Model-Version"
"""A predict answer's header: the version of the model that computed it (gRPC: ``model_spec.version``)."""
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")
_IDLE, _READING, _WORKING = "idle", "reading", "working"
_DRAIN_BYTES, _DRAIN_SECONDS = 1 << 20, 1.0  # read and dropped after refusing a body, so the answer arrives
_WATCHDOG_SECONDS = 0.25


class ModelApi:
    """TF Serving's REST routes (the table above) over a ``Service``: a ``Route`` for paths under ``/v1/``."""

    def __init__(self, service: Service):
        self.service = service

    def __call__(self, method: str, path: str, body: bytes) -> Reply | None:
        path = path.split("?", 1)[0]
        if not path.lower().startswith("/v1/"):
            return None
        match = _ROUTE.match(path)
        if match is None:
            raise invalid(f"Malformed request: {method} {path} (try POST /v1/models/<name>:predict "
                          f"or GET /v1/models/<name>)")
        model, verb = match["model"], match["verb"]
        if not model:
            raise invalid("Missing model name in request.")
        version = self.service.version_of(model, match["version"], match["label"])
        if verb is None:
            _require(method, "GET", path)
            if match["metadata"]:
                return json_reply(HTTPStatus.OK, self.metadata(model, version))
            return json_reply(HTTPStatus.OK, self.status(model, version))
        _require(method, "POST", path)
        if match["metadata"]:
            raise invalid(f"Malformed request: {method} {path}")
        answer, served = self.call(model, version, verb, body)
        return json_reply(HTTPStatus.OK, answer, {VERSION_HEADER: str(served)})

    def call(self, model: str, version: int | None, verb: str, body: bytes) -> tuple[dict, int]:
        """``POST ...:<verb>``: ``:predict`` runs, and returns its answer and the version that gave it;
        ``:classify`` / ``:regress`` are answered as TF Serving does."""
        if verb == "predict":
            return self.predict(model, version, body)
        if verb in ("classify", "regress"):
            request = codec.parse_body(body)
            name = request.get("signature_name")
            _, signature = self.service.resolve(model, version, name if isinstance(name, str) else None)
            raise self.service.not_predict_error(signature, verb)
        raise invalid(f"Malformed request: POST :{verb} (this server answers :predict, :classify and :regress)")

    def predict(self, model: str, version: int | None, body: bytes) -> tuple[dict, int]:
        """A predict request in columnar (``inputs``) or row (``instances``) form, answered in the same form;
        also the version of the model that answered."""
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
        servable, signature = self.service.resolve(model, version, name)
        columnar = "inputs" in request
        values = (codec.columnar_values(signature, request["inputs"]) if columnar
                  else codec.row_values(signature, request["instances"]))
        batch = self.service.admit(signature, {key: codec.json_shape(value) for key, value in values.items()})
        arrays = {key: codec.array_from_json(signature.inputs[key], value) for key, value in values.items()}
        del request, values  # the parsed body can be large: let it go before the model runs
        outputs = self.service.predict(signature, arrays, batch)
        if columnar:
            return {"outputs": codec.columnar_outputs(outputs)}, servable.version
        return {"predictions": codec.row_outputs(outputs)}, servable.version

    def status(self, model: str, version: int | None) -> dict:
        return json_format.MessageToDict(self.service.status(model, version), preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def metadata(self, model: str, version: int | None) -> dict:
        servable, signatures = self.service.metadata(model, version)
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
        }


def _require(method: str, wanted: str, path: str) -> None:
    if method != wanted:
        raise invalid(f"{path} takes {wanted}, not {method}")



class RestServer(ThreadingHTTPServer):
    """The HTTP server: a thread per connection, a connection cap, and a watchdog for slow clients.

    Args:
        address: ``(host, port)`` to bind (port 0: any free port).
        routes: asked in turn for each request's answer (``Route``); a path none of them
            answers is a 404.
        limits: the ``serve`` settings (connections, body size, timeouts).
        hosts: the ``Host`` every request must name (default: ``limits.host``'s rule with
            ``limits.allowed_hosts``; ``serving.server.hosts``).
    """

    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 resets connections when many clients connect at once

    def __init__(self, address: tuple[str, int], routes: Sequence[Route], limits: ServeConfig,
                 hosts: HostCheck | None = None):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.routes, self.limits = list(routes), limits
        self.hosts = hosts or HostCheck(address[0], limits.allowed_hosts)
        self._connections: dict[socket.socket, tuple[str, float]] = {}  # socket -> (state, since)
        self._connections_lock = threading.Lock()
        self._closed = threading.Event()
        super().__init__(address, RestHandler)
        self._watchdog = threading.Thread(target=self._watch, name="tfrec-serve-rest-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            full = len(self._connections) >= self.limits.max_connections
            if not full:
                self._connections[request] = (_IDLE, time.monotonic())
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket) -> None:
        """Answers 503 on a connection over the cap and closes it, without a thread."""
        message = (f"this server holds {self.limits.max_connections} connections already "
                   f"(serve.max_connections); try again shortly")
        body = dumps({"error": message})
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
        try:
            request.settimeout(0.5)
            request.sendall(head + body)
        except OSError:
            pass
        self.shutdown_request(request)

    def mark(self, connection: socket.socket, state: str) -> None:
        with self._connections_lock:
            if connection in self._connections:
                self._connections[connection] = (state, time.monotonic())

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], OSError):
            return  # a client that went away, or one the watchdog dropped
        super().handle_error(request, client_address)

    def _watch(self) -> None:
        """Closes connections that take too long to send a request, or sit idle too long."""
        deadline = {_IDLE: self.limits.idle_timeout_seconds, _READING: self.limits.request_timeout_seconds}
        while not self._closed.wait(_WATCHDOG_SECONDS):
            now = time.monotonic()
            with self._connections_lock:
                late = [c for c, (state, since) in self._connections.items()
                        if state in deadline and now - since > deadline[state]]
            for connection in late:
                _shut(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            _shut(connection)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()


def _shut(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)  # a blocked read returns at once; the handler ends
    except OSError:
        pass


class RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfrec-serve"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    server: RestServer

    def setup(self) -> None:
        self.timeout = self.server.limits.request_timeout_seconds + self.server.limits.idle_timeout_seconds
        super().setup()

    def handle_one_request(self) -> None:
        """Waits (idle) for a request's first byte, then reads and answers it (reading, working)."""
        self.server.mark(self.connection, _IDLE)
        try:
            if not self.rfile.peek(1):
                self.close_connection = True
                return
        except (OSError, ValueError):
            self.close_connection = True
            return
        self.server.mark(self.connection, _READING)
        super().handle_one_request()

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args) -> None:  # quiet: a line per request is noise
        pass

    def _answer(self, method: str) -> None:
        try:
            self.server.hosts.check(self.request_version, self.headers.get_all("Host"))
            body = self._body()
        except ServingError as e:
            self._write(json_reply(e.http_status, {"error": e.message}))
            self._drain()
            return
        if body is None:  # the client went away, or was too slow
            self.close_connection = True
            return
        self.server.mark(self.connection, _WORKING)
        try:
            reply = self._route(method, body)
        except ServingError as e:
            reply = json_reply(e.http_status, {"error": e.message})
        except Exception as e:  # noqa: BLE001 (report, keep serving)
            traceback.print_exc(file=sys.stderr)
            reply = json_reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {e}"})
        self._write(reply)

    def _route(self, method: str, body: bytes) -> Reply:
        for route in self.server.routes:
            reply = route(method, self.path, body)
            if reply is not None:
                return reply
        path = self.path.split("?", 1)[0]
        raise ServingError(NOT_FOUND, f"no such endpoint: {method} {path} (try POST /v1/models/<name>:predict "
                                      f"or GET /v1/models/<name>)")

    def _body(self) -> bytes | None:
        """The request's body, its declared size checked first; None when the client stops sending."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise invalid("chunked request bodies are not supported: send a Content-Length")
        declared = self.headers.get_all("Content-Length") or ["0"]
        if len(set(declared)) != 1 or not _CONTENT_LENGTH.fullmatch(declared[0].strip()):
            self.close_connection = True
            raise invalid(f"Content-Length must be one whole number of bytes, got {', '.join(declared)!r}")
        length = int(declared[0])
        limit = self.server.limits.max_body_bytes
        if length > limit:
            self.close_connection = True
            raise over_limit(f"the request body is {length:,} bytes", limit, "serve.max_body_bytes")
        chunks, left = [], length
        while left:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _drain(self) -> None:
        """After refusing a body unread: reads (a bounded part of) it, so that the client gets the answer
        instead of a connection reset, then closes."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            deadline, drained = time.monotonic() + _DRAIN_SECONDS, 0
            while drained < _DRAIN_BYTES and time.monotonic() < deadline:
                chunk = self.connection.recv(1 << 16)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def _write(self, reply: Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:
            self.close_connection = True
