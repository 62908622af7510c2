"""The epoch loop: the distributed training step, a validation pass and a checkpoint after each epoch.

Each epoch reads the training examples in an order fixed by ``seed + epoch`` and ends
with an exact validation pass, which keeps the best weights, and a checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfrec import fileio
from tfrec.config import Config
from tfrec.data import EvalSplit
from tfrec.data.sequences import batch_pairs
from tfrec.errors import TfrecError
from tfrec.evaluation.ranking import evaluate_split, model_scorer
from tfrec.layout import BEST_WEIGHTS, LOGS_DIR
from tfrec.models.two_tower import TwoTowerModel
from tfrec.tasks import NegativeSampler, RetrievalTask, mixed_log_q
from tfrec.topk import SCORE_BUDGET
from tfrec.training.state import TrainingState
from tfrec.training.training_data import TrainingData

log = logging.getLogger(__name__)


_SHARD_BY_DATA = tf.data.Options()
_SHARD_BY_DATA.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
"""Workers split batches, not files: a small shop's data may be a single shard."""


def reseed(model: keras.Model, seed: int) -> None:
    """Sets every random-seed state of the model (dropout, id dropout) from ``seed``.

    Keras keeps these states in variables that a ``tf.train.Checkpoint`` does not track;
    reseeding at the start of each epoch from ``seed + epoch`` makes an epoch's random
    draws the same whether the run was resumed or not.
    """
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for i, state in enumerate(states):
        state.assign(np.array([seed * 1_000_003 + i, 0], dtype=state.dtype))


def validate(model: TwoTowerModel, split: EvalSplit, cold: np.ndarray, ks, batch_size: int,
             score_budget: int = SCORE_BUDGET) -> dict:
    """Exact validation metrics of the model alone (two-tower similarity)."""
    scorer = model_scorer(model, model.item_vectors(), repeat=False)
    return evaluate_split({"model": scorer}, split, model.num_items, cold, ks, batch_size,
                          score_budget=score_budget).metrics


def make_train_step(config: Config, data: TrainingData, state: TrainingState,
                    strategy: tf.distribute.Strategy) -> Callable:
    """The distributed training step: a batch in, the mean loss over every replica out."""
    cfg, model = config.train, state.model
    task = RetrievalTask(
        temperature=cfg.temperature,
        remove_accidental_hits=cfg.remove_accidental_hits,
        log_q=(mixed_log_q(data.target_counts, round(data.targets_per_batch), cfg.num_random_negatives,
                           cfg.negative_sampling)
               if cfg.logq_correction and not data.full_softmax else None),
        members=config.model.members,
    )
    draw_negatives = NegativeSampler(data.target_counts, cfg.negative_sampling)
    variables = state.trainable_variables
    replicas = strategy.num_replicas_in_sync
    trained = model.item_tower.trained_dim  # a fixed text part after it is not trained

    def queries_and_targets(batch):
        """Each (query, target item) pair of a batch: query vectors, target ids, loss groups."""
        if data.causal:
            items, pair_query, pair_item = batch
            owners, targets, groups = batch_pairs(items, pair_query, pair_item, cfg.sequence_negatives)
            queries = tf.reshape(model.sequence_queries(items, training=True), [-1, model.item_tower.output_dim])
            return tf.gather(queries, owners)[:, :trained], targets, groups
        # One query per window, shared by its targets (the items of its group).
        histories, targets = batch
        present = tf.where(targets >= 0)
        owners = present[:, 0]
        queries = model.query_vectors(histories, training=True)[:, :trained]
        return tf.gather(queries, owners), tf.gather_nd(targets, present), owners

    def replica_step(*batch):
        with tf.GradientTape() as tape:
            queries, items, owners = queries_and_targets(batch)
            if data.full_softmax:
                all_items = tf.range(model.num_items, dtype=tf.int64)
                catalogue_vectors = model.item_tower(all_items, training=True)[:, :trained]
                per_target = task.full_softmax(queries, catalogue_vectors, items, query_ids=owners)
            else:
                candidates = model.item_tower(items, training=True)[:, :trained]
                negatives = negative_ids = None
                if cfg.num_random_negatives:
                    negative_ids = draw_negatives(state.sampler, cfg.num_random_negatives)
                    negatives = model.item_tower(negative_ids, training=True)[:, :trained]
                per_target = task(queries, candidates, items, negatives, negative_ids, query_ids=owners)
            loss = tf.reduce_sum(per_target) / tf.cast(tf.size(items) * replicas, tf.float32)
        state.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function(reduce_retracing=True)  # causal batches vary in width
    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return train_step


