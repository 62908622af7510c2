"""``stats.json``: row accounting, dataset sizes and history-length percentiles.

The figures are computed inside the pipeline (so they are right on every runner) from
three small inputs: the per-file row counts of the readers, one ``UserSummary`` per user,
and the catalogue's index and training counts. Every figure is an exact count; the
invariant ``rows_kept + rows_rejected == rows_read`` holds per file and in total.

=======================  ====================================================================
``rows_read`` ...        interaction rows read, kept, rejected; ``rejected_by_reason`` (sorted)
``sources``              file -> ``{"read", "kept", "rejected"}``
``catalogue``            the same accounting for a separate catalogue file (only then)
``users``                users with a kept row; ``users_evaluated`` have valid and test records,
                         ``users_train_only`` training windows only, ``users_dropped`` by reason
``items``                catalogue items; ``cold_start_items`` are never a training target
``interactions``         events after deduplication (``duplicates_merged`` rows fewer than kept)
``quantity``, ``groups`` summed quantity; baskets / invoices / sessions
``examples``             records per split; ``train_targets`` the training windows' target items,
                         ``train_repeat_targets`` those the user bought in an earlier group
``history_length``       p10 ... p99 and max of the test records' history lengths
``time_range``           first and last kept event, and the first and last start of a held-out
                         (test) group, in UTC (ISO 8601)
``normalize_ids``        whether ids that are integers written as floats were written as integers
``config_fingerprint``   ``config.fingerprint("data")``
=======================  ====================================================================
"""

from __future__ import annotations

import collections
import datetime
import json
from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam

from pipelines.sequences import EVALUATED, TRAIN_ONLY, UserSummary
from tfrec import layout

PERCENTILES = (10, 25, 50, 75, 90, 99)


