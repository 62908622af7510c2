"""``tfrec batch``: top-k recommendations for every customer, as an Apache Beam job.

The steps, as they appear on any runner's graph::

    ReadHistories         a data folder's split, or raw interaction files -> (user_id, item ids)
    Recommend             RunInference with the exported tfrec_retrieve SavedModel, keyed by user_id
    WriteRecommendations  -> OUTPUT/recommendations-*.{jsonl,parquet}

then ``OUTPUT/batch_summary.json`` (written last: its presence means the job finished).
The job runs the exported version itself (``serving.batch.handler``), so its lists are
the served ones. Runner flags work as in ``tfrec preprocess``: without ``--runner`` the
job runs in this process on Beam's ``FnApiRunner``; ``--runner=DataflowRunner ...``
(or Flink, Spark) runs it there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.util import SortAndBatchElements

from pipelines.options import pipeline_options
from pipelines.preprocess import job_counters, local_runner
from serving.batch.handler import METRICS_NAMESPACE, STEP_TIME, RetrieveModelHandler, mark_step_time
from serving.batch.histories import HistoriesFromInteractions, HistoriesFromSplit
from serving.batch.output import FORMATS, WriteRecommendations
from serving.export import RETRIEVE
from serving.saved_model import is_version_dir, newest_version
from tfrec import features, fileio
from tfrec.config import Config
from tfrec.errors import TfrecError
from tfrec.layout import BATCH_SUMMARY_FILE, RECOMMENDATIONS_PREFIX

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 10.0
"""How often a worker writing records reports the customers done so far."""


class ToRecordFn(beam.DoFn):
    """``(user_id, PredictionResult)`` -> one output record; counts customers in the ``customers``
    counter and logs progress every ``progress_seconds`` (default ``PROGRESS_SECONDS``)."""

    def __init__(self, progress_seconds: float | None = None):
        self.progress_seconds = PROGRESS_SECONDS if progress_seconds is None else progress_seconds
        self.customers = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "customers")

    def setup(self):
        self.done, self.counted = 0, 0
        self.started = self.last_report = time.monotonic()

    def process(self, element: tuple[str, Any]):
        user, result = element
        self.done += 1
        now = time.monotonic()
        if now - self.last_report >= self.progress_seconds:
            self.last_report = now
            self._flush()
            log.info("batch: %s customers recommended so far on this worker (%s customers/s)",
                     f"{self.done:,}", f"{self.done / max(now - self.started, 1e-9):,.0f}")
        yield {"user_id": user, **result.inference}

    def finish_bundle(self):
        self._flush()
        mark_step_time()

    def _flush(self):
        self.customers.inc(self.done - self.counted)
        self.counted = self.done


def history_length(element: tuple[str, list[str]]) -> int:
    return max(1, len(element[1]))


class Recommend(beam.PTransform):
    """``(user_id, item ids oldest first)`` -> one record per customer, through ``handler``.

    Histories are sorted by length within each bundle before they are batched, so a batch
    pads its histories to similar lengths: a shop's customers range from one basket to
    thousands of items, and the cost of a call grows with its longest history.

    Args:
      handler: runs the exported model on a batch.
      batch_size: most customers per model call.
      batch_items: most history items per model call (a long history fills a call alone).
    """

    def __init__(self, handler: RetrieveModelHandler, batch_size: int = 256, batch_items: int = 1 << 16,
                 progress_seconds: float | None = None):
        super().__init__()
        self.handler = handler
        self.batch_size = batch_size
        self.batch_items = batch_items
        self.progress_seconds = progress_seconds

    def expand(self, histories):
        return (
            histories
            | "BatchBySize" >> SortAndBatchElements(1, self.batch_size, self.batch_items, history_length)
            | "RunInference" >> RunInference(KeyedModelHandler(self.handler).with_no_batching())
            | "ToRecords" >> beam.ParDo(ToRecordFn(self.progress_seconds))
        )


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """What ``tfrec batch`` asks of the model and how it writes.

    Attributes:
      k: results per customer; None: the model's default (``export.k``).
      exclude_history: drop items already bought; None: the model's default (``export.exclude_history``).
      exclude_ids: item ids never to recommend (e.g. sold out).
      output_format: ``"jsonl"`` or ``"parquet"``.
      batch_size: most customers per model call.
      version: the ``tfrec_retrieve`` version to run; None: the newest.
      num_shards: output files; 0 lets the runner choose.
      copy: a ``tfrec copy`` output: each record also carries its items' pitches (null where none).
    """

    k: int | None = None
    exclude_history: bool | None = None
    exclude_ids: tuple[str, ...] = ()
    output_format: str = "jsonl"
    batch_size: int = 256
    version: int | None = None
    num_shards: int = 0
    copy: str | None = None


def with_pitches(record: dict, pitches: dict[str, str]) -> dict:
    """The record with ``pitches``: each recommended item's pitch, or None."""
    return {**record, "pitches": [pitches.get(item) for item in record["item_ids"]]}