def run_epochs(config: Config, data: TrainingData, state: TrainingState, strategy: tf.distribute.Strategy,
               work_dir: str, history_path: str | None) -> int:
    """Trains until ``train.epochs`` are done or early stopping ends the run.

    Each epoch reads the examples in an order fixed by ``seed + epoch``, then is measured
    on the validation users, keeps the best weights (``best.weights.h5`` in ``work_dir``)
    and ends with a checkpoint.

    Args:
        config: the run's config.
        data: the run's ``TrainingData``.
        state: the ``TrainingState``, fresh or restored; updated in place.
        strategy: the distribution strategy ``state`` was built under.
        work_dir: the folder of the best weights and of TensorBoard's ``logs/``.
        history_path: where the chief writes ``history.json`` after each epoch; ``None``
            on other workers.

    Returns:
        The number of examples trained on by this call (a resumed run counts only its own).
    """
    cfg = config.train
    train_step = make_train_step(config, data, state, strategy)
    writer = tf.summary.create_file_writer(fileio.join(work_dir, LOGS_DIR))
    trained_examples = 0
    if state.warm_start is not None and int(state.epoch.numpy()) == 0:
        measure_warm_start(config, data, state, work_dir)
    while int(state.epoch.numpy()) < cfg.epochs:
        e = int(state.epoch.numpy())
        reseed(state.model, cfg.seed + e)
        batches = data.epoch_batches(cfg.shuffle_buffer, cfg.seed + e).with_options(_SHARD_BY_DATA)
        # A terminal gets Keras' per-step bar; a file or a pipe gets one line per epoch (``_end_epoch``).
        bar = history_path is not None and sys.stdout.isatty()
        if bar:
            log.info(f"Epoch {e + 1}/{cfg.epochs}")
        loss, seconds = _train_epoch(train_step, strategy.experimental_distribute_dataset(batches),
                                     data.steps_per_epoch, e, bar)
        trained_examples += data.steps_per_epoch * data.batch_size
        record = _end_epoch(config, data, state, e, loss, seconds, work_dir)
        with writer.as_default(step=e + 1):
            for key, value in record.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        state.checkpoint_epoch()
        if history_path is not None:
            fileio.write_json(history_path, state.history)
        if cfg.early_stopping_patience and int(state.bad_epochs.numpy()) >= cfg.early_stopping_patience:
            log.info(f"Early stop: no better validation {cfg.early_stopping_metric} "
                     f"for {cfg.early_stopping_patience} epoch(s)")
            break
    return trained_examples


def _train_epoch(train_step: Callable, batches, steps: int, epoch: int, bar: bool) -> tuple[float, float]:
    """Runs one epoch's steps (with a per-step progress ``bar``); returns the mean loss and the seconds taken."""
    progress = keras.utils.Progbar(steps, stateful_metrics=["loss"], verbose=1 if bar else 0)
    total, start = 0.0, time.time()
    for step, batch in enumerate(batches):
        loss = float(train_step(batch))
        if not np.isfinite(loss):
            raise TfrecError(f"training diverged at epoch {epoch + 1}, step {step + 1} (loss {loss}); "
                             "lower train.learning_rate or raise train.temperature")
        total += loss
        progress.update(step + 1, [("loss", total / (step + 1))])
    return total / steps, time.time() - start


def _end_epoch(config: Config, data: TrainingData, state: TrainingState, e: int, loss: float, seconds: float,
               work_dir: str) -> dict:
    """Measures epoch ``e`` on validation, records it in the history and keeps the best weights."""
    metric = config.train.early_stopping_metric
    result = validate(state.model, data.epoch_valid, data.catalogue.cold_start, config.eval.ks,
                      config.eval.batch_size, config.eval.score_budget)
    explore = result["explore"]["model"]
    examples = data.steps_per_epoch * data.batch_size
    record = {"epoch": e + 1, "loss": loss, "seconds": seconds,
              "examples_per_second": examples / seconds,
              "targets_per_second": data.steps_per_epoch * data.targets_per_batch / seconds,
              **{f"valid_explore_{k}": v for k, v in explore.items() if k != "users"},
              **{f"valid_all_{k}": v for k, v in result["all"]["model"].items() if k != "users"}}
    state.history.append(record)
    current = _metric(explore, metric)
    improved = _keep_if_best(state, current, work_dir)
    if not improved:
        state.bad_epochs.assign_add(1)
    log.info(f"Epoch {e + 1}/{config.train.epochs}: loss {loss:.4f}  valid (explore) {metric} {current:.4f}  "
             f"recall@10 {explore['recall@10']:.4f}  ndcg@10 {explore['ndcg@10']:.4f}"
             f"{'  (best)' if improved else ''}  {record['examples_per_second']:,.0f} examples/s  {seconds:.1f}s")
    return record


def _metric(explore: dict, metric: str) -> float:
    if metric not in explore:
        raise TfrecError(f"train.early_stopping_metric {metric!r} is not a metric; try recall@20 or ndcg@10")
    return explore[metric]


def _keep_if_best(state: TrainingState, current: float, work_dir: str) -> bool:
    """Saves the weights as the best (``best.weights.h5``) when ``current`` beats the best so far."""
    if current <= float(state.best.numpy()):
        return False
    state.best.assign(current)
    state.bad_epochs.assign(0)
    with fileio.local_staging(fileio.join(work_dir, BEST_WEIGHTS)) as staged:  # whole or not at all
        state.model.save_weights(staged)
    return True


def measure_warm_start(config: Config, data: TrainingData, state: TrainingState, work_dir: str) -> None:
    """Measures the warm-started model before its first step, as the best so far: a warm run
    keeps the previous weights unless an epoch beats them on validation."""
    metric = config.train.early_stopping_metric
    result = validate(state.model, data.epoch_valid, data.catalogue.cold_start, config.eval.ks,
                      config.eval.batch_size, config.eval.score_budget)
    current = _metric(result["explore"]["model"], metric)
    _keep_if_best(state, current, work_dir)
    state.warm_start = dataclasses.replace(state.warm_start, valid_before=current)
    log.info(f"Warm start, before training: valid (explore) {metric} {current:.4f}")
