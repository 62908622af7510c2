"""``tfrec copy``: a short pitch for every recommended product, as an Apache Beam job.

The steps, as they appear on any runner's graph::

    ReadTargets    the products of a ``tfrec batch`` output (with the product behind each
                   one when personalised), or a given list of ids; each pair once
    ToPrompts      catalogue title -> instruction, keyed by the hash of the prompt
    GroupByPrompt  products sharing a prompt are written once
    ReadCache      prompts answered before (OUTPUT/cache/<hash>.json) are not generated again
    Generate       RunInference with the causal LM (``serving.copywriter.handler``)
    WriteCache     each answer, atomically, as soon as it is made
    WriteCopy      -> OUTPUT/copy-*.jsonl, one record per product

then ``OUTPUT/copy_summary.json`` (written last). The cost grows with the distinct prompts,
not with the customers; a killed run started again reuses every answer it had written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from pipelines.options import pipeline_options
from pipelines.preprocess import job_counters, local_runner
from serving.copywriter.handler import METRICS_NAMESPACE, CopyModelHandler, CopyRequest
from tfrec import fileio
from tfrec.config import Config
from tfrec.copywriter.generator import PROMPT_VERSION, Sampling, instruction
from tfrec.copywriter.guard import RULES_VERSION
from tfrec.errors import TfrecError
from tfrec.layout import COPY_CACHE_DIR, COPY_PREFIX, COPY_SUMMARY_FILE, RECOMMENDATIONS_PREFIX

log = logging.getLogger(__name__)

Target = tuple[str, str | None]
"""``(item_id, the bought item_id behind it or None)``."""


def counter(name: str):
    return beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)


def targets_of(record: dict, personalise: bool) -> list[Target]:
    """A ``tfrec batch`` record -> its products (paired with their ``because`` item when personalised)."""
    because = record.get("because_ids") or [None] * len(record["item_ids"])
    return [(item, bought if personalise else None) for item, bought in zip(record["item_ids"], because)]


class ReadTargets(beam.PTransform):
    """A ``tfrec batch`` output folder's records (JSON lines or Parquet), or ``item_ids`` -> distinct targets."""

    def __init__(self, recommendations: str | None = None, item_ids: Sequence[str] = (), personalise: bool = False):
        super().__init__()
        self.recommendations = recommendations
        self.item_ids = list(item_ids)
        self.personalise = personalise

    def expand(self, pipeline):
        if self.recommendations is None:
            targets = pipeline | "Ids" >> beam.Create([(item, None) for item in self.item_ids])
        else:
            base = FileSystems.join(self.recommendations, f"{RECOMMENDATIONS_PREFIX}-*")
            if fileio.glob(base + ".parquet"):
                records = pipeline | "ReadParquet" >> beam.io.ReadFromParquet(base + ".parquet")
            else:
                records = (pipeline | "ReadJsonLines" >> beam.io.ReadFromText(base + ".jsonl")
                           | "Parse" >> beam.Map(json.loads))
            personalise = self.personalise
            targets = records | "Targets" >> beam.FlatMap(lambda r: targets_of(r, personalise))
        return targets | "Distinct" >> beam.Distinct()


def prompt_key(fingerprint: str, text: str) -> str:
    return hashlib.sha256(f"{fingerprint}\n{text}".encode()).hexdigest()[:24]


