"""Where the batch job's customer histories come from: ``(user_id, item ids oldest first)``.

* ``HistoriesFromSplit``: the ``valid`` or ``test`` split of a data folder written by
  ``tfrec preprocess``: one record per evaluated customer, the history before its held-out
  group, item indices turned back into ids through the folder's vocabulary.
* ``HistoriesFromInteractions``: raw interaction files, read and validated by the same
  transform and row parsers as ``tfrec preprocess`` (so the same filters, id normalisation
  and rejections apply), ordered and de-duplicated as preprocessing orders a customer's
  events. Every customer with a kept row gets a history of everything they did, held-out
  groups included: tonight's list reads all of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io.filesystems import CompressionTypes

from pipelines import reading
from pipelines.preprocess import row_parsers
from pipelines.rows import Event
from pipelines.sequences import deduplicate, order_key
from tfrec import features, fileio, layout
from tfrec.config import DataConfig
from tfrec.errors import TfrecError

HISTORY_SPLITS = ("valid", "test")
"""Splits with one record per customer (the train split holds one per training group)."""
NAMESPACE = "ReadHistories"


class RecordToHistoryFn(beam.DoFn):
    """A serialized evaluation record -> ``(user_id, its most recent max_history item ids)``; the
    vocabulary is read once per worker."""

    def __init__(self, vocab_path: str, max_history: int):
        self.vocab_path = vocab_path
        self.max_history = max_history
        self.vocab: list[str] = []

    def setup(self):
        self.vocab = fileio.read_text(self.vocab_path).splitlines()

    def process(self, record: bytes):
        import tensorflow as tf

        feature = tf.train.Example.FromString(record).features.feature
        user = feature[features.USER_ID].bytes_list.value[0].decode("utf-8")
        indices = feature[features.HISTORY].int64_list.value[-self.max_history:]
        beam.metrics.Metrics.counter(NAMESPACE, "histories").inc()
        yield user, [self.vocab[i] for i in indices]


class HistoriesFromSplit(beam.PTransform):
    """The records of one split of a data folder -> ``(user_id, item ids oldest first)``, the most
    recent ``max_history`` of each (the exported model reads no more)."""

    def __init__(self, data_dir: str, split: str, max_history: int):
        super().__init__()
        if split not in HISTORY_SPLITS:
            raise TfrecError(f"split {split!r} has no single history per customer; use one of {HISTORY_SPLITS}")
        self.data_dir = str(data_dir)
        self.split = split
        self.max_history = max_history

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadRecords" >> beam.io.ReadFromTFRecord(
                features.split_pattern(self.data_dir, self.split), compression_type=CompressionTypes.GZIP)
            | "ToHistories" >> beam.ParDo(RecordToHistoryFn(fileio.join(self.data_dir, layout.VOCAB_FILE),
                                                               self.max_history))
        )


def full_history(events: Iterable[Event], dedupe: bool, max_history: int) -> list[str]:
    """One customer's item ids, oldest first, as preprocessing orders them (and de-duplicates
    them, with ``dedupe``); the most recent ``max_history``."""
    ordered = sorted(events, key=order_key)
    if dedupe:
        ordered = deduplicate(ordered)
    return [event.item for event in ordered][-max_history:]


class HistoriesFromInteractions(beam.PTransform):
    """Raw interaction files (``data.interactions`` of the config) -> ``(user_id, item ids oldest first)``.

    Args:
      data: the config's data section: paths, format, columns, filters, id normalisation.
      max_history: most recent items kept per customer (the exported model reads no more).
    """

    def __init__(self, data: DataConfig, max_history: int):
        super().__init__()
        self.data = data
        self.max_history = max_history

    def expand(self, pbegin):
        interactions = self.data.interactions
        parser, _ = row_parsers(self.data)
        read = pbegin | "ReadInteractions" >> reading.ReadRows(
            interactions.paths, interactions.format, interactions.delimiter, parser,
            splittable=interactions.splittable,
        )
        dedupe, max_history = self.data.sequences.dedupe, self.max_history
        return (
            read[reading.ROWS]
            | "KeyByUser" >> beam.Map(lambda event: (event.user, event))
            | "GroupByUser" >> beam.GroupByKey()
            | "OrderHistories" >> beam.MapTuple(lambda user, events: (user, full_history(events, dedupe, max_history)))
        )
