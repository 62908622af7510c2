"""The preprocessing job: raw interaction logs and a catalogue -> a tfrec data directory.

The steps, as they appear on any runner's graph::

    ReadCatalogue     (only with data.catalogue) catalogue file(s) -> item rows, rejections
    ReadInteractions  log file(s) -> events, item rows (inline catalogue), rejections
    BuildCatalogue    item rows -> one canonical text per item, the sorted id -> index map
    SplitSequences    events per user -> train windows, valid / test records
    WriteExamples     -> DIR/{train,valid,test}/part-*.tfrecord.gz
    WriteCatalogue    -> DIR/items.tfrecord.gz, DIR/vocab/items.txt
    WriteRejected     -> DIR/rejected/*.jsonl
    WriteStats        -> DIR/stats.json

The layout and record formats are those of ``tfrec.features``. Rows are parsed and
validated in the reading step itself (one pass, low per-row overhead), which reads every
file in parts spread over the workers (``pipelines.reading``: Parquet by row group, CSV
and JSON lines by byte range when ``splittable``); the grouping by user and by item that
follows spreads the rest of the work. Without ``--runner`` the job runs in this process on
Beam's ``FnApiRunner`` (the engine of Beam's DirectRunner for batch jobs;
``--direct_num_workers`` and ``--direct_running_mode`` apply), never on a runner fetched
from the network; Beam options choose another (``--runner=DataflowRunner ...``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import CompressionTypes, FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipelines import reading, sources
from pipelines.catalogue import BuildCatalogue, WriteCatalogue
from pipelines.options import pipeline_options
from pipelines.rows import CatalogueParser, InteractionParser
from pipelines.sequences import SUMMARY, TRAIN_COUNTS, SplitSequences
from pipelines.stats import WriteStats
from tfrec import layout
from tfrec.config import Config, DataConfig
from tfrec.errors import TfrecError
from tfrec.layout import REJECTED_PREFIX, REJECTED_SUFFIX, SHARD_PREFIX

log = logging.getLogger(__name__)

LISTED_FILES = 10
"""Input files printed by name before the job starts."""
CHECKED_FILES = 20
"""Input files whose header (CSV) or schema (Parquet) is checked for the configured columns
before the job starts; in a later file a missing column rejects its rows."""


class WriteExamples(beam.PTransform):
    """``{"train", "valid", "test"}`` serialized examples -> GZIP TFRecord shards under ``output``."""

    def __init__(self, output: str, num_shards: int):
        super().__init__()
        self.output = output
        self.num_shards = num_shards

    def expand(self, splits):
        return {
            split: splits[split] | f"Write{split.capitalize()}" >> beam.io.WriteToTFRecord(
                FileSystems.join(self.output, split, SHARD_PREFIX),
                file_name_suffix=layout.SHARD_SUFFIX,
                num_shards=self.num_shards,
                compression_type=CompressionTypes.GZIP,
            )
            for split in layout.SPLITS
        }


class WriteRejected(beam.PTransform):
    """``Rejection``s -> JSON lines under ``output/rejected``."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, rejections):
        return (
            rejections
            | "ToJson" >> beam.Map(lambda rejection: rejection.to_json())
            | "WriteJsonLines" >> beam.io.WriteToText(
                FileSystems.join(self.output, layout.REJECTED_DIR, REJECTED_PREFIX),
                file_name_suffix=REJECTED_SUFFIX,
            )
        )


def row_parsers(data: DataConfig) -> tuple[InteractionParser, CatalogueParser | None]:
    """The row parsers; interaction rows carry the item text only when there is no catalogue file."""
    if data.catalogue is None:
        return InteractionParser(data.interactions, data.items, data.normalize_ids), None
    return (InteractionParser(data.interactions, None, data.normalize_ids),
            CatalogueParser(data.catalogue, data.items, data.normalize_ids))