class ToPromptFn(beam.DoFn):
    """``(item_id, because_id)`` -> ``(prompt hash, (target, CopyRequest))``; ids missing from the
    catalogue are counted (``unknown_items``) and dropped."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def process(self, target: Target, titles: dict[str, str]):
        item, because = target
        title = titles.get(item)
        because_title = titles.get(because) if because is not None else None
        if title is None or (because is not None and because_title is None):
            counter("unknown_items").inc()
            return
        text = instruction(title, because_title)
        yield prompt_key(self.fingerprint, text), (target, CopyRequest(title, text, because_title))


class ReadCacheFn(beam.DoFn):
    """``(hash, [(target, request)])`` -> ``(hash, verdict, targets)`` when answered before, else
    (tagged ``generate``) ``((hash, targets), request)`` for RunInference."""

    def __init__(self, cache_dir: str):
        self.cache_dir = cache_dir

    def process(self, element):
        key, pairs = element
        pairs = list(pairs)
        targets = [target for target, _ in pairs]
        path = fileio.join(self.cache_dir, f"{key}.json")
        cached = fileio.read_json(path) if fileio.exists(path) else None
        if cached is not None:
            counter("prompts_cached").inc()
            yield key, cached["verdict"], targets
        else:
            yield beam.pvalue.TaggedOutput("generate", ((key, tuple(targets)), pairs[0][1]))


class WriteCacheFn(beam.DoFn):
    """``((hash, targets), PredictionResult)`` -> writes ``cache/<hash>.json`` atomically, then
    yields ``(hash, verdict, targets)``; counts ``generated`` and ``template`` prompts."""

    def __init__(self, cache_dir: str, generator: str):
        self.cache_dir = cache_dir
        self.generator = generator

    def process(self, element):
        (key, targets), result = element
        verdict = result.inference
        fileio.write_json(fileio.join(self.cache_dir, f"{key}.json"),
                          {"generator": self.generator, "instruction": result.example.instruction, "verdict": verdict})
        counter(f"prompts_{verdict['source']}").inc()
        yield key, verdict, list(targets)


def to_records(element, titles: dict[str, str]):
    """``(hash, verdict, targets)`` -> one output record per target."""
    key, verdict, targets = element
    for item, because in targets:
        counter("records").inc()
        yield {"item_id": item, "because_id": because, "title": titles[item], "pitch": verdict["pitch"],
               "source": verdict["source"], "failed": verdict["failed"], "samples": verdict["samples"],
               "score": verdict["score"], "prompt": key}


@dataclasses.dataclass(frozen=True)
class CopyOptions:
    """Where ``tfrec copy`` reads and caches.

    Attributes:
      recommendations: a ``tfrec batch`` output folder; None: ``item_ids``.
      item_ids: the products to write for, when no ``recommendations``.
      cache_dir: the answers' cache; None: ``OUTPUT/cache``.
      num_shards: output files (1 by default: one file a server reads).
    """

    recommendations: str | None = None
    item_ids: tuple[str, ...] = ()
    cache_dir: str | None = None
    num_shards: int = 1


def sampling_of(config: Config) -> Sampling:
    c = config.copy
    return Sampling(c.samples, c.max_length, c.top_k, c.temperature, c.seed, c.prompts_per_call)


def build_pipeline(pipeline: beam.Pipeline, titles: dict[str, str], handler: CopyModelHandler, fingerprint: str,
                   output: str, cache_dir: str, options: CopyOptions, personalise: bool) -> None:
    """Adds every step of the job to ``pipeline``, writing into ``output``."""
    catalogue = pipeline | "Catalogue" >> beam.Create(sorted(titles.items()))
    titles_side = beam.pvalue.AsDict(catalogue)
    looked_up = (
        pipeline
        | "ReadTargets" >> ReadTargets(options.recommendations, options.item_ids, personalise)
        | "ToPrompts" >> beam.ParDo(ToPromptFn(fingerprint), titles_side)
        | "GroupByPrompt" >> beam.GroupByKey()
        | "ReadCache" >> beam.ParDo(ReadCacheFn(cache_dir)).with_outputs("generate", main="cached")
    )
    generated = (
        looked_up.generate
        | "Generate" >> RunInference(KeyedModelHandler(handler))
        | "WriteCache" >> beam.ParDo(WriteCacheFn(cache_dir, handler.generator))
    )
    (
        (looked_up.cached, generated)
        | "Answers" >> beam.Flatten()
        | "ToRecords" >> beam.FlatMap(to_records, titles_side)
        | "ToJson" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False))
        | "WriteCopy" >> beam.io.WriteToText(FileSystems.join(output, COPY_PREFIX), file_name_suffix=".jsonl",
                                             num_shards=options.num_shards)
    )


def catalogue_titles(export_dir: str | None = None, data_dir: str | None = None) -> dict[str, str]:
    """Item id -> product text: from an export folder's ``items.tsv``, else a data folder's catalogue."""
    if export_dir is not None:
        from serving.items import read_items

        return read_items(export_dir)
    if data_dir is None:
        raise TfrecError("tfrec copy needs the catalogue: give --export or --data")
    from tfrec.data.readers import load_catalogue

    catalogue = load_catalogue(data_dir)
    return dict(zip(catalogue.ids.tolist(), catalogue.texts.tolist()))


def clear_outputs(output: str) -> None:
    """Deletes the shards and summary an earlier job left in ``output`` (the cache stays)."""
    patterns = [FileSystems.join(output, f"{COPY_PREFIX}-*"), FileSystems.join(output, COPY_SUMMARY_FILE)]
    stale = [m.path for result in FileSystems.match(patterns) for m in result.metadata_list]
    if stale:
        FileSystems.delete(stale)


def run_copy(config: Config, output: str | os.PathLike, export_dir: str | None = None, data_dir: str | None = None,
             options: CopyOptions = CopyOptions(), beam_args: Sequence[str] = (),
             handler: CopyModelHandler | None = None) -> dict[str, Any]:
    """Runs the job with Beam options ``beam_args``; returns (and writes) ``copy_summary.json``'s content.

    Args:
        config: the run's config (its ``copy`` section).
        output: the folder to write into (local or a bucket).
        export_dir: an export folder, whose ``items.tsv`` gives the titles.
        data_dir: a data folder of ``tfrec preprocess``, read for the titles when no ``export_dir``.
        options: what to write for, the cache, the shards.
        beam_args: Beam pipeline options (``--runner=...`` and the runner's own).
        handler: the model handler; None: built from ``config.copy``.
    """
    if (options.recommendations is None) == (not options.item_ids):
        raise TfrecError("tfrec copy writes for a `tfrec batch` output (--recommendations) or for --items, one of them")
    if options.recommendations is not None and not fileio.glob(
            fileio.join(options.recommendations, f"{RECOMMENDATIONS_PREFIX}-*")):
        raise TfrecError(f"no {RECOMMENDATIONS_PREFIX}-* files in {options.recommendations}: "
                         "is it the output folder of `tfrec batch`?")
    output = os.fspath(output)
    titles = catalogue_titles(export_dir, data_dir)
    c = config.copy
    handler = handler or CopyModelHandler(c.generator, c.model_cache, sampling_of(config), c.scorer)
    fingerprint = prompt_key(f"{handler.generator}|{dataclasses.astuple(handler.sampling)}|{handler.scorer}|"
                             f"rules {RULES_VERSION}|prompts {PROMPT_VERSION}", "")
    cache_dir = options.cache_dir or fileio.join(output, COPY_CACHE_DIR)
    fileio.makedirs(cache_dir)
    clear_outputs(output)
    beam_options = pipeline_options(beam_args)
    log.info(f"== copy {config.name}: {handler.generator} -> {output} (cache: {cache_dir})")
    start = time.perf_counter()
    pipeline = beam.Pipeline(runner=local_runner(beam_options), options=beam_options)
    build_pipeline(pipeline, titles, handler, fingerprint, output, cache_dir, options, c.personalise)
    result = pipeline.run()
    result.wait_until_finish()
    counters = job_counters(result)
    get = lambda name: counters.get(f"{METRICS_NAMESPACE}/{name}", 0)  # noqa: E731
    summary = {
        "generator": handler.generator, "sampling": dataclasses.asdict(handler.sampling),
        "personalise": c.personalise, "cache": cache_dir,
        "source": {"recommendations": options.recommendations} if options.recommendations else
                  {"items": len(options.item_ids)},
        "records": get("records"), "unknown_items": get("unknown_items"),
        "prompts_generated": get("prompts_generated"), "prompts_template": get("prompts_template"),
        "prompts_cached": get("prompts_cached"), "seconds": round(time.perf_counter() - start, 3),
        "files": sorted(m.path for m in FileSystems.match(
            [FileSystems.join(output, f"{COPY_PREFIX}-*")])[0].metadata_list),
        "counters": counters,
    }
    if not summary["records"]:
        raise TfrecError(f"no pitch was written: {summary['unknown_items']} ids are not in the catalogue")
    fileio.write_json(fileio.join(output, COPY_SUMMARY_FILE), summary)
    log.info(f"pitches: {summary['records']:,} records from {summary['prompts_generated']:,} generated, "
             f"{summary['prompts_template']:,} template and {summary['prompts_cached']:,} cached prompts "
             f"in {summary['seconds']:,.1f} s")
    return summary

