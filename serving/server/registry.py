"""The models of an export folder: which version of each is in service, and every version's status.

Like TF Serving with its default version policy (``latest``), each model serves its
newest complete version. ``refresh()`` (run by the server's poller) loads a newer
version while the one in service keeps answering; a version that fails to load is
reported in the model's status and retried only once its files change. When the
version in service disappears from disk, the newest remaining version takes its place;
a model folder that disappears is no longer served.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2, meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.publishing import held_back
from serving.saved_model import DEFAULT_SIGNATURE, is_version_dir, load_saved_model
from serving.server.checks import Signature
from serving.server.status import NOT_FOUND, ServingError, first_line, invalid
from tfrec import fileio


@dataclass
class Servable:
    """One loaded version of one model."""

    name: str
    version: int
    path: str
    signatures: dict[str, Signature]
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    loaded: Any = field(repr=False, default=None)  # keeps the variables the signatures read alive

    def signature(self, name: str | None) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise invalid(f"{self.name} has no signature '{name}'; it has {', '.join(sorted(self.signatures))}")
        return self.signatures[name]

    def metadata(self) -> get_model_metadata_pb2.SignatureDefMap:
        defs = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signature_defs.items():
            defs.signature_def[key].CopyFrom(value)
        return defs


def _catalogue_facts(loaded: Any) -> tuple[np.ndarray | None, int | None]:
    """The item ids a model knows (sorted) and how many categorical fields it reads, where it says."""
    ids = getattr(getattr(loaded, "catalogue", None), "item_ids", None)
    known = np.unique(np.array(ids.numpy().tolist(), dtype=bytes)) if isinstance(ids, tf.Variable) else None
    tables = getattr(loaded, "categorical_tables", None)
    return known, (len(tables) if tables is not None else None)


def load_servable(name: str, version_dir: str) -> Servable:
    loaded, defs = load_saved_model(version_dir)
    known_ids, categorical_fields = _catalogue_facts(loaded)
    signatures = {key: Signature.from_def(name, key, defs[key], function, known_ids, categorical_fields)
                  for key, function in loaded.signatures.items() if key in defs}
    return Servable(name, int(os.path.basename(version_dir.rstrip("/"))), version_dir, signatures, defs, loaded)


@dataclass
class VersionStatus:
    state: str  # AVAILABLE, LOADING or END (unloaded, or failed to load)
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: tuple = ()  # of the files, for a version that failed: retried when they change


def _versions_on_disk(model_dir: str) -> list[int]:
    """The model's complete versions (a SavedModel inside), newest first."""
    try:
        return sorted((int(name) for name in fileio.listdir(model_dir)
                       if name.isdigit() and is_version_dir(fileio.join(model_dir, name))), reverse=True)
    except (OSError, tf.errors.OpError):
        return []


def _fingerprint(version_dir: str) -> tuple:
    """The names and sizes of a version's files (on any filesystem)."""
    paths = [fileio.join(folder, name) for folder, _, files in tf.io.gfile.walk(version_dir) for name in files]
    return tuple(sorted((path[len(version_dir):], tf.io.gfile.stat(path).length) for path in paths))


