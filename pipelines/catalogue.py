"""The catalogue: one record per item, with a stable index, its text and its training count.

Items come from a separate catalogue file when the config names one, else from the kept
interaction rows. When rows disagree about an item, the most frequent text wins, and so
does the most frequent non-empty value of each categorical field; ties go to the
lexicographically smallest, so every run and every runner picks the same. Item indices
are the positions of the sorted item ids, and ``train_count`` is how often the item is a
training target (the in-batch sampling frequency used by the logQ correction). Items that
never occur in training keep their place (cold-start items).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

import apache_beam as beam

from pipelines.rows import ItemText
from tfrec import features, layout


def most_frequent(counts: Mapping[str, int]) -> str:
    """The most frequent key, the smallest one among ties; "" when there is none."""
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counts else ""


class ItemTextFn(beam.CombineFn):
    """Combines every ``ItemText`` of one item into the canonical one."""

    def create_accumulator(self) -> tuple[collections.Counter, list[collections.Counter]]:
        return collections.Counter(), []

    def add_input(self, accumulator, item: ItemText):
        texts, categorical = accumulator
        texts[item.text] += 1
        if not categorical:
            categorical.extend(collections.Counter() for _ in item.categorical)
        for counter, value in zip(categorical, item.categorical):
            if value:
                counter[value] += 1
        return accumulator

    def merge_accumulators(self, accumulators):
        texts, categorical = self.create_accumulator()
        for more_texts, more_categorical in accumulators:
            texts.update(more_texts)
            if not categorical:
                categorical.extend(collections.Counter() for _ in more_categorical)
            for counter, more in zip(categorical, more_categorical):
                counter.update(more)
        return texts, categorical

    def extract_output(self, accumulator) -> ItemText:
        texts, categorical = accumulator
        return ItemText(most_frequent(texts), tuple(most_frequent(c) for c in categorical))


def item_index(item_ids: Iterable[str]) -> dict[str, int]:
    """Item id -> index, indices ``0..N-1`` in sorted id order."""
    return {item: i for i, item in enumerate(sorted(item_ids))}


class BuildCatalogue(beam.PTransform):
    """``(item_id, ItemText)`` rows -> ``{"items": (item_id, ItemText), "index": {id: index}}``.

    ``index`` holds one element, the whole id -> index dict (used as a side input).
    """

    def expand(self, item_rows):
        items = item_rows | "CanonicalText" >> beam.CombinePerKey(ItemTextFn())
        index = (
            items
            | "ItemIds" >> beam.Keys()
            | "AllIds" >> beam.combiners.ToList()
            | "AssignIndices" >> beam.Map(item_index)
        )
        return {"items": items, "index": index}


def item_record(
    item: tuple[str, ItemText], index: Mapping[str, int], train_counts: Mapping[int, int],
    categorical_fields: list[str],
) -> bytes:
    item_id, text = item
    position = index[item_id]
    return features.item_example(
        item_id, position, text.text, train_counts.get(position, 0),
        dict(zip(categorical_fields, text.categorical)),
    )


def vocabulary_text(index: Mapping[str, int]) -> list[str]:
    """The vocabulary file's content (item ``i`` on line ``i``) as one element; none when empty."""
    return ["\n".join(sorted(index, key=index.__getitem__))] if index else []


class WriteCatalogue(beam.PTransform):
    """Writes ``items.tfrecord.gz`` (one file) and ``vocab/items.txt`` under ``output``.

    Input: ``{"items", "index", "train_counts"}`` PCollections.
    """

    def __init__(self, output: str, categorical_fields: list[str]):
        super().__init__()
        self.output = output
        self.categorical_fields = list(categorical_fields)

    def expand(self, inputs):
        items_path = beam.io.filesystems.FileSystems.join(self.output, layout.ITEMS_FILE)
        vocab_path = beam.io.filesystems.FileSystems.join(self.output, layout.VOCAB_FILE)
        (
            inputs["items"]
            | "ItemRecords" >> beam.Map(
                item_record,
                index=beam.pvalue.AsSingleton(inputs["index"]),
                train_counts=beam.pvalue.AsDict(inputs["train_counts"]),
                categorical_fields=self.categorical_fields,
            )
            | "WriteItems" >> beam.io.WriteToTFRecord(
                items_path, num_shards=1, shard_name_template="",
                compression_type=beam.io.filesystems.CompressionTypes.GZIP,
            )
        )
        return (
            inputs["index"]
            | "VocabLines" >> beam.FlatMap(vocabulary_text)
            | "WriteVocab" >> beam.io.WriteToText(vocab_path, num_shards=1, shard_name_template="")
        )
