"""A new version of several models, made visible as one: a journal of the renames, and rolling back a killed run.

Each model's version folder appears with one atomic rename (``serving.export.publish``),
but a version of an export is several folders (``EXPORT/<name>/<version>/``), renamed one
after another. A run killed between two renames, or before the files that describe the
version (``items.tsv``, ``models.config``, ``batching_parameters.txt``, the model card,
``removed_items.json``) are
written, would leave some models at the new version and the rest at the old one.

So a run first writes ``EXPORT/.publishing.json`` naming the version and its folders,
then renames, writes the describing files, and deletes the journal (``publish_version``).
While the journal is there, ``tfrec serve`` loads none of the folders it names
(``held_back``): it keeps serving the previous whole version. The next ``tfrec export``
or ``tfrec index --remove/--restore`` first rolls a journaled version back
(``recover``): each of its folders is renamed to a hidden temporary name, which no model
server loads, and then deleted, with any temporary folders killed runs left. TF Serving
does not read the journal: there a killed run's partial version is served from the moment
of its rename until the next run rolls it back.

Only one run publishes into a local export folder at a time: ``exclusive`` holds an
advisory lock on ``EXPORT/.publishing.lock`` from the roll-back to the end, and a second
``tfrec export`` or ``tfrec index --remove/--restore`` fails at once with exit code 4, naming
the run that holds it, instead of rolling back a version that run is still publishing. The system
drops the lock of a killed run. A bucket has no such lock: run one publisher at a time there.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Mapping

import tensorflow as tf

from tfrec import fileio
from tfrec.errors import ExportBusy

log = logging.getLogger(__name__)

JOURNAL_FILE = ".publishing.json"
"""In the export folder while a version is being published."""
LOCK_FILE = ".publishing.lock"
"""Locked by the run publishing into a local export folder; it names that run."""


@contextlib.contextmanager
def exclusive(export_dir: str | os.PathLike) -> Iterator[None]:
    """Holds the export folder's publishing lock (local folders; on a bucket, nothing).

    Raises:
        ExportBusy: when another run holds it (exit code 4).
    """
    export_dir = os.fspath(export_dir)
    if fileio.is_url(export_dir):
        yield
        return
    os.makedirs(export_dir, exist_ok=True)
    with open(os.path.join(export_dir, LOCK_FILE), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise ExportBusy(f"{export_dir}: another run is publishing into it ({lock.read().strip() or 'unknown'}); "
                             "run one `tfrec export` or `tfrec index --remove/--restore` at a time") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()} on {os.uname().nodename}\n")
        lock.flush()
        try:
            yield
        finally:
            if os.listdir(export_dir) == [LOCK_FILE]:  # nothing published: leave no folder behind
                os.remove(os.path.join(export_dir, LOCK_FILE))
            fcntl.flock(lock, fcntl.LOCK_UN)


def publishes(function: Callable) -> Callable:
    """Runs ``function`` holding the publishing lock of its ``export_dir`` argument (``exclusive``)."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def locked(*args, **kwargs):
        with exclusive(signature.bind(*args, **kwargs).arguments["export_dir"]):
            return function(*args, **kwargs)

    return locked


def journal(export_dir: str) -> dict | None:
    """The version being published now (or whose run was killed): ``{"version": N, "targets": {name: path}}``."""
    try:
        return fileio.read_json(fileio.join(export_dir, JOURNAL_FILE))
    except (OSError, ValueError, tf.errors.OpError):  # OpError: removed between the check and the read
        return None


def held_back(export_dir: str) -> dict[str, int]:
    """``{model name: version}`` of the folders a model server must not load yet."""
    entry = journal(export_dir)
    if not entry:
        return {}
    return {name: int(entry["version"]) for name in entry.get("targets", {})}


def publish_version(export_dir: str, version: int, staged: Mapping[str, str], targets: Mapping[str, str],
                    publish: Callable[[str, str], None], describe: Callable[[], None] = lambda: None) -> None:
    """Renames every staged model into place and writes what describes the version, under the journal.

    Args:
        export_dir: the export folder.
        version: the version published.
        staged: each model's staged SavedModel, by name.
        targets: each model's version folder, by name.
        publish: moves one staged SavedModel to its folder (``serving.export.publish``).
        describe: writes the files that describe the version, before the journal goes.
    """
    fileio.write_json(fileio.join(export_dir, JOURNAL_FILE), {"version": version, "targets": dict(targets)})
    for name, saved in staged.items():
        publish(saved, targets[name])
        log.info("  %-22s -> %s", name, targets[name])
    describe()
    fileio.remove(fileio.join(export_dir, JOURNAL_FILE))


def recover(export_dir: str) -> list[str]:
    """Rolls back a version whose publishing was killed, and deletes the temporary folders of killed runs;
    returns the version folders rolled back."""
    export_dir = os.fspath(export_dir)
    entry = journal(export_dir)
    rolled_back = []
    if entry:
        for target in entry.get("targets", {}).values():
            if fileio.exists(target):
                _remove_atomically(target)
                rolled_back.append(target)
        log.warning("rolled back version %s, whose publishing was interrupted: %d folder(s) removed",
                    entry.get("version"), len(rolled_back))
        fileio.remove(fileio.join(export_dir, JOURNAL_FILE))
    for folder in [export_dir, *(fileio.join(export_dir, name) for name in fileio.listdir(export_dir))]:
        fileio.remove_stale_temporaries(folder)
    return rolled_back


def _remove_atomically(folder: str) -> None:
    """Deletes a version folder so that no server sees it half deleted: locally it is renamed to a
    hidden temporary name first; on a bucket its ``saved_model.pb`` goes first (without it, the
    folder is no version)."""
    if fileio.is_url(folder):
        fileio.remove(fileio.join(folder, "saved_model.pb"))
        tf.io.gfile.rmtree(folder)
        return
    hidden = fileio.temporary_sibling(folder)
    os.rename(folder, hidden)
    shutil.rmtree(hidden, ignore_errors=True)
