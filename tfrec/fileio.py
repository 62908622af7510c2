"""Atomic writes: every file a stage writes appears whole or not at all.

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
import uuid
from typing import Any

import tensorflow as tf

log = logging.getLogger(__name__)

TEMP_MARK = ".tmp-"
"""Part of the name of every temporary sibling (files and folders)."""


def _split(path: str) -> tuple[str, str]:
    path = os.fspath(path)
    parent, name = posixpath.split(path.rstrip("/")) if "://" in path else os.path.split(path.rstrip(os.sep))
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


@contextlib.contextmanager
def staged(path: str | os.PathLike):
    """Yields a path to write a file or folder to, renamed to ``path`` when the block succeeds.

    For writers that need a path of their own (``keras.Model.save``, a SavedModel): the
    path is ``PARENT/.NAME.tmp-XXXX/NAME`` (same name, so writers that check the
    extension accept it), and nothing appears at ``path`` unless the block ends without
    an error.
    """
    path = os.fspath(path)
    folder = temporary_sibling(path)
    tf.io.gfile.makedirs(folder)
    inner = _join(folder, _split(path)[1])
    try:
        yield inner
        if tf.io.gfile.isdir(path) and tf.io.gfile.isdir(inner):
            tf.io.gfile.rmtree(path)
        tf.io.gfile.rename(inner, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(folder):
            tf.io.gfile.rmtree(folder)


def _join(folder: str, name: str) -> str:
    return posixpath.join(folder, name) if "://" in folder else os.path.join(folder, name)


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
