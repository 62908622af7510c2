"""The page at ``GET /``: what the served models recommend, for a person to look at.

The page is a few static files (``static/``: HTML, JavaScript, CSS, an icon) shipped as
package data, so an installed wheel serves it offline. Its script asks the models
through the REST API every client uses (``POST /v1/models/<name>:predict``), under the
same limits, and reads only two more things from here::

    GET /page/info                    served models and versions, limits, the category field,
                                      sample customers (``tfrec serve --examples RUN/data``)
    GET /page/titles?id=A&id=B...     product texts of the given ids, from the export's items.tsv;
                                      at most serve.max_history ids a request; with
                                      ``tfrec serve --copy``, also their pitches (``tfrec copy``)

The page never loads the catalogue: it asks for the titles of the ids in front of it.
Every answer from here carries a Content-Security-Policy that lets the page load and
call nothing but this server, and run no inline script.
"""

from __future__ import annotations

import math
import mimetypes
import os
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from importlib import resources
from urllib.parse import parse_qs, urlsplit

import tensorflow as tf

from serving.copywriter.pitches import read_pitches
from serving.items import read_items
from serving.server.codec import dumps
from serving.server.rest import Reply
from serving.server.samples import SampleCustomer, sample_customers
from serving.server.status import invalid, over_limit
from tfrec import fileio
from tfrec.config import ServeConfig
from tfrec.layout import ITEM_TEXTS_FILE, MODEL_CARD_FILE

STATIC_FILES = ("index.html", "page.js", "page.css", "icon.svg")
PAGE_PREFIX = "/page/"
RECHECK_SECONDS = 2.0
"""How often the titles file is checked for a new version (a stat, not a read)."""
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Titles:
    """The export's ``items.tsv``: read at start (``preload``) or when first asked for, and again after the
    file changes (checked at most every ``RECHECK_SECONDS``)."""

    def __init__(self, export_dir: str):
        self.export_dir = export_dir
        self.path = fileio.join(export_dir, ITEM_TEXTS_FILE)
        self._texts: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = -math.inf
        self._lock = threading.Lock()

    def preload(self, log: Callable[[str], None]) -> None:
        """Reads the file in a thread of its own, so that the first page does not wait for a large catalogue."""

        def read() -> None:
            try:
                self._current()
            except Exception as e:  # noqa: BLE001 (a lookup reports it again, to the page that asks)
                log(f"warning: cannot read {self.path} for the page's titles: {e}")

        threading.Thread(target=read, name="tfrec-serve-titles", daemon=True).start()

    def lookup(self, ids: list[str]) -> dict[str, str]:
        """The texts of the known ``ids``; unknown ids are left out."""
        texts = self._current()
        return {i: texts[i] for i in ids if i in texts}

    def _current(self) -> dict[str, str]:
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= RECHECK_SECONDS:
                self._checked = now
                stamp = _stamp(self.path)
                if stamp != self._stamp:
                    self._texts = read_items(self.export_dir) if stamp else {}
                    self._stamp = stamp
            return self._texts


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = tf.io.gfile.stat(path)
    except tf.errors.NotFoundError:
        return None
    return stat.length, stat.mtime_nsec


class Page:
    """The page's routes, for a REST server to call with each ``GET`` outside ``/v1/``.

    Args:
        export_dir: the export folder served (its ``items.tsv`` and ``model_card.json``).
        limits: the server's limits; a titles lookup takes at most ``max_history`` ids.
        served: returns ``{model name: version}`` of the models in service now.
        examples: a data folder of ``tfrec preprocess`` whose test users are the sample customers.
        log: where warnings go.
        copy: a ``tfrec copy`` output (folder or file): the page shows each product's pitch.
    """

    def __init__(self, export_dir: str, limits: ServeConfig, served: Callable[[], dict[str, int]],
                 examples: str | os.PathLike | None = None, log: Callable[[str], None] = print,
                 copy: str | os.PathLike | None = None):
        self.export_dir, self.limits, self.served, self.log = export_dir, limits, served, log
        self.examples = os.fspath(examples) if examples is not None else None
        self.copy = os.fspath(copy) if copy is not None else None
        self.pitches: dict[str, dict] = {}
        self.titles = Titles(export_dir)
        self.samples: list[SampleCustomer] = []
        self._static = {name: (resources.files(__package__) / "static" / name).read_bytes() for name in STATIC_FILES}

    def load(self) -> None:
        """Reads the sample customers (a clear error when ``examples`` is not a data folder), and starts
        reading the titles."""
        if self.examples is not None:
            self.samples = sample_customers(self.examples, self.limits.max_history)
        if self.copy is not None:
            self.pitches = {item: {"pitch": r["pitch"], "source": r.get("source")}
                            for item, r in read_pitches(self.copy).items()}
        self.titles.preload(self.log)

    def __call__(self, method: str, target: str, body: bytes) -> Reply | None:
        """The page as a REST route (``serving.server.rest.Route``): it answers ``GET`` only."""
        return self.answer(target) if method == "GET" else None

    def answer(self, target: str) -> Reply | None:
        """The answer to ``GET target`` (path and query), or None when the path is not the page's."""
        parts = urlsplit(target)
        path = parts.path
        if path in ("/", "/index.html"):
            return self._file("index.html")
        if not path.startswith(PAGE_PREFIX):
            return None
        name = path[len(PAGE_PREFIX):]
        if name == "info":
            return _json(self.info())
        if name == "titles":
            ids = self._ids(parts.query)
            answer = {"titles": self.titles.lookup(ids)}
            if self.copy is not None:
                answer["pitches"] = {i: self.pitches[i] for i in ids if i in self.pitches}
            return _json(answer)
        if name in self._static and name != "index.html":
            return self._file(name)
        return None

    def info(self) -> dict:
        card = fileio.read_json(fileio.join(self.export_dir, MODEL_CARD_FILE), default={}) or {}
        return {
            "models": self.served(),
            "items": card.get("items"),
            "category_field": card.get("category_field"),
            "max_history": self.limits.max_history,
            "max_titles": self.limits.max_history,
            "samples": [sample.to_json() for sample in self.samples],
        }

    def _ids(self, query: str) -> list[str]:
        fields = parse_qs(query, keep_blank_values=True)
        unknown = sorted(set(fields) - {"id"})
        if unknown:
            raise invalid(f"unknown parameter {unknown[0]!r}: ask GET /page/titles?id=ITEM&id=ITEM...")
        ids = fields.get("id", [])
        if len(ids) > self.limits.max_history:
            raise over_limit(f"the titles lookup names {len(ids):,} ids", self.limits.max_history,
                             "serve.max_history")
        return ids

    def _file(self, name: str) -> Reply:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        return Reply(HTTPStatus.OK, content_type, self._static[name], HEADERS)


def _json(payload: dict) -> Reply:
    return Reply(HTTPStatus.OK, "application/json", dumps(payload), HEADERS)