def retrieve_version(export_dir: str, version: int | None = None) -> str:
    """The version folder of ``tfrec_retrieve`` to run: ``version``, or the newest."""
    model_dir = fileio.join(export_dir, RETRIEVE)
    if not fileio.isdir(model_dir):
        raise TfrecError(f"{model_dir} not found: is {export_dir} the output folder of `tfrec export`?")
    path = newest_version(model_dir) if version is None else fileio.join(model_dir, str(version))
    if not is_version_dir(path):
        raise TfrecError(f"{path} holds no SavedModel (versions: {', '.join(sorted(fileio.listdir(model_dir)))})")
    return path


def history_source(config: Config, data_dir: str | None = None, split: str = "test") -> beam.PTransform:
    """Histories from ``data_dir``'s ``split``, else from the config's raw interaction files."""
    if data_dir is None:
        return HistoriesFromInteractions(config.data, config.export.max_history)
    pattern = features.split_pattern(data_dir, split)
    if not fileio.glob(pattern):
        raise TfrecError(f"no files match {pattern}: is {data_dir} the output folder of `tfrec preprocess`?")
    return HistoriesFromSplit(data_dir, split, config.export.max_history)


def clear_outputs(output: str) -> None:
    """Deletes the shards and summary an earlier job left in ``output``."""
    patterns = [FileSystems.join(output, f"{RECOMMENDATIONS_PREFIX}-*"), FileSystems.join(output, BATCH_SUMMARY_FILE)]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


@dataclasses.dataclass
class Distribution:
    """One distribution metric merged over the steps that update it."""

    sum: int = 0
    count: int = 0
    min: int | None = None
    max: int | None = None

    def merge(self, value) -> None:
        self.sum += int(value.sum or 0)
        self.count += int(value.count or 0)
        self.min = value.min if self.min is None else min(self.min, value.min)
        self.max = value.max if self.max is None else max(self.max, value.max)


def distributions(result) -> dict[str, Distribution]:
    """The job's distributions, ``"<namespace>/<name>" -> Distribution`` (committed where the runner
    has them), merged over the steps that update the same name."""
    found: dict[str, Distribution] = {}
    for dist in result.metrics().query(MetricsFilter())["distributions"]:
        value = dist.committed if dist.committed is not None else dist.attempted
        if value is not None and value.count:
            found.setdefault(f"{dist.key.metric.namespace}/{dist.key.metric.name}", Distribution()).merge(value)
    return found


def build_pipeline(pipeline: beam.Pipeline, source: beam.PTransform, handler: RetrieveModelHandler,
                   output: str, options: BatchOptions) -> None:
    """Adds every step of the job to ``pipeline``, writing into ``output``."""
    records = pipeline | "ReadHistories" >> source | "Recommend" >> Recommend(handler, options.batch_size)
    if options.copy is not None:
        from serving.copywriter.pitches import read_pitches

        pitches = {item: record["pitch"] for item, record in read_pitches(options.copy).items()}
        records = records | "AddPitches" >> beam.Map(with_pitches, pitches)
    records | "WriteRecommendations" >> WriteRecommendations(output, options.output_format, options.num_shards,
                                                            pitches=options.copy is not None)


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 1) if seconds > 0 else None


