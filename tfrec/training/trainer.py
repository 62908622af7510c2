"""The training loop: in-batch softmax, a checkpoint every epoch, resume after a kill.

One custom loop serves every ``tf.distribute`` strategy (the default one, one-machine
``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``): Keras 3's ``Model.fit`` does
not run under ``MultiWorkerMirroredStrategy``, while a ``tf.function`` step driven by
``strategy.run`` does.

Each epoch reads the training examples in an order fixed by ``seed + epoch`` and ends
with a checkpoint (model, optimizer, negative-sampling generator, epoch counter and
early-stopping state) and an exact validation pass. Running the same command again
after an interruption restores the last checkpoint and replays the interrupted epoch
from its start, so a resumed run ends where an uninterrupted one would.

Outputs in the model folder: ``model.keras`` (the best epoch, with the fitted repeat
term), ``vectors.npz`` (catalogue and test-user vectors for the index), ``checkpoints/``,
``logs/`` (TensorBoard), ``history.json`` (per-epoch loss and validation metrics), and
``catalogue/`` (a copy of the items, so later stages need only the model folder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfrec import fileio, layout
from tfrec.config import Config, save_config
from tfrec.config.derived import derived_settings, resolve
from tfrec.data import (
    Catalogue,
    EvalSplit,
    load_catalogue,
    load_eval_split,
    load_stats,
    pad_histories,
    sample_users,
    shuffled_batches,
    train_examples,
)
from tfrec.data.sequences import batch_pairs, causal_sequences, sequence_batches
from tfrec.data.sequences import target_counts as sequence_target_counts
from tfrec.errors import TfrecError
from tfrec.evaluation.ranking import evaluate_split, model_scorer
from tfrec.layout import (
    BEST_WEIGHTS,
    CATALOGUE_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    LOGS_DIR,
    MODEL_FILE,
    TRAIN_SUMMARY_FILE,
    VECTORS_FILE,
)
from tfrec.models.two_tower import TwoTowerModel, build_model
from tfrec.tasks import NegativeSampler, RetrievalTask, mixed_log_q
from tfrec.topk import SCORE_BUDGET
from tfrec.training.optimizers import LazyAdam
from tfrec.training.text_weight import fit_text_weight
from tfrec.training.warm_start import PreviousModel, WarmStart

log = logging.getLogger(__name__)


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise TfrecError("train.strategy=multi_worker needs TF_CONFIG describing the cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


_SHARD_BY_DATA = tf.data.Options()
_SHARD_BY_DATA.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
"""Workers split batches, not files: a small shop's data may be a single shard."""


