"""Reading a data directory back in tests: records as plain, comparable values."""

from __future__ import annotations

import collections
import glob
import json
from pathlib import Path

import tensorflow as tf

from tfrec import features, layout


def examples(pattern: str | Path) -> list[dict[str, list]]:
    """Every tf.train.Example in the GZIP TFRecord files matching ``pattern``, as feature -> values."""
    files = sorted(glob.glob(str(pattern)))
    assert files, f"no files match {pattern}"
    records = []
    for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(serialized)
        record = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value)
            record[name] = [v.decode("utf-8") for v in values] if kind == "bytes_list" else values
        records.append(record)
    return records


def split(data_dir: Path, name: str) -> list[dict[str, list]]:
    return examples(features.split_pattern(data_dir, name))


def items(data_dir: Path) -> list[dict[str, list]]:
    return examples(Path(data_dir) / layout.ITEMS_FILE)


def multiset(records: list[dict[str, list]]) -> collections.Counter:
    """Records as a multiset of canonical JSON strings (order and shards do not matter)."""
    return collections.Counter(json.dumps(r, sort_keys=True) for r in records)


def vocab(data_dir: Path) -> list[str]:
    return (Path(data_dir) / layout.VOCAB_FILE).read_text(encoding="utf-8").splitlines()


def stats(data_dir: Path) -> dict:
    return json.loads((Path(data_dir) / layout.STATS_FILE).read_text(encoding="utf-8"))


def rejected(data_dir: Path) -> list[dict]:
    rows = []
    for path in sorted((Path(data_dir) / layout.REJECTED_DIR).glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return rows
