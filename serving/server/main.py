"""``tfrec serve``'s entry point: start the server, print what it serves, stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import threading

from serving.server.app import ModelServer
from serving.server.checks import Limits


def serve(export_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8501, grpc_port: int = 8500,
          poll_seconds: float = 2.0, page: bool = True, examples: str | os.PathLike | None = None,
          **limits) -> None:
    """Serves ``export_dir`` until Ctrl-C or SIGTERM (``grpc_port=0``: no gRPC).

    ``page``: answer ``GET /`` with the page to look at recommendations; ``examples``: a data
    folder of ``tfrec preprocess`` whose test users the page offers as sample customers.

    ``limits``: the ``serve`` section's limits (``max_batch``, ``max_history``, ``max_body_bytes``,
    ``max_connections``, ``request_timeout_seconds``, ``idle_timeout_seconds``).
    """
    server = ModelServer(export_dir, host, port, grpc_port or None, poll_seconds, limits=Limits(**limits),
                         page=page, examples=examples)
    server.start()
    print(server.describe(), flush=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # A shell starts background jobs with SIGINT ignored, and Python then leaves it ignored:
    # Ctrl-C (or a supervisor's SIGINT) must stop the server however it was started.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("tfrec serve: stopping", flush=True)
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