def build_pipeline(pipeline: beam.Pipeline, config: Config, output: str) -> None:
    """Adds every step of the job to ``pipeline``, writing into ``output``."""
    data = config.data
    interaction_parser, catalogue_parser = row_parsers(data)
    rejected = []
    catalogue_files = None
    known_items = None
    if data.catalogue is not None:
        read_catalogue = pipeline | "ReadCatalogue" >> reading.ReadRows(
            data.catalogue.paths, data.catalogue.format, data.catalogue.delimiter, catalogue_parser,
            splittable=data.catalogue.splittable,
        )
        catalogue = read_catalogue[reading.ITEMS] | "BuildCatalogue" >> BuildCatalogue()
        rejected.append(read_catalogue[reading.REJECTED])
        catalogue_files = read_catalogue[reading.COUNTS]
        known_items = beam.pvalue.AsSingleton(catalogue["index"])

    interactions = pipeline | "ReadInteractions" >> reading.ReadRows(
        data.interactions.paths, data.interactions.format, data.interactions.delimiter,
        interaction_parser, known_items=known_items, splittable=data.interactions.splittable,
    )
    rejected.append(interactions[reading.REJECTED])
    if data.catalogue is None:
        catalogue = interactions[reading.ITEMS] | "BuildCatalogue" >> BuildCatalogue()

    splits = interactions[reading.ROWS] | "SplitSequences" >> SplitSequences(
        data.sequences, beam.pvalue.AsSingleton(catalogue["index"])
    )
    {split: splits[split] for split in layout.SPLITS} | "WriteExamples" >> WriteExamples(
        output, data.num_shards)
    {
        "items": catalogue["items"], "index": catalogue["index"], "train_counts": splits[TRAIN_COUNTS],
    } | "WriteCatalogue" >> WriteCatalogue(output, data.items.categorical_fields)
    tuple(rejected) | "FlattenRejected" >> beam.Flatten() | "WriteRejected" >> WriteRejected(output)
    stats_inputs = {
        "interaction_files": interactions[reading.COUNTS],
        "summaries": splits[SUMMARY],
        "index": catalogue["index"],
        "train_counts": splits[TRAIN_COUNTS],
    }
    if catalogue_files is not None:
        stats_inputs["catalogue_files"] = catalogue_files
    stats_inputs | "WriteStats" >> WriteStats(output, config.fingerprint("data"), data.normalize_ids)


# ------------------------------------------------------------------ driver


def _list_inputs(config: Config) -> None:
    """Prints the files each input pattern matches; raises ``TfrecError`` for a missing one or column."""
    data = config.data
    interaction_parser, catalogue_parser = row_parsers(data)
    inputs = [("data.interactions", data.interactions, interaction_parser)]
    if data.catalogue is not None:
        inputs.append(("data.catalogue", data.catalogue, catalogue_parser))
    else:
        log.info("catalogue: inline (item text from the interaction rows)")
    for key, section, parser in inputs:
        files = sources.match_files(section.paths, f"{key}.paths")
        name = key.split(".")[-1]
        for n, (path, size) in enumerate(files):
            fmt = sources.detect_format(path, section.format)
            if n < CHECKED_FILES:
                sources.check_columns(path, fmt, section.delimiter, parser.columns, key)
            if n < LISTED_FILES:
                log.info(f"{name}: {path} ({fmt}, {size / 1e6:,.1f} MB)")
        if len(files) > LISTED_FILES:
            log.info(f"{name}: ... {len(files):,} files, {sum(size for _, size in files) / 1e6:,.1f} MB in all")


def clear_outputs(output: str) -> None:
    """Deletes what an earlier run wrote into ``output``, so stale shards never mix with new ones."""
    patterns = [FileSystems.join(output, split, "*") for split in layout.SPLITS]
    patterns += [FileSystems.join(output, layout.REJECTED_DIR, "*")]
    patterns += [FileSystems.join(output, name) for name in (
        layout.ITEMS_FILE, layout.VOCAB_FILE, layout.STATS_FILE, layout.CONFIG_FILE)]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


def _write_text(path: str, text: str) -> None:
    with FileSystems.create(path, mime_type="text/plain", compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode("utf-8"))


def read_stats(output: str | os.PathLike) -> dict[str, Any]:
    with FileSystems.open(FileSystems.join(str(output), layout.STATS_FILE),
                          compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))