def _summary(result, version_dir: str, source: beam.PTransform, options: BatchOptions, output: str,
             seconds: float) -> dict[str, Any]:
    """What ``batch_summary.json`` holds: the model version, the source, counts and timings.

    ``recommend_seconds`` spans the first model call to the last record written, on all
    workers: the step whose rate grows with the number of customers; ``seconds`` adds the
    start-up, the model loading and the reading of the histories.
    """
    counters = job_counters(result)
    timings = distributions(result)
    users = counters.get(f"{METRICS_NAMESPACE}/customers", 0)
    step = timings.get(f"{METRICS_NAMESPACE}/{STEP_TIME}")
    recommend_seconds = (step.max - step.min) / 1e3 if step is not None else 0.0
    inference = timings.get(f"{METRICS_NAMESPACE}/inference_batch_latency_micro_secs")
    load = timings.get(f"{METRICS_NAMESPACE}/load_model_latency_milli_secs")
    described = ({"data": source.data_dir, "split": source.split} if isinstance(source, HistoriesFromSplit)
                 else {"interactions": list(source.data.interactions.paths)})
    files = sorted(m.path for m in FileSystems.match(
        [FileSystems.join(output, f"{RECOMMENDATIONS_PREFIX}-*")])[0].metadata_list)
    return {
        "model": RETRIEVE, "version": int(os.path.basename(version_dir.rstrip("/"))), "version_dir": version_dir,
        "source": described, "users": users, "k": options.k, "exclude_history": options.exclude_history,
        "exclude_ids": list(options.exclude_ids), "format": options.output_format, "files": files,
        "copy": options.copy,
        "seconds": round(seconds, 3), "users_per_second_overall": _rate(users, seconds),
        "recommend_seconds": round(recommend_seconds, 3), "users_per_second": _rate(users, recommend_seconds),
        "model_calls": inference.count if inference else 0,
        "model_seconds": round(inference.sum / 1e6, 3) if inference else 0.0,
        "model_load_seconds": round(load.sum / 1e3, 3) if load else 0.0,
        "counters": counters,
    }


def run_batch(config: Config, export_dir: str | os.PathLike, output: str | os.PathLike, data_dir: str | None = None,
              split: str = "test", options: BatchOptions = BatchOptions(), beam_args: Sequence[str] = ()
              ) -> dict[str, Any]:
    """Runs the job with Beam options ``beam_args``; returns (and writes) ``batch_summary.json``'s content.

    Args:
        config: the run's config (raw interaction files: ``data``; history cap: ``export.max_history``).
        export_dir: the output folder of ``tfrec export``.
        output: the folder to write the records into (local or a bucket).
        data_dir: a data folder whose ``split`` holds the histories; None: read ``data.interactions``.
        split: with ``data_dir``: ``valid`` or ``test``.
        options: results per customer, exclusions, output format and shards.
        beam_args: Beam pipeline options (``--runner=...`` and the runner's own).

    Returns:
        ``batch_summary.json``'s content.
    """
    if options.output_format not in FORMATS:
        raise TfrecError(f"unknown output format {options.output_format!r}; expected one of {sorted(FORMATS)}")
    export_dir, output = os.fspath(export_dir), os.fspath(output)
    beam_options = pipeline_options(beam_args)
    version_dir = retrieve_version(export_dir, options.version)
    source = history_source(config, data_dir, split)
    handler = RetrieveModelHandler(version_dir, options.k, options.exclude_history, options.exclude_ids)
    log.info(f"== batch {config.name}: {version_dir} -> {output} "
             f"(runner: {beam_options.view_as(StandardOptions).runner or 'local FnApiRunner'})")
    log.info("histories: " + (f"{data_dir} ({split} split)" if data_dir is not None
                              else ", ".join(config.data.interactions.paths)))
    fileio.makedirs(output)
    clear_outputs(output)
    start = time.perf_counter()
    pipeline = beam.Pipeline(runner=local_runner(beam_options), options=beam_options)
    build_pipeline(pipeline, source, handler, output, options)
    log.info("Beam job started; every worker reports the customers it has done every %.0f s", PROGRESS_SECONDS)
    result = pipeline.run()
    result.wait_until_finish()
    summary = _summary(result, version_dir, source, options, output, time.perf_counter() - start)
    counters = summary["counters"]
    width = max((len(name) for name in counters), default=0)
    log.info("Beam counters:\n%s", "\n".join(f"  {name:<{width}} {value:>12,}" for name, value in counters.items()))
    if not summary["users"]:
        raise TfrecError("no customer history was read; nothing was recommended (see the counters above)")
    fileio.write_json(fileio.join(output, BATCH_SUMMARY_FILE), summary)
    rate = summary["users_per_second"]
    log.info(f"customers: {summary['users']:,}, recommended in {summary['recommend_seconds']:,.1f} s "
             f"({f'{rate:,.0f}' if rate else 'n/a'} /s; {summary['model_calls']:,} model calls taking "
             f"{summary['model_seconds']:,.1f} s); whole job {summary['seconds']:,.1f} s")
    log.info(f"outputs in {output}: {len(summary['files'])} {RECOMMENDATIONS_PREFIX}-*"
             f"{FORMATS[options.output_format]} file(s), {BATCH_SUMMARY_FILE}")
    return summary
