"""File IO on any filesystem, and atomic writes: every file a stage writes appears whole or not at all.

Every path a stage takes may be a local path or a URL of any filesystem TensorFlow knows
(``gs://``, ``s3://``, ``hdfs://``, the in-process ``ram://``). Stages go through the
small helpers here (:func:`join`, :func:`exists`, :func:`glob`, :func:`read_text`, ...),
never ``pathlib``, which turns ``gs://b/x`` into ``gs:/b/x``. Libraries that insist on a
local folder get one from :func:`local_staging` (written there, then copied over) or
:func:`local_copy` (a URL's file or folder copied to a local temporary folder).

A file is written to a hidden temporary sibling (``.NAME.tmp-XXXX``) and renamed over
its final name, so a reader (a resumed run, a model server polling a folder) never
sees half a file, and a kill leaves the previous version in place. Paths go through
``tf.io.gfile``, so the same calls work on local folders and on any filesystem
TensorFlow knows (``gs://``, ``s3://``, ``hdfs://``; there a rename is a copy and a
delete, which is as close to atomic as those stores allow).

A killed writer can leave a temporary sibling behind; :func:`remove_stale_temporaries`
clears them at the start of the next run. :func:`no_empty_folders_on_failure` keeps a
failed stage from leaving empty output folders behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"
"""Part of the name of every temporary sibling (files and folders)."""


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a file on a filesystem other than the local one (``scheme://``)."""
    return "://" in os.fspath(path) and not os.fspath(path).startswith("file://")


def join(path: str | os.PathLike, *parts: str) -> str:
    """``path`` joined with ``parts``: ``/`` for URLs, the local separator otherwise."""
    path = os.fspath(path)
    return posixpath.join(path, *parts) if is_url(path) else os.path.join(path, *parts)


def exists(path: str | os.PathLike) -> bool:
    return tf.io.gfile.exists(os.fspath(path))


def isdir(path: str | os.PathLike) -> bool:
    return tf.io.gfile.isdir(os.fspath(path))


def makedirs(path: str | os.PathLike) -> None:
    tf.io.gfile.makedirs(os.fspath(path))


def listdir(path: str | os.PathLike) -> list[str]:
    """The sorted names in folder ``path`` (none for a missing folder)."""
    path = os.fspath(path)
    if not tf.io.gfile.isdir(path):
        return []
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path))


def glob(pattern: str | os.PathLike) -> list[str]:
    """The sorted paths matching ``pattern``."""
    return sorted(tf.io.gfile.glob(os.fspath(pattern)))