def _print_summary(stats: dict[str, Any], output: str, seconds: float) -> None:
    sections = [("rows", stats)]
    if "catalogue" in stats:
        sections.append(("catalogue rows", stats["catalogue"]))
    for name, counts in sections:
        log.info(f"{name}: read {counts['rows_read']:,}, kept {counts['rows_kept']:,}, "
              f"rejected {counts['rows_rejected']:,}")
        for reason, n in counts["rejected_by_reason"].items():
            log.info(f"  {reason:<32} {n:>10,}")
    dropped = ", ".join(f"{k} {v:,}" for k, v in stats["users_dropped"].items()) or "none"
    examples = stats["examples"]
    log.info(f"users: {stats['users']:,} ({stats['users_evaluated']:,} evaluated, "
          f"{stats['users_train_only']:,} train only, dropped: {dropped})")
    log.info(f"items: {stats['items']:,} ({stats['cold_start_items']:,} never a training target)")
    log.info(f"interactions: {stats['interactions']:,} in {stats['groups']:,} groups "
          f"({stats['duplicates_merged']:,} duplicate rows merged)")
    log.info(f"examples: train {examples['train']:,} ({stats['train_targets']:,} target items), "
          f"valid {examples['valid']:,}, test {examples['test']:,}")
    lengths = ", ".join(f"{k} {v:,}" for k, v in stats["history_length"].items())
    log.info(f"test history length: {lengths}")
    log.info(f"outputs in {output} ({seconds:,.0f} s): {{train,valid,test}}/*{layout.SHARD_SUFFIX}, "
          f"{layout.ITEMS_FILE}, {layout.VOCAB_FILE}, {layout.STATS_FILE}, "
          f"{layout.REJECTED_DIR}/*{REJECTED_SUFFIX}, {layout.CONFIG_FILE}")


def job_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's counters, ``"<namespace>/<name>" -> value`` (committed where the runner has them)."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter())["counters"]:
        name = f"{counter.key.metric.namespace}/{counter.key.metric.name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + int(value or 0)
    return dict(sorted(totals.items()))


def local_runner(options: PipelineOptions) -> beam.runners.PipelineRunner | None:
    """The runner when ``options`` name none: Beam's in-process ``FnApiRunner``.

    Beam's default DirectRunner would first try to download and start its Prism runner
    binary from the network and fall back to the ``FnApiRunner`` when it cannot, so the
    same command would run on different engines on and off line. None when a runner is named.
    """
    if options.view_as(StandardOptions).runner:
        return None
    return FnApiRunner()


def run_preprocess(config: Config, output: str | os.PathLike, beam_args: Sequence[str] = ()) -> dict[str, Any]:
    """Runs the preprocessing job: raw interactions and catalogue in, a data folder out.

    Args:
        config: the run's config (``data`` is read).
        output: the data folder to write (local or a bucket): the splits, the catalogue,
            the vocabularies, ``stats.json`` and the rejected rows.
        beam_args: Beam pipeline options (``--runner=...`` and the runner's own).

    Returns:
        ``stats.json``'s content.

    Raises:
        TfrecError: when no interaction row was kept.
    """
    output = str(output)
    options = pipeline_options(beam_args)
    runner = local_runner(options)
    log.info(f"== preprocess {config.name}: -> {output} "
             f"(runner: {options.view_as(StandardOptions).runner or 'local FnApiRunner'})")
    _list_inputs(config)
    clear_outputs(output)
    start = time.perf_counter()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, config, output)
    log.info("Beam job started; every file being read reports its rows every %.0f s", reading.PROGRESS_SECONDS)
    result = pipeline.run()
    result.wait_until_finish()
    counters = job_counters(result)
    width = max((len(name) for name in counters), default=0)
    log.info("Beam counters:\n%s", "\n".join(f"  {name:<{width}} {value:>12,}" for name, value in counters.items()))
    _write_text(FileSystems.join(output, layout.CONFIG_FILE), config.to_yaml())
    stats = read_stats(output)
    _print_summary(stats, output, time.perf_counter() - start)
    if not stats["rows_kept"]:
        raise TfrecError(f"no interaction row was kept; the reasons are above and in "
                         f"{FileSystems.join(output, layout.REJECTED_DIR)}")
    return stats
