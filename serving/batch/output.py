"""The batch job's records and the sinks that write them: JSON lines or Parquet shards.

One record per customer::

    {"user_id": "12347", "item_ids": [...k ids, best first], "scores": [...],
     "because_ids": [...the history item behind each result], "because_scores": [...]}

and, with ``tfrec batch --copy``, ``"pitches": [...each item's pitch from tfrec copy, or null]``.

Beam's file sinks write every shard to a temporary folder and rename it into place when
the job finishes, so a half-written job leaves no shard a reader could mistake for output.
"""

from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa

from tfrec.layout import RECOMMENDATIONS_PREFIX

FORMATS = {"jsonl": ".jsonl", "parquet": ".parquet"}
"""Output formats and their file suffixes."""

SCHEMA = pa.schema([
    ("user_id", pa.string()),
    ("item_ids", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
    ("because_ids", pa.list_(pa.string())),
    ("because_scores", pa.list_(pa.float32())),
])
"""The Parquet schema; JSON lines carry the same fields."""
PITCHES_FIELD = pa.field("pitches", pa.list_(pa.string()))
"""The field ``tfrec batch --copy`` adds."""


def to_json(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False)


class WriteRecommendations(beam.PTransform):
    """Records -> ``output/recommendations-SSSSS-of-NNNNN.{jsonl,parquet}``.

    Args:
      output: the folder to write into (local or a bucket).
      output_format: ``"jsonl"`` or ``"parquet"``.
      num_shards: files to write; 0 lets the runner choose.
      pitches: the records carry ``pitches`` (``tfrec batch --copy``).
    """

    def __init__(self, output: str, output_format: str = "jsonl", num_shards: int = 0, pitches: bool = False):
        super().__init__()
        if output_format not in FORMATS:
            raise ValueError(f"unknown output format {output_format!r}; expected one of {sorted(FORMATS)}")
        self.prefix = f"{str(output).rstrip('/')}/{RECOMMENDATIONS_PREFIX}"
        self.output_format = output_format
        self.num_shards = num_shards
        self.schema = SCHEMA.append(PITCHES_FIELD) if pitches else SCHEMA

    def expand(self, records):
        suffix = FORMATS[self.output_format]
        if self.output_format == "parquet":
            return records | "WriteParquet" >> beam.io.WriteToParquet(
                self.prefix, self.schema, file_name_suffix=suffix, num_shards=self.num_shards)
        return (
            records
            | "ToJson" >> beam.Map(to_json)
            | "WriteJsonLines" >> beam.io.WriteToText(self.prefix, file_name_suffix=suffix, num_shards=self.num_shards)
        )