def weights_digest(model: keras.Model) -> str:
    """A short hash of every weight of the model."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.asarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]


def count_targets(examples: tf.data.Dataset, num_items: int) -> tuple[int, np.ndarray]:
    """The number of training examples and how often each item is a target (one pass)."""
    num_examples, counts = 0, np.zeros(num_items, np.int64)
    for _, targets in examples.batch(4096).as_numpy_iterator():
        num_examples += len(targets)
        counts += np.bincount(targets[targets >= 0], minlength=num_items)
    return num_examples, counts


def reseed(model: keras.Model, seed: int) -> None:
    """Sets every random-seed state of the model (dropout, id dropout) from ``seed``.

    Keras keeps these states in variables that a ``tf.train.Checkpoint`` does not track;
    reseeding at the start of each epoch from ``seed + epoch`` makes an epoch's random
    draws the same whether the run was resumed or not.
    """
    states = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    for i, state in enumerate(states):
        state.assign(np.array([seed * 1_000_003 + i, 0], dtype=state.dtype))


def copy_catalogue(data_dir: str, model_dir: str) -> str:
    """Copies the items, vocabulary and stats next to the model (later stages read them there)."""
    target = fileio.join(model_dir, CATALOGUE_DIR)
    for name in (layout.ITEMS_FILE, layout.VOCAB_FILE, layout.STATS_FILE, layout.CONFIG_FILE):
        if fileio.exists(fileio.join(data_dir, name)):
            fileio.copy(fileio.join(data_dir, name), fileio.join(target, name))
    return target


def validate(model: TwoTowerModel, split: EvalSplit, cold: np.ndarray, ks, batch_size: int,
             score_budget: int = SCORE_BUDGET) -> dict:
    """Exact validation metrics of the model alone (two-tower similarity)."""
    scorer = model_scorer(model, model.item_vectors(), repeat=False)
    return evaluate_split({"model": scorer}, split, model.num_items, cold, ks, batch_size,
                          score_budget=score_budget).metrics


def query_vectors(model: TwoTowerModel, histories: np.ndarray, item_vectors: tf.Tensor,
                  batch_size: int = 512) -> np.ndarray:
    """The query vectors of padded histories, ``batch_size`` users at a time.

    Args:
        model: the trained model.
        histories: item indices ``[N, H]``, left-padded with -1.
        item_vectors: the catalogue's item vectors; history items are looked up in them
            rather than run through the item tower again.
        batch_size: users per call of the user tower.

    Returns:
        The query vectors, ``[N, d]``.
    """
    if not len(histories):
        return np.zeros((0, model.item_tower.output_dim), np.float32)
    return np.concatenate([model.query_vectors(histories[i:i + batch_size], item_vectors).numpy()
                           for i in range(0, len(histories), batch_size)])


def fit_repeat_term(model: TwoTowerModel, split: EvalSplit, batch_size: int = 256,
                    score_budget: int = SCORE_BUDGET) -> float:
    """Fits the repeat-aware term's weights on the validation users.

    The users' query vectors are computed once; each fitting step scores only its own
    users against the catalogue (at most ``score_budget`` scores), so memory stays bounded
    however many users and items there are.
    """
    vectors = model.item_vectors()
    histories = pad_histories(split.histories, max(len(h) for h in split.histories))
    queries = query_vectors(model, histories, vectors, batch_size)

    def similarity(rows: np.ndarray) -> np.ndarray:
        return tf.matmul(tf.gather(queries, rows), vectors, transpose_b=True).numpy()

    return model.repeat_term.fit(similarity, histories, split.targets, score_budget=score_budget)


def _atomic_write_model(model: keras.Model, path: str) -> None:
    with fileio.local_staging(path) as staged:
        model.save(staged)


def _write_vectors(model: TwoTowerModel, catalogue_ids: np.ndarray, test: EvalSplit, path: str) -> None:
    vectors = model.item_vectors()
    queries = query_vectors(model, pad_histories(test.histories, model.max_history), vectors)
    fileio.write_npz(path, item_ids=catalogue_ids.astype(str), item_vectors=vectors.numpy(),
                     query_vectors=queries.astype(np.float32), query_user_ids=test.user_ids.astype(str))


def learning_rate_schedule(cfg, steps_per_epoch: int):
    """The configured learning rate: a constant, or warm-up then cosine decay over every epoch."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_steps, total - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=cfg.learning_rate if not warmup else 0.0,
        decay_steps=total - warmup,
        warmup_target=cfg.learning_rate if warmup else None,
        warmup_steps=warmup,
    )


