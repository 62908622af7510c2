"""``tfrec evaluate``: the model beside every baseline, on validation and test.

Writes ``MODEL/metrics.json`` shaped::

    {"test": {"all": {"model": {"recall@20": ...}, "most_popular": {...}, ...},
              "explore": {...}, "cold_start": {...}, "repeat_share": ..., "users": ...,
              "ci": ..., "vs_baselines": ..., "vs_protocols": ..., "segments": ..., "bootstrap": ...},
     "valid": {...}}

(the last five from ``tfrec.evaluation.segments``: 95% paired-bootstrap intervals over
users, model against each baseline, protocol against protocol, and segments, the latter
on the test split only) and prints the tables. Beside the splits: ``text_recent``, the
decay that baseline chose on validation and how, and ``similar_items``, ``tfrec_similar``'s
ranking from each user's last item under each candidate text weight, and the one kept
(``tfrec.evaluation.similar``).

A split with more than ``eval.max_users`` users is measured on a random sample of that
many (fixed by ``train.seed``): ``users`` is then the sample's size, ``users_total`` the
split's, and every interval is the sample's. Baselines are still fitted on every user's
training history.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from tfrec.config import Config
from tfrec.config.derived import resolve
from tfrec.data import Catalogue, EvalSplit, load_catalogue, load_eval_split, load_stats, sample_users
from tfrec.errors import TfrecError
from tfrec.evaluation import similar
from tfrec.evaluation.baselines import Als, Baseline, ItemCooccurrence, MostPopular, Repeat, TextRecent, TextZeroShot
from tfrec.evaluation.ranking import evaluate_split, format_table, model_scorer
from tfrec.evaluation.segments import analyse_split, target_segments
from tfrec.fileio import join, write_json
from tfrec.layout import CURVES_FILE, METRICS_FILE, TEXT_CACHE_DIR
from tfrec.models.text import cached_text_vectors, pretrained_pipeline
from tfrec.models.two_tower import load_model

log = logging.getLogger(__name__)

SIMILAR_FIGURES = ("recall@10", "recall@20", "ndcg@10", "users")
"""What ``metrics.json``'s ``similar_items`` records of each candidate, under ``explore``."""
TEXT_BASELINES = ("text_zero_shot", "text_recent")
"""The baselines that read the pretrained encoder's vectors of the catalogue."""


def zero_shot_text_vectors(config: Config, catalogue: Catalogue, cache_dir: str) -> np.ndarray:
    """The untrained pretrained encoder's vectors of every item text (cached)."""
    encoder = config.model.text_encoder.model_copy(update={"kind": "pretrained", "fine_tune": "frozen"})
    return cached_text_vectors(pretrained_pipeline(encoder), list(catalogue.texts), cache_dir)


def needs_text_vectors(config: Config) -> bool:
    """Whether evaluation encodes the catalogue with the pretrained encoder: for the
    ``text_zero_shot`` or ``text_recent`` baseline, or, read from the model's cache at no cost, when the model
    itself uses that encoder frozen. Those vectors also measure every list's ``ils@10``;
    without them (a scratch encoder, no text baseline) that metric is left out, which
    spares a catalogue of millions of items an encoding that takes hours on a CPU."""
    encoder = config.model.text_encoder
    frozen = encoder.kind == "pretrained" and encoder.fine_tune == "frozen"
    return any(name in config.eval.baselines for name in TEXT_BASELINES) or frozen


def make_baselines(config: Config, catalogue: Catalogue, train: EvalSplit, text_vectors: np.ndarray) -> list[Baseline]:
    """The configured baselines, fitted on the training part of every user's history.

    ``text_vectors``: the untrained encoder's vectors of the catalogue (``zero_shot_text_vectors``).
    ``text_recent`` chooses its decay on ``train``'s targets (the validation groups) by the
    early-stopping metric, on as many users as the model's text term is fitted on.
    """
    max_history = config.data.sequences.max_history
    als = config.eval.als
    factories = {
        "most_popular": MostPopular,
        "repeat": Repeat,
        "item_cooccurrence": lambda: ItemCooccurrence(max_history),
        "als": lambda: Als(als.factors, als.iterations, als.regularization, als.alpha, config.train.seed),
        "text_zero_shot": lambda: TextZeroShot(text_vectors, max_history),
        "text_recent": lambda: TextRecent(text_vectors, max_history, config.train.early_stopping_metric,
                                          max_users=config.train.validation_users, seed=config.train.seed,
                                          batch_size=config.eval.batch_size),
    }
    baselines = []
    for name in config.eval.baselines:
        started = time.time()
        baselines.append(factories[name]().fit(train, len(catalogue)))
        log.info(f"  fitted {name} in {time.time() - started:.1f}s")
    return baselines


