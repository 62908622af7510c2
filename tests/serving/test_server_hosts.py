"""The REST server answers only requests that name one of its own hosts (no DNS rebinding).

Requests go over raw sockets, so that each sends exactly the ``Host`` header (or none) it
names, to a server on 127.0.0.1 serving an empty export folder: the check comes before any
model is asked, and the page and the model API are refused alike.
"""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.server import ANY_PORT, ModelServer
from serving.server.hosts import HostCheck
from tfrec.config import ServeConfig

ALLOWED = "recs.shop.internal"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    export = tmp_path_factory.mktemp("hosts") / "export"
    export.mkdir()
    with ModelServer(export, port=ANY_PORT, grpc_port=0, limits=ServeConfig(allowed_hosts=[ALLOWED]),
                     log=lambda _: None) as running:
        yield running


def ask(url: str, host: str | None, path: str = "/v1/models/tfrec_retrieve", version: str = "HTTP/1.1",
        extra: str = "") -> tuple[int, dict | str]:
    """``GET path`` with the ``Host`` header ``host`` (None: no header); the status and the JSON body."""
    address, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    head = f"GET {path} {version}\r\n" + (f"Host: {host}\r\n" if host is not None else "") + extra
    with socket.create_connection((address.strip("[]"), int(port)), timeout=30) as connection:
        connection.sendall(f"{head}Connection: close\r\n\r\n".encode("latin-1"))
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks).decode("utf-8")
    status = int(answer.split(" ", 2)[1])
    body = answer.split("\r\n\r\n", 1)[1]
    return status, (json.loads(body) if body.startswith("{") else body)


def test_loopback_names_and_the_bound_address_are_answered(server):
    port = server.rest_url.rsplit(":", 1)[1]
    for host in ("localhost", f"localhost:{port}", "LocalHost.", "page.localhost:8501", "127.0.0.1",
                 f"127.0.0.1:{port}", "127.8.9.10", "[::1]", f"[::1]:{port}", ALLOWED, f"{ALLOWED}:{port}"):
        status, body = ask(server.rest_url, host)
        assert status == 404 and "unknown model 'tfrec_retrieve'" in body["error"], host  # answered by the API
    assert ask(server.rest_url, f"127.0.0.1:{port}", path="/")[0] == 200


def test_other_hosts_are_refused_before_any_route_and_counted(server):
    refused = server._http.hosts.refused
    for host in ("evil.example", f"evil.example:{server.rest_url.rsplit(':', 1)[1]}", "127.0.0.1.evil.example",
                 "localhost.evil.example", "10.0.0.7", "[::ffff:10.0.0.7]", "recs.shop.internal.evil.example", ""):
        for path in ("/v1/models/tfrec_retrieve", "/", "/page/info"):
            status, body = ask(server.rest_url, host, path=path)
            assert status == 403, (host, path)
            assert "does not answer for Host" in body["error"] and "--allow-host" in body["error"], (host, path)
    assert server._http.hosts.refused == refused + 24
    status, body = ask(server.rest_url, "evil.example", path="/v1/models/x:predict")
    assert status == 403 and "'evil.example'" in body["error"]


def test_a_request_without_one_host_is_answered_as_http_says(server):
    status, body = ask(server.rest_url, None)
    assert status == 400 and "must name its Host" in body["error"]
    status, body = ask(server.rest_url, "localhost", extra="Host: evil.example\r\n")
    assert status == 400 and "2 Host headers" in body["error"]
    status, body = ask(server.rest_url, None, version="HTTP/1.0")  # no browser sends this: a tool
    assert status == 404 and "unknown model" in body["error"]


def test_a_server_bound_to_every_address_answers_any_address_but_no_other_name():
    check = HostCheck("0.0.0.0")
    assert check.allows("192.0.2.10:8501") and check.allows("[2001:db8::1]") and check.allows("localhost")
    assert not check.allows("evil.example") and not check.allows("192.0.2.10.evil.example")
    bound = HostCheck("192.0.2.10", ["recs"])
    assert bound.allows("192.0.2.10:8501") and bound.allows("recs") and bound.allows("127.0.0.1")
    assert not bound.allows("192.0.2.11") and not bound.allows("recs.example")


def test_tfrec_serve_allow_host_adds_a_name(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    command = [sys.executable, "-m", "tfrec.app.cli", "serve", "--export", str(export), "--port", "0",
               "--grpc-port", "0", "--no-page", "--allow-host", ALLOWED, "--allow-host", "other.internal"]
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (found := re.search(r"REST  (http://\S+)/v1/models", "".join(lines))):
            line = process.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = found.group(1)
        for host in (ALLOWED, "other.internal:1234", "localhost"):
            assert ask(url, host)[0] == 404, host
        status, body = ask(url, "evil.example")
        assert status == 403 and "--allow-host evil.example" in body["error"]
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
