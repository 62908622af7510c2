"""``tfrec run``: every stage in order into one run folder, skipping what is already done.

::

    runs/<name>/data/      TFRecords, stats.json, rejected/          (preprocess)
    runs/<name>/model/     checkpoints, TensorBoard logs, metrics.json (train, evaluate)
    runs/<name>/index/     ScaNN index, index_report.json           (index)
    runs/<name>/export/    TF Serving layout, models.config, model_card.{json,md} (export)
    runs/<name>/report.md  with its images beside it                 (report)

Each stage records a fingerprint next to its outputs: a content hash of the config
sections it reads and of its inputs (the input files for preprocessing, the upstream
stage's fingerprint for the others). A stage whose recorded fingerprint matches and
whose outputs exist is skipped; ``--force`` redoes every stage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems

from tfrec import fileio
from tfrec.config import Config
from tfrec.errors import PromotionRefused
from tfrec.fileio import no_empty_folders_on_failure
from tfrec.layout import (
    DATA_DIR,
    EXPORT_DIR,
    INDEX_DIR,
    INDEX_REPORT_FILE,
    ITEMS_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_CARD_MD_FILE,
    MODEL_DIR,
    MODEL_FILE,
    MODELS_CONFIG_FILE,
    REPORT_FILE,
    STAGE_STAMP,
    STATS_FILE,
    VECTORS_FILE,
    VOCAB_FILE,
)


def input_fingerprint(patterns: list[str]) -> str:
    """A hash of the files matching ``patterns``: content for local files, size and
    modification time for remote ones (reading a bucket to hash it would cost more than
    the job)."""
    digest = hashlib.sha256()
    for pattern in patterns:
        for match in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
            digest.update(match.path.encode())
            if not fileio.is_url(match.path) and os.path.isfile(match.path):
                with open(match.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
            else:
                digest.update(f"{match.size_in_bytes}:{match.last_updated_in_seconds}".encode())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class Stage:
    name: str
    folder: str
    outputs: list[str]
    """Files that must exist (relative to ``folder``) for the stage to count as done."""
    fingerprint: str
    action: Callable[[], object]

    def done(self) -> bool:
        stamp = fileio.join(self.folder, STAGE_STAMP)
        if not fileio.exists(stamp) or not all(fileio.exists(fileio.join(self.folder, o)) for o in self.outputs):
            return False
        return fileio.read_json(stamp).get(self.name) == self.fingerprint

    def record(self) -> None:
        stamp = fileio.join(self.folder, STAGE_STAMP)
        recorded = fileio.read_json(stamp, default={})
        recorded[self.name] = self.fingerprint
        fileio.write_json(stamp, recorded)


def _chain(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def plan(config: Config, output: str, beam_args: list[str] | None = None, force: bool = False) -> list[Stage]:
    """The stages of a run, with their fingerprints."""
    from pipelines.preprocess import run_preprocess
    from serving.export import export_models
    from serving.index import build_index
    from tfrec.app.report import write_report
    from tfrec.evaluation.comparison import evaluate
    from tfrec.training.trainer import train

    data, model, index, export = (fileio.join(output, d) for d in (DATA_DIR, MODEL_DIR, INDEX_DIR, EXPORT_DIR))
    patterns = list(config.data.interactions.paths)
    if config.data.catalogue:
        patterns += config.data.catalogue.paths
    f_data = _chain(config.fingerprint("data"), input_fingerprint(patterns))
    f_model = _chain(f_data, config.fingerprint("model", "train"))
    f_eval = _chain(f_model, config.fingerprint("eval"))
    f_index = _chain(f_model, config.fingerprint("index"))
    f_export = _chain(f_index, config.fingerprint("export"))
    f_report = _chain(f_eval, f_export)
    return [
        Stage("preprocess", data, [STATS_FILE, ITEMS_FILE, VOCAB_FILE], f_data,
              lambda: run_preprocess(config, data, beam_args or [])),
        Stage("train", model, [MODEL_FILE, VECTORS_FILE], f_model,
              lambda: train(config, data, model, resume=not force)),
        Stage("evaluate", model, [METRICS_FILE], f_eval, lambda: evaluate(config, data, model)),
        Stage("index", index, [INDEX_REPORT_FILE], f_index, lambda: build_index(config, model, index)),
        Stage("export", export, [MODELS_CONFIG_FILE, MODEL_CARD_FILE, MODEL_CARD_MD_FILE], f_export,
              lambda: export_models(config, model, index, export, data_dir=data)),
        Stage("report", output, [REPORT_FILE], f_report, lambda: write_report(config, output)),
    ]


def run_all(config: Config, output: str | os.PathLike, force: bool = False, beam_args: list[str] | None = None) -> None:
    """Runs every stage into ``output`` and writes the report (``tfrec run``).

    Args:
        config: the run's config.
        output: the run folder: ``data/``, ``model/``, ``index/``, ``export/`` and ``report.md``.
        force: redo every stage; otherwise a stage whose outputs exist for the same
            config and inputs is skipped.
        beam_args: Beam pipeline options for the preprocessing job.
    """
    output = os.fspath(output)
    fileio.makedirs(output)
    started = time.time()
    stages = plan(config, output, beam_args, force)
    refused = None
    for number, stage in enumerate(stages, 1):
        header = f"[{number}/{len(stages)}] {stage.name}"
        if not force and stage.done():
            print(f"{header}: up to date, skipped ({stage.folder})")
            continue
        print(f"\n{'=' * 72}\n{header} -> {stage.folder}\n{'=' * 72}", flush=True)
        stage_start = time.time()
        try:
            with no_empty_folders_on_failure(stage.folder):
                fileio.makedirs(stage.folder)
                stage.action()
        except PromotionRefused as e:  # the report still shows the decision; the run then fails with it
            refused = e
            print(f"{header}: refused by the promotion gate; the served version stays", flush=True)
            continue
        stage.record()
        print(f"{header}: done in {time.time() - stage_start:.0f}s", flush=True)
    if refused is not None:
        raise refused
    print(f"\nRun complete in {time.time() - started:.0f}s: {output}")
    print(f"  report:  {fileio.join(output, REPORT_FILE)}")
    print(f"  serve:   tfrec serve --export {fileio.join(output, EXPORT_DIR)}")
