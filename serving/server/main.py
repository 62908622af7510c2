"""``tfrec serve``'s entry point: start the server, print what it serves, stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import threading

from serving.server.app import ModelServer
from tfrec.config import ServeConfig


def serve(export_dir: str | os.PathLike, settings: ServeConfig | None = None, page: bool = True,
          examples: str | os.PathLike | None = None, copy: str | os.PathLike | None = None) -> None:
    """Serves ``export_dir`` until Ctrl-C or SIGTERM.

    Args:
        export_dir: the export folder.
        settings: the config's ``serve`` section: address, ports (``grpc_port`` 0: no gRPC),
            polling and limits (default: the defaults).
        page: answer ``GET /`` with the page to look at recommendations.
        examples: a data folder of ``tfrec preprocess`` whose test users the page offers as
            sample customers.
        copy: a ``tfrec copy`` output: the page shows each product's pitch.
    """
    settings = settings or ServeConfig()
    server = ModelServer(export_dir, settings.host, settings.port, settings.grpc_port, settings.poll_seconds,
                         limits=settings, page=page, examples=examples, copy=copy)
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
