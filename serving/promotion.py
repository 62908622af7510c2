"""The promotion gate: a new export version goes live only if it is not significantly worse
than the version being served.

Before ``tfrec export`` publishes a version into a folder that already serves one, both
are evaluated on the new data's test split (its users, sampled as ``tfrec evaluate``
samples them, and its catalogue), each through its ``tfrec_retrieve`` SavedModel: the new
one as staged, the served one as published. So each ranks exactly as it is served, with
its own item vectors, repeat-aware term, history cut and removed items, and nothing is
retrained or rebuilt. A catalogue item the served version does not hold (a product new
since) is ranked last by it, as it cannot return it. Ranking, metrics and the paired
bootstrap over users are those of ``tfrec evaluate`` (``tfrec.evaluation``).

The new version is refused when the interval of ``new - served`` on
``export.promotion_metric`` lies wholly below ``-export.promotion_margin x served``:
significantly worse, by more than the margin. ``promotion.json`` in the export folder
records the decision, both versions' figures under both protocols with their intervals,
and the difference with its interval; a refusal raises :class:`PromotionRefused` (the
CLI's exit code 3) and publishes nothing, and ``force`` publishes anyway and says so.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import time

import numpy as np
import tensorflow as tf

from serving.saved_model import newest_version
from tfrec import fileio
from tfrec.config import Config
from tfrec.data import load_catalogue, load_eval_split, sample_users
from tfrec.errors import PromotionRefused, TfrecError
from tfrec.evaluation.ranking import ScoreFn, evaluate_split
from tfrec.evaluation.segments import MODEL, analyse_split
from tfrec.layout import PROMOTION_FILE

log = logging.getLogger(__name__)

NEW, SERVED = MODEL, "served"
REPORTED_PROTOCOLS = ("all", "explore")
UNRANKED = -np.inf
"""Score of a catalogue item a version does not return (it does not hold it, or it was removed)."""


def served_version(export_dir: str, model: str) -> str | None:
    """The newest published version folder of ``model`` in ``export_dir``, or ``None``."""
    folder = fileio.join(export_dir, model)
    if not fileio.isdir(folder) or not any(v.isdigit() for v in fileio.listdir(folder)):
        return None
    return newest_version(folder)


def retrieve_scorer(version_dir: str, item_ids: np.ndarray, max_history: int) -> ScoreFn:
    """Scores of every item of ``item_ids`` as the ``tfrec_retrieve`` at ``version_dir`` ranks them.

    Histories (indices into ``item_ids``) are sent as the model's string ids; the model
    returns its whole catalogue ranked, with its served scores, and each item is put back
    in its column. Items it does not return score ``UNRANKED``.
    """
    loaded = tf.saved_model.load(os.fspath(version_dir))
    ids = np.asarray(item_ids, dtype=object).astype(str)
    columns = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids), tf.range(len(ids), dtype=tf.int64)), -1)
    everything = tf.constant(np.iinfo(np.int32).max, tf.int32)  # capped by the model at its catalogue's size

    def scores(histories: list[np.ndarray]) -> np.ndarray:
        width = max(1, min(max_history, max(len(h) for h in histories)))
        padded = np.full((len(histories), width), "", dtype=object)
        for row, history in enumerate(histories):
            recent = history[-width:]
            if len(recent):
                padded[row, width - len(recent):] = ids[recent]
        out = loaded.serve(history=tf.constant(padded), k=everything, exclude_history=tf.constant(False))
        column = columns.lookup(out["item_ids"])
        found = column >= 0
        rows = tf.broadcast_to(tf.range(len(histories), dtype=tf.int64)[:, None], tf.shape(column, tf.int64))
        where = tf.stack([tf.boolean_mask(rows, found), tf.boolean_mask(column, found)], -1)
        dense = tf.fill([len(histories), len(ids)], tf.constant(UNRANKED, tf.float32))
        return tf.tensor_scatter_nd_update(dense, where, tf.boolean_mask(out["scores"], found)).numpy()

    scores.loaded = loaded  # the function reads the loaded object's variables: keep it alive
    return scores


def compare_versions(config: Config, data_dir: str, new_dir: str, served_dir: str) -> dict:
    """Both retrieve versions ranked on ``data_dir``'s test split: its metrics, intervals and
    ``vs_baselines[protocol]["served"]`` (new minus served, paired), as ``tfrec evaluate`` writes them."""
    catalogue = load_catalogue(data_dir, config.data.items.categorical_fields)
    whole = load_eval_split(data_dir, "test")
    split = sample_users(whole, config.eval.max_users, config.train.seed)
    if not len(split):
        raise TfrecError(f"{data_dir}: the test split has no users to compare the versions on")
    max_history = config.export.max_history
    scorers = {NEW: retrieve_scorer(new_dir, catalogue.ids, max_history),
               SERVED: retrieve_scorer(served_dir, catalogue.ids, max_history)}
    ranked = evaluate_split(scorers, split, len(catalogue), catalogue.cold_start, config.eval.ks,
                            config.eval.batch_size, keep_per_user=True, score_budget=config.eval.score_budget)
    result = ranked.metrics | analyse_split(ranked.per_user, split, config.eval.bootstrap_resamples,
                                            config.train.seed, config.eval.min_segment_users, segments=False)
    result["items"], result["users_total"] = len(catalogue), len(whole)
    return result


def decide(config: Config, comparison: dict, force: bool = False) -> dict:
    """The gate's decision on a comparison (``compare_versions``), as ``promotion.json`` records it."""
    protocol, metric = config.export.promotion_metric.split(".", 1)
    margin = config.export.promotion_margin
    new, served = (_clean(comparison[protocol][s].get(metric)) for s in (NEW, SERVED))
    difference = comparison["vs_baselines"][protocol].get(SERVED, {}).get(metric)
    low, high = difference["ci"] if difference else (None, None)
    threshold = 0.0 - margin * served if served is not None else None
    worse = None not in (high, threshold) and high < threshold
    if worse:
        reason = (f"significantly worse than the served version on {protocol} {metric}: the 95% interval of the "
                  f"difference [{low:+.4f}, {high:+.4f}] lies below {threshold:+.4f} (margin {margin:g})")
    elif high is None:
        reason = f"no {protocol} user to compare the versions on; published without a comparison"
    else:
        reason = (f"not significantly worse on {protocol} {metric}: the 95% interval of the difference "
                  f"[{low:+.4f}, {high:+.4f}] reaches {threshold:+.4f} or above (margin {margin:g})")
    decision = "forced" if worse and force else "refused" if worse else "published"
    figures = {side: {"metrics": {p: _plain(comparison[p][scorer]) for p in REPORTED_PROTOCOLS},
                      "ci": {p: comparison["ci"][p].get(scorer, {}) for p in REPORTED_PROTOCOLS}}
               for side, scorer in (("new", NEW), ("served", SERVED))}
    return {
        "decision": decision, "published": decision != "refused", "forced": decision == "forced",
        "reason": reason + ("; published anyway (--force)" if decision == "forced" else ""),
        "metric": config.export.promotion_metric, "margin": margin, "threshold": threshold,
        "new_value": new, "served_value": served, "difference": difference,
        "users": comparison["users"], "users_total": comparison.get("users_total"), "items": comparison["items"],
        "bootstrap": comparison["bootstrap"], **figures,
        "vs_served": {p: comparison["vs_baselines"][p].get(SERVED, {}) for p in REPORTED_PROTOCOLS},
    }


