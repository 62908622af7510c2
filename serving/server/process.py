"""``tfrec serve`` in a child process on free loopback ports: for benchmarks, soak runs and tests.

The load generator then does not share the server's Python interpreter (its GIL, its
memory), and the server's memory can be read on its own (``rss_bytes`` / ``peak_rss_bytes``
from ``/proc``, so Linux only).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tfrec.errors import TfrecError

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``tfrec serve --export EXPORT`` on 127.0.0.1, free ports, ``settings`` as ``--set serve.KEY=VALUE``.

    Usable as a context manager; ``stop()`` sends Ctrl-C's signal and waits.
    """

    def __init__(self, export: str | os.PathLike, settings: dict | None = None, grpc: bool = True,
                 poll_seconds: float = 2.0):
        self.export = os.fspath(export)
        self.rest_port, self.grpc_port = free_port(), (free_port() if grpc else 0)
        overrides = [arg for key, value in (settings or {}).items() for arg in ("--set", f"serve.{key}={value}")]
        # A file, not a pipe: a pipe nobody reads would fill up and stall the server. Closed by stop().
        self.log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tfrec.app.cli", "serve", "--export", str(self.export), "--host", "127.0.0.1",
             "--port", str(self.rest_port), "--grpc-port", str(self.grpc_port),
             "--poll-seconds", str(poll_seconds), *overrides],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def wait_until_serving(self, *models: str, timeout: float = 300.0) -> ServerProcess:
        """Returns once every model in ``models`` is AVAILABLE (and the server has said it listens)."""
        from serving.client import RestClient, ServingClientError

        deadline = time.monotonic() + timeout
        with RestClient(self.rest_url, timeout=5) as client:
            waiting = list(models)
            while True:
                if self.process.poll() is not None:
                    raise TfrecError(f"tfrec serve exited with {self.process.returncode}:\n{self.output()[-3000:]}")
                try:
                    waiting = [m for m in waiting if client.status(m)[0]["state"] != "AVAILABLE"]
                except ServingClientError:
                    pass
                if not waiting and "Ctrl-C stops" in self.output():
                    return self
                if time.monotonic() > deadline:
                    raise TfrecError(f"tfrec serve did not serve {', '.join(waiting) or 'its models'} within "
                                     f"{timeout:g}s:\n{self.output()[-3000:]}")
                time.sleep(0.25)

    def _proc_status(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise TfrecError(f"/proc/{self.process.pid}/status has no {field}")

    def rss_bytes(self) -> int:
        """The server's resident memory now."""
        return self._proc_status("VmRSS")

    def peak_rss_bytes(self) -> int:
        """The server's highest resident memory so far."""
        return self._proc_status("VmHWM")

    def stop(self, timeout: float = 60.0) -> int:
        """Stops the server as Ctrl-C does; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        self.stop()
        self.log.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
