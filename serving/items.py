"""``items.tsv``: item ids and their product texts, beside an index and an export; and
``removed_items.json``, the ids no exported model returns.

People and scripts read results by product text; the index folder keeps it for the
products it holds, the export copies it for ``tfrec recommend`` and the run report.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable

from tfrec import fileio
from tfrec.errors import TfrecError
from tfrec.layout import ITEM_TEXTS_FILE, REMOVED_ITEMS_FILE


def write_items(folder: str | os.PathLike, ids: Iterable[str], texts: Iterable[str]) -> None:
    """Writes ``folder/items.tsv`` atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(["item_id", "text"])
    writer.writerows(zip(ids, texts))
    fileio.write_text(fileio.join(folder, ITEM_TEXTS_FILE), buffer.getvalue())


def read_items(folder: str | os.PathLike) -> dict[str, str]:
    """Item id -> product text, in file order."""
    path = fileio.join(folder, ITEM_TEXTS_FILE)
    if not fileio.exists(path):
        raise TfrecError(f"{path} not found: is {folder} the output folder of `tfrec index` or `tfrec export`?")
    with io.StringIO(fileio.read_text(path), newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        return dict(reader)


def read_removed(export_dir: str | os.PathLike) -> list[str]:
    """The ids removed from an export folder's answers (``tfrec index --remove``; none when never used)."""
    return list(fileio.read_json(fileio.join(export_dir, REMOVED_ITEMS_FILE), default={}).get("removed", []))
