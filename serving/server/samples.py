"""Sample customers for the page: a few test users of a data folder, their histories and next baskets.

An export holds no customer ids. A data folder of ``tfrec preprocess`` (``RUN/data``)
does: its ``test`` split keeps each user's history (item indices, oldest first) and the
basket held out after it. ``tfrec serve --examples RUN/data`` reads the first few of
them, so that a person can open a real customer's list and see which recommendations
that customer went on to buy.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import tensorflow as tf

from tfrec import features as F
from tfrec import fileio
from tfrec.errors import TfrecError
from tfrec.layout import VOCAB_FILE

SAMPLE_CUSTOMERS = 8


@dataclass(frozen=True)
class SampleCustomer:
    user_id: str
    history: list[str]
    """Item ids, oldest first: the most recent ``max_history`` of the user's past."""
    next_basket: list[str]
    """Item ids of the basket held out after the history."""

    def to_json(self) -> dict:
        return asdict(self)


def sample_customers(data_dir: str | os.PathLike, max_history: int,
                     count: int = SAMPLE_CUSTOMERS) -> list[SampleCustomer]:
    """The first ``count`` users of ``data_dir``'s test split (the validation split when it has no test users).

    Args:
        data_dir: the output folder of ``tfrec preprocess``.
        max_history: the most history items kept per user (the server's ``serve.max_history``),
            so that a sample's history is one the REST API accepts.
        count: how many users to read.
    """
    data_dir = os.fspath(data_dir)
    vocab_path = fileio.join(data_dir, VOCAB_FILE)
    if not fileio.exists(vocab_path):
        raise TfrecError(f"{vocab_path} not found: --examples takes the output folder of `tfrec preprocess` "
                         f"(a run's data/ folder)")
    ids = fileio.read_text(vocab_path).splitlines()
    for split in ("test", "valid"):
        records = _first_records(F.split_pattern(data_dir, split), count)
        if records:
            return [_customer(record, ids, max_history, f"{data_dir}/{split}") for record in records]
    raise TfrecError(f"{data_dir} holds no test or validation users to show as sample customers")


def _first_records(pattern: str, count: int) -> list[dict]:
    files = sorted(fileio.glob(pattern))
    if not files:
        return []
    dataset = (tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
               .map(lambda record: tf.io.parse_single_example(record, F.eval_spec())))
    return list(dataset.as_numpy_iterator())


def _customer(record: dict, ids: list[str], max_history: int, where: str) -> SampleCustomer:
    def names(indices) -> list[str]:
        if len(indices) and not 0 <= min(indices) <= max(indices) < len(ids):
            raise TfrecError(f"{where}: user {record[F.USER_ID].decode()!r} has item indices outside "
                             f"{VOCAB_FILE} ({len(ids)} items): the folder's files do not belong together")
        return [ids[i] for i in indices]

    history = record[F.HISTORY].tolist()[-max_history:]
    return SampleCustomer(record[F.USER_ID].decode("utf-8"), names(history), names(record[F.TARGETS].tolist()))
