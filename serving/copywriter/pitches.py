"""Reading a ``tfrec copy`` output: item id -> its published pitch (for the page and ``tfrec batch``)."""

from __future__ import annotations

import json
import os

from tfrec import fileio
from tfrec.errors import TfrecError
from tfrec.layout import COPY_PREFIX


def read_pitches(path: str | os.PathLike) -> dict[str, dict]:
    """A ``tfrec copy`` output (its folder or one ``copy-*.jsonl`` file) -> item id -> record
    (the first record of an item, e.g. its plain pitch when personalised ones follow)."""
    path = os.fspath(path)
    files = [path] if not fileio.isdir(path) else sorted(fileio.glob(fileio.join(path, f"{COPY_PREFIX}-*.jsonl")))
    if not files:
        raise TfrecError(f"{path}: no {COPY_PREFIX}-*.jsonl file; is it the output folder of `tfrec copy`?")
    pitches: dict[str, dict] = {}
    for file in files:
        for number, line in enumerate(fileio.read_text(file).splitlines(), 1):
            try:
                record = json.loads(line)
                item, _ = str(record["item_id"]), str(record["pitch"])
                if item not in pitches or record.get("because_id") is None:
                    pitches[item] = record
            except (ValueError, KeyError, TypeError) as e:
                raise TfrecError(f"{file}, line {number}: not a copy record ({e})") from None
    return pitches