def require_data(export_dir: str, served: str, data_dir: str | None, force: bool) -> None:
    """A clear error, before any work, when the gate would have nothing to decide on."""
    if data_dir is None and not force:
        number = os.path.basename(served.rstrip("/"))
        raise TfrecError(f"{export_dir} already serves version {number}: give the data folder the new model was "
                         "trained on (--data DIR), whose test split decides whether the new version may replace "
                         "it, or --force to publish without comparing")


def promotion_gate(config: Config, export_dir: str, new_retrieve: str, served: str, version: int,
                   data_dir: str | None, model_dir: str, force: bool = False) -> dict:
    """Decides whether the staged ``version`` may be published into ``export_dir``, which serves
    another; returns the record it writes to ``export_dir/promotion.json``.

    Args:
        new_retrieve: the staged ``tfrec_retrieve`` SavedModel of the new version.
        served: the served version's ``tfrec_retrieve`` folder (``served_version``).
        data_dir: the data folder the new model was trained on; its test split decides.
        model_dir: the new model's folder (recorded).
        force: publish even a significantly worse version, and record that it was forced.

    Raises:
        PromotionRefused: the new version is significantly worse (and not ``force``).
    """
    served_number = int(os.path.basename(served.rstrip("/")))
    started = time.time()
    base = {"version": version, "served_version": served_number, "model": model_dir, "data": data_dir,
            "decided_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    if data_dir is None:
        require_data(export_dir, served, data_dir, force)
        record = {**base, "decision": "forced", "published": True, "forced": True,
                  "reason": "published without a comparison (--force, no --data)"}
    else:
        log.info("promotion gate: version %d against served version %d on %s's test split (%s)", version,
                 served_number, data_dir, config.export.promotion_metric)
        comparison = compare_versions(config, os.fspath(data_dir), new_retrieve, served)
        record = {**base, **decide(config, comparison, force)}
    record["seconds"] = round(time.time() - started, 2)
    fileio.write_json(fileio.join(export_dir, PROMOTION_FILE), record)
    log.log(logging.WARNING if record["forced"] else logging.INFO, "%s", format_decision(record))
    if record["decision"] == "refused":
        raise PromotionRefused(f"version {version} was not published, version {served_number} stays served:\n"
                               + format_decision(record))
    return record


def format_decision(record: dict) -> str:
    """The decision in a few lines, for the CLI and logs."""
    head = (f"promotion gate: version {record['version']} {record['decision'].upper()} "
            f"(served: version {record['served_version']}): {record['reason']}")
    if record.get("new_value") is None and record.get("served_value") is None:
        return head
    metric = record["metric"]
    lines = [head, f"  {metric}: new {_number(record['new_value'])}, served {_number(record['served_value'])} "
                   f"on {record['users']:,} test users and {record['items']:,} items"]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _clean(value) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _plain(metrics: dict) -> dict:
    return {k: _clean(v) if isinstance(v, float) else v for k, v in metrics.items()}