def read_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``; ``FileNotFoundError`` naming it when there is no such file."""
    path = os.fspath(path)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"{path} not found") from None


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def remove(path: str | os.PathLike) -> None:
    """Deletes a file or a folder tree; nothing when there is none."""
    path = os.fspath(path)
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copies file ``source`` to ``target`` atomically, across filesystems."""
    source, target = os.fspath(source), os.fspath(target)
    parent, _ = _split(target)
    if parent:
        tf.io.gfile.makedirs(parent)
    staging = temporary_sibling(target)
    try:
        tf.io.gfile.copy(source, staging, overwrite=True)
        tf.io.gfile.rename(staging, target, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.remove(staging)
        raise


def copy_tree(source: str | os.PathLike, target: str | os.PathLike, last: str | None = None) -> None:
    """Copies folder ``source`` with everything under it into ``target`` (created), file by file;
    the file named ``last`` directly in ``source``, if any, after all others."""
    source, target = os.fspath(source).rstrip("/"), os.fspath(target)
    tf.io.gfile.makedirs(target)
    for root, folders, files in tf.io.gfile.walk(source):
        relative = os.fspath(root).rstrip("/")[len(source):].lstrip("/" + os.sep)
        parts = relative.replace(os.sep, "/").split("/") if relative else []
        for name in folders:
            tf.io.gfile.makedirs(join(target, *parts, name.rstrip("/")))
        for name in files:
            if parts or name != last:
                tf.io.gfile.copy(join(root, name), join(target, *parts, name), overwrite=True)
    if last is not None and tf.io.gfile.exists(join(source, last)):
        tf.io.gfile.copy(join(source, last), join(target, last), overwrite=True)


def replace_tree(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Puts folder ``source`` (local or not) at ``target``, replacing what was there.

    A local ``target`` is copied into a temporary sibling and renamed over (atomic). Object
    stores and TensorFlow's other filesystems have no folder rename (``ram://`` renames the
    folder's entry but not its files), so there the old folder is deleted and the new one
    copied file by file.
    """
    target = os.fspath(target)
    if is_url(target):
        remove(target)
        copy_tree(source, target)
        return
    staging = temporary_sibling(target)
    try:
        copy_tree(source, staging)
        if os.path.isdir(target):
            remove(target)
        os.replace(staging, target)
    except BaseException:
        remove(staging)
        raise


@contextlib.contextmanager
def local_staging(target: str | os.PathLike) -> Iterator[str]:
    """A local path for a library that writes only local files (a file or a folder of the
    same name as ``target``, in a temporary folder); on success, what was written there
    replaces ``target``, on any filesystem."""
    target = os.fspath(target)
    with tempfile.TemporaryDirectory(prefix="tfrec-staging-") as tmp:
        staged = os.path.join(tmp, _split(target)[1] or "staged")
        yield staged
        if os.path.isdir(staged):
            replace_tree(staged, target)
        else:
            copy(staged, target)


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[str]:
    """``path`` itself when local; else a local temporary copy of its file or folder tree."""
    path = os.fspath(path)
    if not is_url(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tfrec-copy-") as tmp:
        local = os.path.join(tmp, posixpath.basename(path.rstrip("/")) or "copy")
        if tf.io.gfile.isdir(path):
            copy_tree(path, local)
        else:
            tf.io.gfile.copy(path, local)
        yield local


def _split(path: str) -> tuple[str, str]:
    path = os.fspath(path)
    parent, name = posixpath.split(path.rstrip("/")) if is_url(path) else os.path.split(path.rstrip(os.sep))
    return parent, name


def temporary_sibling(path: str | os.PathLike) -> str:
    """A fresh hidden name beside ``path``: ``PARENT/.NAME.tmp-<random>``."""
    parent, name = _split(os.fspath(path))
    sibling = f".{name}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
    return posixpath.join(parent, sibling) if "://" in os.fspath(path) else os.path.join(parent, sibling)


def write_bytes(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` atomically (temporary sibling, then rename over ``path``)."""
    path = os.fspath(path)
    parent, _ = _split(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    staging = temporary_sibling(path)
    try:
        with tf.io.gfile.GFile(staging, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        tf.io.gfile.rename(staging, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.remove(staging)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1) -> None:
    """Writes ``value`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(value, indent=indent) + "\n")


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """Writes NumPy arrays as an ``.npz`` file at ``path`` atomically."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON value in ``path``, or ``default`` when there is no such file."""
    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        return default
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Deletes temporary siblings a killed writer left directly in ``folder``; returns their paths."""
    folder = os.fspath(folder)
    if not tf.io.gfile.isdir(folder):
        return []
    removed = []
    for name in tf.io.gfile.listdir(folder):
        name = name.rstrip("/")
        if name.startswith(".") and TEMP_MARK in name:
            path = posixpath.join(folder, name) if "://" in folder else os.path.join(folder, name)
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


def _folders(folder: str) -> set[str]:
    if not tf.io.gfile.isdir(folder):
        return set()
    return {os.fspath(root).rstrip("/") for root, _, _ in tf.io.gfile.walk(folder)}


@contextlib.contextmanager
def no_empty_folders_on_failure(folder: str | os.PathLike):
    """Runs a stage that writes into ``folder``; when it fails, removes the folders it created
    (``folder`` and any missing parent) and left without any file.

    So a stage that fails before writing anything leaves no empty output folder behind,
    while what it did write (the checkpoints an interrupted training resumes from, the
    rejected rows of a job that kept nothing) stays. Folders that existed before are kept.
    """
    folder = os.fspath(folder).rstrip("/")
    while not tf.io.gfile.exists(folder):  # watch the outermost folder the stage may create
        parent, _ = _split(folder)
        if not parent or parent == folder or tf.io.gfile.exists(parent):
            break
        folder = parent
    before = _folders(folder)
    try:
        yield
    except BaseException:
        for root in sorted(_folders(folder) - before, key=len, reverse=True):  # deepest first
            if not tf.io.gfile.listdir(root):
                tf.io.gfile.rmtree(root)
                log.info("removed %s: the failed stage wrote nothing there", root)
        raise