def release_memory() -> None:
    """Frees what versions taken out of service held: Python's reference cycles first, then the C heap's
    free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing). Without it the heap
    keeps each swap's peak (two versions loaded at once), and the server's memory grows with every swap."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def _same_files(served: str, version_dir: str) -> bool:
    """Whether every file of ``version_dir`` is the file of the same name in ``served`` (hard links, as a
    catalogue change writes the models that return no ids): the same model, nothing to load. Local
    folders only."""
    if fileio.is_url(served) or fileio.is_url(version_dir):
        return False

    def files(folder: str) -> dict[str, tuple[int, int]]:
        found = {}
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                stat = os.stat(path)
                found[os.path.relpath(path, folder)] = (stat.st_dev, stat.st_ino)
        return found

    try:
        mine = files(served)
        return bool(mine) and mine == files(version_dir)
    except OSError:
        return False


def _error_code(error: Exception) -> str:
    if isinstance(error, tf.errors.OpError):
        return error_codes_pb2.Code.Name(error.error_code)
    return "UNKNOWN"


class ModelRegistry:
    """The models of an export folder: the servable in service for each, and every version's status.

    Args:
        export_dir: the export folder (``EXPORT/<name>/<version>/``); ``refresh`` reads it.
        log: where loading and failures are reported (default: this module's logger).
    """

    def __init__(self, export_dir: str | os.PathLike, log: Callable[[str], None] | None = None):
        self.export_dir = os.fspath(export_dir)
        self.log = log or logging.getLogger(__name__).info
        self._lock = threading.Lock()
        self._serving: dict[str, Servable] = {}
        self._status: dict[str, dict[int, VersionStatus]] = {}
        self._release_pending = False

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._status)

    def serving(self) -> dict[str, Servable]:
        with self._lock:
            return dict(self._serving)

    def refresh(self) -> list[Servable]:
        """Brings every model to its newest loadable version; returns the versions loaded."""
        names = [name for name in fileio.listdir(self.export_dir)
                 if not name.startswith(".") and fileio.isdir(fileio.join(self.export_dir, name))]
        on_disk = {name: _versions_on_disk(fileio.join(self.export_dir, name)) for name in names}
        held = held_back(self.export_dir)  # read after listing: a version listed while journaled is held
        loaded = [s for s in (self._refresh_model(name, [v for v in on_disk[name] if held.get(name) != v])
                              for name in names) if s is not None]
        gone = set(self.serving()) - set(names)
        for name in gone:
            self._retire(name, f"its folder {fileio.join(self.export_dir, name)} is gone")
        if loaded or gone or self._release_pending:
            # Now, and once more at the next poll, when the requests that held the old versions are done.
            release_memory()
            self._release_pending = bool(loaded or gone)
        return loaded

    def _refresh_model(self, name: str, versions: list[int]) -> Servable | None:
        """Brings ``name`` to the newest loadable of ``versions`` (newest first)."""
        model_dir = fileio.join(self.export_dir, name)
        with self._lock:
            current = self._serving.get(name)
            statuses = dict(self._status.setdefault(name, {}))
        gone = current is not None and current.version not in versions
        if gone:
            self.log(f"  {name}: version {current.version} is gone from disk; "
                     f"falling back to the newest remaining version")
        for version in versions:
            if current is not None and not gone and version <= current.version:
                return None
            path = fileio.join(model_dir, str(version))
            fingerprint = _fingerprint(path)
            status = statuses.get(version)
            if status is not None and status.error_code != "OK" and status.fingerprint == fingerprint:
                continue  # failed before and unchanged since
            servable = self._load(name, version, path, fingerprint, None if gone else current)
            if servable is not None:
                return servable
        if gone:
            self._retire(name, "no other version loads")
        return None

    def _retire(self, name: str, why: str) -> None:
        with self._lock:
            servable = self._serving.pop(name, None)
            if servable is not None:
                self._status[name][servable.version] = VersionStatus("END")
        if servable is not None:
            self.log(f"  {name}: no longer served ({why})")

    def _load(self, name: str, version: int, path: str, fingerprint: tuple,
              current: Servable | None = None) -> Servable | None:
        """Puts ``version`` in service: ``current``'s loaded model when the version's files are its files
        (``_same_files``), else the version loaded."""
        with self._lock:
            self._status[name][version] = VersionStatus("LOADING")
        try:
            same = current is not None and _same_files(current.path, path)
            servable = dataclasses.replace(current, version=version, path=path) if same else load_servable(name, path)
        except Exception as e:  # noqa: BLE001 (any failure leaves the version in service answering)
            message = first_line(str(e))
            with self._lock:
                self._status[name][version] = VersionStatus("END", _error_code(e), message, fingerprint)
            self.log(f"  {name} version {version} failed to load: {message}")
            return None
        with self._lock:
            previous = self._serving.get(name)
            self._serving[name] = servable
            self._status[name][version] = VersionStatus("AVAILABLE")
            if previous is not None:
                self._status[name][previous.version] = VersionStatus("END")
        if previous is not None:
            self.log(f"  {name}: now serving version {version} (was {previous.version})")
        return servable

    def get(self, name: str, version: int | None = None) -> Servable:
        with self._lock:
            servable = self._serving.get(name)
            statuses = dict(self._status.get(name, {}))
            known = sorted(self._status)
        if name not in known:
            raise ServingError(NOT_FOUND, f"unknown model '{name}'; this server has: {', '.join(known) or 'none'}")
        if servable is None:
            failures = "; ".join(f"version {v}: {s.error_message}" for v, s in statuses.items() if s.error_message)
            detail = f" ({failures})" if failures else ""
            raise ServingError(NOT_FOUND, f"model '{name}' has no version loaded{detail}")
        if version is not None and version != servable.version:
            raise ServingError(NOT_FOUND, f"model '{name}' has no version {version} loaded; "
                                          f"it serves version {servable.version}")
        return servable

    def status(self, name: str, version: int | None = None) -> list[tuple[int, VersionStatus]]:
        """``(version, status)`` of every version tried, newest first (only ``version`` if given)."""
        with self._lock:
            if name not in self._status:
                known = ", ".join(sorted(self._status)) or "none"
                raise ServingError(NOT_FOUND, f"unknown model '{name}'; this server has: {known}")
            statuses = sorted(self._status[name].items(), reverse=True)
        if version is not None:
            statuses = [(v, s) for v, s in statuses if v == version]
            if not statuses:
                raise ServingError(NOT_FOUND, f"model '{name}' has no version {version}")
        return statuses