def evaluate(config: Config, data_dir: str | os.PathLike, model_dir: str | os.PathLike) -> dict:
    """Evaluates the trained model beside the baselines on the validation and test users.

    Args:
        config: the run's config (``eval`` is read).
        data_dir: the data folder the model was trained on.
        model_dir: the trained model folder; ``metrics.json`` and ``recall_curves.json``
            are written into it.

    Returns:
        The metrics, ``{"valid": ..., "test": ...}``, as ``metrics.json`` holds them.
    """
    data_dir, model_dir = os.fspath(data_dir), os.fspath(model_dir)
    log.info(f"== evaluate: {model_dir} on {data_dir}")
    model = load_model(model_dir)
    config = resolve(config, load_stats(data_dir))  # settings derived from the data (the early-stopping metric)
    catalogue = load_catalogue(data_dir, config.data.items.categorical_fields)
    if model.num_items != len(catalogue):
        raise TfrecError(
            f"{model_dir} was trained on {model.num_items} items but {data_dir} has {len(catalogue)}: "
            "evaluate a model on the data it was trained on"
        )
    valid = load_eval_split(data_dir, "valid")
    test = load_eval_split(data_dir, "test")
    # One set of text vectors serves the text baselines and every list's intra-list similarity.
    text_vectors = None
    if needs_text_vectors(config):
        text_vectors = zero_shot_text_vectors(config, catalogue, join(model_dir, TEXT_CACHE_DIR))
    else:
        log.info("ils@10 is not measured: no text baseline is among eval.baselines and the model's text "
                 "encoder is not the pretrained one, so the catalogue is not encoded with it")
    baselines = make_baselines(config, catalogue, valid, text_vectors)
    item_vectors = model.item_vectors()
    scorers = {"model": model_scorer(model, item_vectors)}
    scorers.update({b.name: b.scores for b in baselines})
    similar_scorers = similar.similar_scorers(model, item_vectors.numpy())

    metrics, curves, measured = {}, {}, {name: {} for name in similar_scorers}
    for name, whole in (("valid", valid), ("test", test)):
        split = sample_users(whole, config.eval.max_users, config.train.seed)
        if len(split) < len(whole):
            log.info(f"{name}: measuring a random sample of {len(split):,} of {len(whole):,} users (eval.max_users)")
        metrics[name], curves[name] = measure_split(config, scorers, name, split, catalogue, text_vectors)
        metrics[name]["users_total"] = len(whole)
        result = evaluate_split(similar_scorers, split, len(catalogue), catalogue.cold_start, config.eval.ks,
                                config.eval.batch_size, score_budget=config.eval.score_budget)
        for scorer, values in result.metrics["explore"].items():
            measured[scorer][name] = {m: values[m] for m in SIMILAR_FIGURES}
    metrics["similar_items"] = similar.choose(model, measured)
    metrics |= {b.name: b.record() for b in baselines if isinstance(b, TextRecent)}
    write_json(join(model_dir, CURVES_FILE), curves)
    write_json(join(model_dir, METRICS_FILE), metrics)
    log.info(f"\nMetrics written to {join(model_dir, METRICS_FILE)}")
    return metrics


def measure_split(config: Config, scorers: dict, name: str, split: EvalSplit, catalogue: Catalogue,
                  text_vectors: np.ndarray | None) -> tuple[dict, dict]:
    """The metrics (with their bootstrap analysis) and recall curves of split ``name``; the test
    split's with the target segments (what the report and the model card show; validation picks
    epochs)."""
    started, segments = time.time(), name == "test"
    result = evaluate_split(scorers, split, len(catalogue), catalogue.cold_start,
                            config.eval.ks, config.eval.batch_size, item_vectors=text_vectors, keep_per_user=True,
                            target_segments=target_segments(catalogue.counts) if segments else None,
                            score_budget=config.eval.score_budget)
    metrics = result.metrics
    ranked = time.time()
    metrics |= analyse_split(result.per_user, split, config.eval.bootstrap_resamples,
                             config.train.seed, config.eval.min_segment_users, segments=segments)
    seconds = time.time() - ranked
    metrics["bootstrap"] |= {"seconds": seconds, "evaluation_seconds": ranked - started}
    log.info("%s: %d bootstrap resamples in %.2fs beside %.1fs of ranking (%.1f%%)", name,
             config.eval.bootstrap_resamples, seconds, ranked - started, 100 * seconds / (ranked - started))
    log.info(f"\n{format_table(metrics, name)}\n({time.time() - started:.1f}s)")
    return metrics, result.curves