def percentiles(histogram: Mapping[int, int]) -> dict[str, int]:
    """Nearest-rank percentiles (and the max) of the values a ``value -> count`` histogram holds."""
    total = sum(histogram.values())
    result = {}
    for p in PERCENTILES:
        rank, seen = max(1, -(-p * total // 100)), 0  # ceil(p * total / 100)
        for value in sorted(histogram):
            seen += histogram[value]
            if seen >= rank:
                result[f"p{p}"] = value
                break
        else:
            result[f"p{p}"] = 0
    result["max"] = max(histogram, default=0)
    return result


def row_accounting(files: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Totals, rejections by reason and a per-file breakdown of the readers' counts."""
    sources, reasons = {}, collections.Counter()
    for source, counts in sorted(files):
        rejected = sum(counts["rejected"].values())
        sources[source] = {"read": counts["read"], "kept": counts["kept"], "rejected": rejected}
        reasons.update(counts["rejected"])
    return {
        "rows_read": sum(s["read"] for s in sources.values()),
        "rows_kept": sum(s["kept"] for s in sources.values()),
        "rows_rejected": sum(s["rejected"] for s in sources.values()),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "sources": sources,
    }


class UserStatsFn(beam.CombineFn):
    """Adds up the ``UserSummary`` of every user."""

    def create_accumulator(self) -> dict[str, Any]:
        return {"outcomes": collections.Counter(), "interactions": 0, "groups": 0, "quantity": 0.0,
                "train": 0, "train_targets": 0, "train_repeat_targets": 0, "history": collections.Counter(),
                "times": {}}

    def add_input(self, acc, summary: UserSummary):
        acc["outcomes"][summary.outcome] += 1
        acc["interactions"] += summary.interactions
        acc["groups"] += summary.groups
        acc["quantity"] += summary.quantity
        acc["train"] += summary.train_examples
        acc["train_targets"] += summary.train_targets
        acc["train_repeat_targets"] += summary.train_repeat_targets
        if summary.test_history_length is not None:
            acc["history"][summary.test_history_length] += 1
        _extend(acc["times"], "first_event", "last_event", summary.first_time, summary.last_time)
        _extend(acc["times"], "test_from", "test_to", summary.test_time, summary.test_time)
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            for key, value in acc.items():
                if key == "times":
                    _extend(merged["times"], "first_event", "last_event", value.get("first_event"),
                            value.get("last_event"))
                    _extend(merged["times"], "test_from", "test_to", value.get("test_from"), value.get("test_to"))
                elif isinstance(value, collections.Counter):
                    merged[key].update(value)
                else:
                    merged[key] += value
        return merged

    def extract_output(self, acc):
        return acc


def _extend(times: dict, low_key: str, high_key: str, low: int | None, high: int | None) -> None:
    """Widens the ``[times[low_key], times[high_key]]`` range to hold ``low`` and ``high``."""
    if low is not None:
        times[low_key] = min(low, times.get(low_key, low))
    if high is not None:
        times[high_key] = max(high, times.get(high_key, high))


def _iso(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_stats(
    fingerprint: str,
    interaction_files: Iterable[tuple[str, Mapping[str, Any]]],
    catalogue_files: Iterable[tuple[str, Mapping[str, Any]]] | None,
    users: Mapping[str, Any],
    index: Mapping[str, int],
    train_counts: Mapping[int, int],
    normalize_ids: bool = True,
) -> dict[str, Any]:
    """The content of ``stats.json``."""
    outcomes = users["outcomes"]
    evaluated = outcomes.get(EVALUATED, 0)
    stats = {"config_fingerprint": fingerprint, **row_accounting(interaction_files)}
    if catalogue_files is not None:
        stats["catalogue"] = row_accounting(catalogue_files)
    stats |= {
        "users": sum(outcomes.values()),
        "users_evaluated": evaluated,
        "users_train_only": outcomes.get(TRAIN_ONLY, 0),
        "users_dropped": {k: v for k, v in sorted(outcomes.items()) if k not in (EVALUATED, TRAIN_ONLY)},
        "items": len(index),
        "cold_start_items": len(index) - sum(1 for n in train_counts.values() if n),
        "interactions": users["interactions"],
        "duplicates_merged": stats["rows_kept"] - users["interactions"],
        "quantity": users["quantity"],
        "groups": users["groups"],
        "examples": {"train": users["train"], "valid": evaluated, "test": evaluated},
        "train_targets": users["train_targets"],
        "train_repeat_targets": users["train_repeat_targets"],
        "history_length": percentiles(users["history"]),
        "time_range": {key: _iso(users.get("times", {}).get(key))
                       for key in ("first_event", "last_event", "test_from", "test_to")},
        "normalize_ids": normalize_ids,
    }
    return stats


class WriteStats(beam.PTransform):
    """Builds and writes ``stats.json`` (one element in, one file out).

    Input: ``{"interaction_files", "catalogue_files" (optional), "summaries", "index",
    "train_counts"}`` PCollections.
    """

    def __init__(self, output: str, fingerprint: str, normalize_ids: bool = True):
        super().__init__()
        self.output = output
        self.fingerprint = fingerprint
        self.normalize_ids = normalize_ids

    def expand(self, inputs):
        catalogue = inputs.get("catalogue_files")
        users = inputs["summaries"] | "AddUpUsers" >> beam.CombineGlobally(UserStatsFn())
        return (
            inputs["summaries"].pipeline
            | "Fingerprint" >> beam.Create([self.fingerprint])
            | "BuildStats" >> beam.Map(
                build_stats,
                interaction_files=beam.pvalue.AsList(inputs["interaction_files"]),
                catalogue_files=beam.pvalue.AsList(catalogue) if catalogue is not None else None,
                users=beam.pvalue.AsSingleton(users),
                index=beam.pvalue.AsSingleton(inputs["index"]),
                train_counts=beam.pvalue.AsDict(inputs["train_counts"]),
                normalize_ids=self.normalize_ids,
            )
            | "ToJson" >> beam.Map(lambda stats: json.dumps(stats, indent=2))
            | "WriteStats" >> beam.io.WriteToText(
                beam.io.filesystems.FileSystems.join(self.output, layout.STATS_FILE),
                num_shards=1, shard_name_template="",
            )
        )