def resume_fingerprint(config: Config, stats: dict) -> str:
    """What a checkpoint must have been trained with to be resumed: the data and every
    model and training setting except the epoch budget (raising it extends a run)."""
    settings = config.to_dict()
    # A schedule over every epoch depends on their number; a constant rate does not.
    free = ("early_stopping_patience",) if config.train.lr_schedule != "constant" else (
        "epochs", "early_stopping_patience")
    settings["train"] = {k: v for k, v in settings["train"].items() if k not in free}
    blob = json.dumps([settings["data"], settings["model"], settings["train"], stats.get("config_fingerprint"),
                       stats.get("rows_kept"), stats.get("examples")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass
class TrainingData:
    """What one run trains and validates on, read from a preprocessed data folder.

    Built by ``load_training_data``. ``examples`` (history windows and their targets)
    feed the default user towers; causal towers read ``sequences`` instead.
    """

    stats: dict
    catalogue: Catalogue
    valid: EvalSplit
    """Every validation user (the repeat-aware term is fitted on them)."""
    epoch_valid: EvalSplit
    """The validation users measured after each epoch (a sample with ``train.validation_users``)."""
    causal: bool
    examples: tf.data.Dataset | None
    sequences: tuple | None
    num_examples: int
    target_counts: np.ndarray
    unit: str
    """What one training example is: ``examples`` or ``sequences``."""
    batch_size: int
    steps_per_epoch: int
    targets_per_batch: float
    full_softmax: bool

    def epoch_batches(self, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
        """One epoch's batches, in an order fixed by ``seed``."""
        batches = (sequence_batches(*self.sequences, self.batch_size, seed) if self.causal else
                   shuffled_batches(self.examples, self.batch_size, shuffle_buffer, seed))
        return batches.repeat().take(self.steps_per_epoch)


def load_training_data(config: Config, data_dir: str) -> TrainingData:
    """Reads the training examples and validation users of ``data_dir``.

    Args:
        config: the run's config (``data``, ``model.user_tower`` and ``train`` are read).
        data_dir: a folder written by the preprocess stage.

    Returns:
        The ``TrainingData``, with the steps per epoch and the kind of negatives decided.

    Raises:
        TfrecError: when there is less than one batch of training examples.
    """
    cfg = config.train
    stats = load_stats(data_dir)
    catalogue = load_catalogue(data_dir, config.data.items.categorical_fields)
    valid = load_eval_split(data_dir, "valid")
    epoch_valid = valid
    if cfg.validation_users and len(valid) > cfg.validation_users:
        sample = np.random.default_rng(cfg.seed).choice(len(valid), cfg.validation_users, replace=False)
        epoch_valid = valid.subset(np.sort(sample))
    causal = config.model.user_tower.causal
    examples = sequences = None
    if causal:
        # One example per training sequence; every position of it carries a query.
        window = min(config.model.user_tower.recent_items, config.data.sequences.max_history)
        sequences = causal_sequences(data_dir, window, cfg.skip_repeat_targets)
        num_examples, target_counts = len(sequences[0]), sequence_target_counts(sequences[2], len(catalogue))
        unit = "sequences"
    else:
        examples = train_examples(data_dir, config.data.sequences.max_history, cfg.max_targets,
                                  skip_repeats=cfg.skip_repeat_targets)
        num_examples, target_counts = count_targets(examples, len(catalogue))
        unit = "examples"
    steps_per_epoch = cfg.steps_per_epoch or num_examples // cfg.batch_size
    if steps_per_epoch < 1:
        raise TfrecError(
            f"{data_dir}: {num_examples} training {unit} are fewer than one batch of {cfg.batch_size}; "
            "lower train.batch_size"
        )
    full_softmax = cfg.negatives == "full" or (
        cfg.negatives == "auto" and len(catalogue) <= cfg.full_softmax_max_items)
    data = TrainingData(
        stats=stats, catalogue=catalogue, valid=valid, epoch_valid=epoch_valid, causal=causal,
        examples=examples, sequences=sequences, num_examples=num_examples, target_counts=target_counts,
        unit=unit, batch_size=cfg.batch_size, steps_per_epoch=steps_per_epoch,
        targets_per_batch=cfg.batch_size * int(target_counts.sum()) / max(num_examples, 1),
        full_softmax=full_softmax,
    )
    _log_data(data, cfg)
    return data


def _log_data(data: TrainingData, cfg) -> None:
    negatives = ("full softmax over the catalogue" if data.full_softmax else
                 f"in-batch + {cfg.num_random_negatives} {cfg.negative_sampling} sampled negatives")
    log.info(f"{len(data.catalogue):,} items, {data.num_examples:,} training {data.unit} "
             f"({int(data.target_counts.sum()):,} target items), "
             f"{len(data.valid):,} validation users ({len(data.epoch_valid):,} measured each epoch), "
             f"{data.steps_per_epoch} steps of {data.batch_size} {data.unit} "
             f"(about {data.targets_per_batch:,.0f} targets) per epoch; {negatives}")


@dataclasses.dataclass
class TrainingState:
    """The model, its optimizer and everything a checkpoint keeps with them.

    The per-epoch ``history`` is saved in the checkpoint too (``checkpoint_epoch``), so that the two
    can never disagree after a kill; ``history.json`` is a copy for people and tools,
    never read back.
    """

    model: TwoTowerModel
    optimizer: keras.optimizers.Optimizer
    sampler: tf.random.Generator
    """The negative-sampling generator."""
    epoch: tf.Variable
    """Epochs done."""
    best: tf.Variable
    """The best validation value of the early-stopping metric so far."""
    bad_epochs: tf.Variable
    """Epochs since the last improvement."""
    saved_history: tf.Variable
    manager: tf.train.CheckpointManager
    history: list[dict]
    warm_start: WarmStart | None = None
    """What a warm start carried over from the previous model (None: from scratch)."""

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        """The towers' variables: the repeat-aware term is fitted after training (``fit_repeat_term``)."""
        return self.model.item_tower.trainable_variables + self.model.user_tower.trainable_variables

    def checkpoint_epoch(self) -> None:
        """Counts one more epoch done and saves a checkpoint of the state, history included."""
        self.epoch.assign_add(1)
        self.saved_history.assign(json.dumps(self.history))
        self.manager.save()


def build_training_state(config: Config, data: TrainingData, strategy: tf.distribute.Strategy,
                         work_dir: str, resume: bool = True, previous: PreviousModel | None = None) -> TrainingState:
    """Builds the model and optimizer under ``strategy`` and restores the last checkpoint.

    Args:
        config: the run's config.
        data: the run's ``TrainingData`` (the catalogue, the steps per epoch).
        strategy: the distribution strategy the variables are created under.
        work_dir: the folder of ``checkpoints/`` (the model folder on the chief).
        resume: continue from a checkpoint of the same data and settings; without it
            any checkpoint is discarded.
        previous: the model a warm start begins from (its weights, mapped onto this catalogue);
            None: fresh weights.

    Returns:
        The ``TrainingState``: fresh, or as the last checkpoint left it.
    """
    cfg = config.train
    with strategy.scope():
        model, warm = (build_model(config, data.catalogue, work_dir), None) if previous is None else (
            previous.build(config, data.catalogue, work_dir))
        optimizer_class = LazyAdam if cfg.optimizer == "lazy_adam" else keras.optimizers.Adam
        optimizer = optimizer_class(learning_rate_schedule(cfg, data.steps_per_epoch),
                                    weight_decay=cfg.weight_decay or None)
        optimizer.build(model.item_tower.trainable_variables + model.user_tower.trainable_variables)
        sampler = tf.random.Generator.from_seed(cfg.seed)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
    saved_history = tf.Variable("[]", dtype=tf.string, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, sampler=sampler, epoch=epoch,
                                     best=best, bad_epochs=bad_epochs, history=saved_history)
    checkpoint_dir = _checkpoint_dir(work_dir, resume_fingerprint(config, data.stats), resume)
    state = TrainingState(model=model, optimizer=optimizer, sampler=sampler, epoch=epoch, best=best,
                          bad_epochs=bad_epochs, saved_history=saved_history,
                          manager=tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2), history=[],
                          warm_start=warm)
    if warm is not None:
        log.info(f"Warm start: {warm.items_kept:,} items keep their learned rows, {warm.items_added:,} new ones "
                 f"start from their text, {warm.items_dropped:,} gone are dropped")
    if state.manager.latest_checkpoint:
        checkpoint.restore(state.manager.latest_checkpoint).assert_existing_objects_matched()
        state.history = json.loads(state.saved_history.numpy().decode("utf-8"))[: int(state.epoch.numpy())]
        log.info(f"Resumed from {state.manager.latest_checkpoint} (epoch {int(state.epoch.numpy())} done)")
    return state


def _checkpoint_dir(work_dir: str, fingerprint: str, resume: bool) -> str:
    """The checkpoint folder, emptied unless it holds checkpoints of ``fingerprint`` to resume."""
    checkpoint_dir = fileio.join(work_dir, CHECKPOINT_DIR)
    recorded = fileio.join(checkpoint_dir, "fingerprint")
    if fileio.exists(checkpoint_dir) and (
            not resume or not fileio.exists(recorded) or fileio.read_text(recorded) != fingerprint):
        log.info(f"Starting afresh: {checkpoint_dir} holds checkpoints of other data or settings" if resume
                 else f"Starting afresh: discarding {checkpoint_dir}")
        fileio.remove(checkpoint_dir)
    fileio.makedirs(checkpoint_dir)
    fileio.write_text(recorded, fingerprint)
    return checkpoint_dir


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
    current = explore.get(metric)
    if current is None:
        raise TfrecError(f"train.early_stopping_metric {metric!r} is not a metric; try recall@20 or ndcg@10")
    improved = current > float(state.best.numpy())
    if improved:
        state.best.assign(current)
        state.bad_epochs.assign(0)
        with fileio.local_staging(fileio.join(work_dir, BEST_WEIGHTS)) as staged:  # whole or not at all
            state.model.save_weights(staged)
    else:
        state.bad_epochs.assign_add(1)
    log.info(f"Epoch {e + 1}/{config.train.epochs}: loss {loss:.4f}  valid (explore) {metric} {current:.4f}  "
             f"recall@10 {explore['recall@10']:.4f}  ndcg@10 {explore['ndcg@10']:.4f}"
             f"{'  (best)' if improved else ''}  {record['examples_per_second']:,.0f} examples/s  {seconds:.1f}s")
    return record


def finish_training(config: Config, data: TrainingData, state: TrainingState, work_dir: str) -> dict:
    """Loads the best epoch's weights, then fits the text term's weight and the repeat-aware
    term on validation; returns what was fitted, for the training summary."""
    model = state.model
    model.load_weights(fileio.join(work_dir, BEST_WEIGHTS))
    fitted = {}
    if model.user_tower.text_dim:
        measured = fit_text_weight(model, data.epoch_valid, config.train.early_stopping_metric,
                                   score_budget=config.eval.score_budget)
        fitted = {"text_weight": round(float(model.user_tower.text_weight.numpy()), 3),
                  "text_weight_validation": {str(w): v for w, v in measured.items()}}
    repeat_term = model.repeat_term
    if repeat_term is not None:
        nll = fit_repeat_term(model, sample_users(data.valid, config.eval.max_users, config.train.seed),
                              score_budget=config.eval.score_budget)
        weights = repeat_term.feature_weights.numpy().round(3).tolist()
        log.info(f"Repeat-aware term fitted on validation: scale {float(repeat_term.scale.numpy()):.2f}, "
                 f"weights {weights}, nll {nll:.3f}")
    return fitted


def training_summary(config: Config, state: TrainingState, seconds: float, trained_examples: int) -> dict:
    """What ``train_summary.json`` holds: epochs, the best epoch and its value, speed."""
    metric, history = config.train.early_stopping_metric, state.history
    return {
        "epochs_run": len(history),
        "best_epoch": 1 + int(np.argmax([h[f"valid_explore_{metric}"] for h in history])) if history else None,
        f"best_valid_explore_{metric}": float(state.best.numpy()),
        "examples_per_second": float(np.median([h["examples_per_second"] for h in history])) if history else None,
        "seconds_this_run": seconds,
        "examples_this_run": trained_examples,
        **({"warm_start": state.warm_start.to_dict()} if state.warm_start is not None else {}),
    }


def write_outputs(model: TwoTowerModel, data: TrainingData, summary: dict, data_dir: str, output_dir: str) -> None:
    """Writes ``model.keras``, ``vectors.npz`` (catalogue and test users) and ``train_summary.json``."""
    _atomic_write_model(model, fileio.join(output_dir, MODEL_FILE))
    _write_vectors(model, data.catalogue.ids, load_eval_split(data_dir, "test"), fileio.join(output_dir, VECTORS_FILE))
    fileio.write_json(fileio.join(output_dir, TRAIN_SUMMARY_FILE), summary)
    log.info(f"Model written to {fileio.join(output_dir, MODEL_FILE)}")


def train(config: Config, data_dir: str | os.PathLike, output_dir: str | os.PathLike, resume: bool = True) -> dict:
    """Trains the model on ``data_dir`` into ``output_dir``.

    The phases: the data (``load_training_data``), the training setup
    (``build_training_state``: model, optimizer, checkpoints), the epoch loop
    (``run_epochs``) and the write-out (``finish_training``, ``write_outputs``).

    Args:
        config: the run's config.
        data_dir: a folder written by the preprocess stage.
        output_dir: the model folder (see the module's docstring for what it holds).
        resume: continue a checkpoint left in ``output_dir`` by an interrupted run of the
            same data and settings; any other checkpoint is discarded.

    Returns:
        The training summary (as written to ``train_summary.json``).
    """
    data_dir, output_dir = os.fspath(data_dir), os.fspath(output_dir)
    previous = PreviousModel.open(config.train.warm_start) if config.train.warm_start else None
    if previous is not None:  # checked before anything is written
        config = previous.adapt(config)
        log.info(f"Warm start from {previous.folder} (at most {config.train.epochs} epoch(s))")
    keras.utils.set_random_seed(config.train.seed)
    tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(config.train.strategy)
    chief = is_chief(strategy)
    # Non-chief workers write their (required) checkpoint copies to a scratch folder.
    work_dir = output_dir if chief else tempfile.mkdtemp(prefix="tfrec-worker-")
    fileio.makedirs(work_dir)
    log.info(f"== train: {data_dir} -> {output_dir} ({strategy.num_replicas_in_sync} replica(s))")
    stats = load_stats(data_dir)
    derived = derived_settings(config, stats)  # a warm start took the previous model's values already
    config = resolve(config, stats)  # the run's config.yaml spells out what was derived
    if derived:
        log.info("Settings derived from the data: " + ", ".join(f"{k}={v}" for k, v in derived.items()))
    data = load_training_data(config, data_dir)
    if chief:
        copy_catalogue(data_dir, output_dir)
        save_config(config, fileio.join(output_dir, CONFIG_FILE))
    state = build_training_state(config, data, strategy, work_dir, resume, previous)
    started = time.time()
    trained_examples = run_epochs(config, data, state, strategy, work_dir,
                                  fileio.join(output_dir, HISTORY_FILE) if chief else None)
    fitted = finish_training(config, data, state, work_dir)
    summary = training_summary(config, state, time.time() - started, trained_examples) | {"derived": derived, **fitted}
    log.info(f"Weights digest: {weights_digest(state.model)} (equal on every worker of a distributed run)")
    if chief:
        write_outputs(state.model, data, summary, data_dir, output_dir)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return summary
