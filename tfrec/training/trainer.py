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

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfrec import fileio, layout
from tfrec.config import Config, save_config
from tfrec.data import (
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
from tfrec.evaluation.ranking import SCORE_BUDGET, evaluate_split, model_scorer
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
from tfrec.training.optimizers import LazyAdam

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
                          score_budget=score_budget)


def fit_repeat_term(model: TwoTowerModel, split: EvalSplit, batch_size: int = 256,
                    score_budget: int = SCORE_BUDGET) -> float:
    """Fits the repeat-aware term's weights on the validation users.

    The users' query vectors are computed once; each fitting step scores only its own
    users against the catalogue (at most ``score_budget`` scores), so memory stays bounded
    however many users and items there are.
    """
    vectors = model.item_vectors()
    width = max(len(h) for h in split.histories)
    histories = pad_histories(split.histories, width)
    queries = tf.concat([model.query_vectors(histories[i:i + batch_size], vectors)
                         for i in range(0, len(histories), batch_size)], 0)

    def similarity(rows: np.ndarray) -> np.ndarray:
        return tf.matmul(tf.gather(queries, rows), vectors, transpose_b=True).numpy()

    return model.repeat_term.fit(similarity, histories, split.targets, score_budget=score_budget)


def _atomic_write_model(model: keras.Model, path: str) -> None:
    with fileio.local_staging(path) as staged:
        model.save(staged)


def _write_vectors(model: TwoTowerModel, catalogue_ids: np.ndarray, test: EvalSplit, path: str) -> None:
    histories = pad_histories(test.histories, model.max_history)
    vectors = model.item_vectors()  # history items are looked up, not run through the item tower again
    queries = np.concatenate([
        model.query_vectors(histories[i:i + 512], vectors).numpy() for i in range(0, len(histories), 512)
    ]) if len(histories) else np.zeros((0, model.item_tower.output_dim), np.float32)
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


def train(config: Config, data_dir: str | os.PathLike, output_dir: str | os.PathLike, resume: bool = True) -> dict:
    """Trains the model on ``data_dir`` into ``output_dir``; returns the training summary.

    With ``resume`` (the default) a checkpoint left in ``output_dir`` by an interrupted
    run of the same data and settings is continued; any other checkpoint is discarded.
    """
    data_dir, output_dir = os.fspath(data_dir), os.fspath(output_dir)
    cfg = config.train
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    strategy = make_strategy(cfg.strategy)
    chief = is_chief(strategy)
    # Non-chief workers write their (required) checkpoint copies to a scratch folder.
    work_dir = output_dir if chief else tempfile.mkdtemp(prefix="tfrec-worker-")
    fileio.makedirs(work_dir)
    log.info(f"== train: {data_dir} -> {output_dir} ({strategy.num_replicas_in_sync} replica(s))")

    stats = load_stats(data_dir)
    catalogue = load_catalogue(data_dir, config.data.items.categorical_fields)
    if chief:
        copy_catalogue(data_dir, output_dir)
        save_config(config, fileio.join(output_dir, CONFIG_FILE))
    valid = load_eval_split(data_dir, "valid")
    epoch_valid = valid
    if cfg.validation_users and len(valid) > cfg.validation_users:
        sample = np.random.default_rng(cfg.seed).choice(len(valid), cfg.validation_users, replace=False)
        epoch_valid = valid.subset(np.sort(sample))
    causal = config.model.user_tower.causal
    window = min(config.model.user_tower.recent_items, config.data.sequences.max_history)
    if causal:
        # One example per training sequence; every position of it carries a query.
        sequences = causal_sequences(data_dir, window, cfg.skip_repeat_targets)
        num_examples, target_counts = len(sequences[0]), sequence_target_counts(sequences[2], len(catalogue))
        unit = "sequences"
    else:
        examples = train_examples(data_dir, config.data.sequences.max_history, cfg.max_targets,
                                  skip_repeats=cfg.skip_repeat_targets)
        num_examples, target_counts = count_targets(examples, len(catalogue))
        unit = "examples"
    num_targets = int(target_counts.sum())
    global_batch = cfg.batch_size
    steps_per_epoch = cfg.steps_per_epoch or num_examples // global_batch
    if steps_per_epoch < 1:
        raise TfrecError(
            f"{data_dir}: {num_examples} training {unit} are fewer than one batch of {global_batch}; "
            "lower train.batch_size"
        )
    targets_per_batch = global_batch * num_targets / max(num_examples, 1)
    full_softmax = cfg.negatives == "full" or (
        cfg.negatives == "auto" and len(catalogue) <= cfg.full_softmax_max_items)
    negatives_text = ("full softmax over the catalogue" if full_softmax else
                      f"in-batch + {cfg.num_random_negatives} {cfg.negative_sampling} sampled negatives")
    log.info(f"{len(catalogue):,} items, {num_examples:,} training {unit} ({num_targets:,} target items), "
          f"{len(valid):,} validation users ({len(epoch_valid):,} measured each epoch), "
          f"{steps_per_epoch} steps of {global_batch} {unit} "
          f"(about {targets_per_batch:,.0f} targets) per epoch; {negatives_text}")

    with strategy.scope():
        model = build_model(config, catalogue, work_dir)
        learning_rate = learning_rate_schedule(cfg, steps_per_epoch)
        optimizer_class = LazyAdam if cfg.optimizer == "lazy_adam" else keras.optimizers.Adam
        optimizer = optimizer_class(learning_rate, weight_decay=cfg.weight_decay or None)
        # The repeat-aware term is fitted after training, on validation (``fit_repeat_term``).
        tower_variables = model.item_tower.trainable_variables + model.user_tower.trainable_variables
        optimizer.build(tower_variables)
        sampler = tf.random.Generator.from_seed(cfg.seed)
    task = RetrievalTask(
        temperature=cfg.temperature,
        remove_accidental_hits=cfg.remove_accidental_hits,
        log_q=(mixed_log_q(target_counts, round(targets_per_batch), cfg.num_random_negatives,
                           cfg.negative_sampling)
               if cfg.logq_correction and not full_softmax else None),
        members=config.model.members,
    )
    draw_negatives = NegativeSampler(target_counts, cfg.negative_sampling)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    best = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
    bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
    # The per-epoch history lives in the checkpoint, so that the two can never disagree after a kill;
    # history.json is a copy for people and tools, never read back.
    saved_history = tf.Variable("[]", dtype=tf.string, trainable=False)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, sampler=sampler,
                                     epoch=epoch, best=best, bad_epochs=bad_epochs, history=saved_history)
    checkpoint_dir = fileio.join(work_dir, CHECKPOINT_DIR)
    fingerprint = resume_fingerprint(config, stats)
    recorded = fileio.join(checkpoint_dir, "fingerprint")
    if fileio.exists(checkpoint_dir) and (
            not resume or not fileio.exists(recorded) or fileio.read_text(recorded) != fingerprint):
        log.info(f"Starting afresh: {checkpoint_dir} holds checkpoints of other data or settings" if resume
              else f"Starting afresh: discarding {checkpoint_dir}")
        fileio.remove(checkpoint_dir)
    fileio.makedirs(checkpoint_dir)
    fileio.write_text(recorded, fingerprint)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=2)
    history_path = fileio.join(output_dir, HISTORY_FILE)
    history: list[dict] = []
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        history = json.loads(saved_history.numpy().decode("utf-8"))[: int(epoch.numpy())]
        log.info(f"Resumed from {manager.latest_checkpoint} (epoch {int(epoch.numpy())} done)")

    replicas = strategy.num_replicas_in_sync

    def queries_and_targets(batch):
        """Each (query, target item) pair of a batch: query vectors, target ids, loss groups."""
        if causal:
            items, pair_query, pair_item = batch
            owners, targets, groups = batch_pairs(items, pair_query, pair_item, cfg.sequence_negatives)
            queries = tf.reshape(model.sequence_queries(items, training=True), [-1, model.item_tower.output_dim])
            return tf.gather(queries, owners), targets, groups
        # One query per window, shared by its targets (the items of its group).
        histories, targets = batch
        present = tf.where(targets >= 0)
        owners = present[:, 0]
        return tf.gather(model.query_vectors(histories, training=True), owners), tf.gather_nd(targets, present), owners

    def replica_step(*batch):
        with tf.GradientTape() as tape:
            queries, items, owners = queries_and_targets(batch)
            if full_softmax:
                catalogue_vectors = model.item_tower(tf.range(model.num_items, dtype=tf.int64), training=True)
                per_target = task.full_softmax(queries, catalogue_vectors, items, query_ids=owners)
            else:
                candidates = model.item_tower(items, training=True)
                negatives = negative_ids = None
                if cfg.num_random_negatives:
                    negative_ids = draw_negatives(sampler, cfg.num_random_negatives)
                    negatives = model.item_tower(negative_ids, training=True)
                per_target = task(queries, candidates, items, negatives, negative_ids, query_ids=owners)
            loss = tf.reduce_sum(per_target) / tf.cast(tf.size(items) * replicas, tf.float32)
        optimizer.apply_gradients(zip(tape.gradient(loss, tower_variables), tower_variables))
        return loss

    @tf.function(reduce_retracing=True)  # causal batches vary in width
    def train_step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    writer = tf.summary.create_file_writer(fileio.join(work_dir, LOGS_DIR))
    metric = cfg.early_stopping_metric
    ks = config.eval.ks
    started = time.time()
    trained_examples = 0
    while int(epoch.numpy()) < cfg.epochs:
        e = int(epoch.numpy())
        reseed(model, cfg.seed + e)
        batches = (sequence_batches(*sequences, global_batch, cfg.seed + e) if causal else
                   shuffled_batches(examples, global_batch, cfg.shuffle_buffer, cfg.seed + e)).repeat()
        batches = strategy.experimental_distribute_dataset(batches.take(steps_per_epoch).with_options(_SHARD_BY_DATA))
        log.info(f"Epoch {e + 1}/{cfg.epochs}")
        progress = keras.utils.Progbar(steps_per_epoch, stateful_metrics=["loss"], verbose=1 if chief else 0)
        total, epoch_start = 0.0, time.time()
        for step, batch in enumerate(batches):
            loss = float(train_step(batch))
            if not np.isfinite(loss):
                raise TfrecError(f"training diverged at epoch {e + 1}, step {step + 1} (loss {loss}); "
                                 "lower train.learning_rate or raise train.temperature")
            total += loss
            progress.update(step + 1, [("loss", total / (step + 1))])
        seconds = time.time() - epoch_start
        trained_examples += steps_per_epoch * global_batch
        result = validate(model, epoch_valid, catalogue.cold_start, ks, config.eval.batch_size,
                          config.eval.score_budget)
        explore = result["explore"]["model"]
        record = {"epoch": e + 1, "loss": total / steps_per_epoch, "seconds": seconds,
                  "examples_per_second": steps_per_epoch * global_batch / seconds,
                  "targets_per_second": steps_per_epoch * targets_per_batch / seconds,
                  **{f"valid_explore_{k}": v for k, v in explore.items() if k != "users"},
                  **{f"valid_all_{k}": v for k, v in result["all"]["model"].items() if k != "users"}}
        history.append(record)
        with writer.as_default(step=e + 1):
            for key, value in record.items():
                if key != "epoch":
                    tf.summary.scalar(key, value)
        current = explore.get(metric)
        if current is None:
            raise TfrecError(f"train.early_stopping_metric {metric!r} is not a metric; try recall@20 or ndcg@10")
        improved = current > float(best.numpy())
        if improved:
            best.assign(current)
            bad_epochs.assign(0)
            with fileio.local_staging(fileio.join(work_dir, BEST_WEIGHTS)) as staged:  # whole or not at all
                model.save_weights(staged)
        else:
            bad_epochs.assign_add(1)
        log.info(f"  valid (explore) {metric} {current:.4f}  recall@10 {explore['recall@10']:.4f}  "
              f"ndcg@10 {explore['ndcg@10']:.4f}{'  (best)' if improved else ''}  "
              f"[{record['examples_per_second']:,.0f} examples/s]")
        epoch.assign_add(1)
        saved_history.assign(json.dumps(history))
        manager.save()
        if chief:
            fileio.write_json(history_path, history)
        if cfg.early_stopping_patience and int(bad_epochs.numpy()) >= cfg.early_stopping_patience:
            log.info(f"Early stop: no better validation {metric} for {cfg.early_stopping_patience} epoch(s)")
            break

    model.load_weights(fileio.join(work_dir, BEST_WEIGHTS))
    if model.repeat_term is not None:
        nll = fit_repeat_term(model, sample_users(valid, config.eval.max_users, cfg.seed),
                              score_budget=config.eval.score_budget)
        weights = model.repeat_term.feature_weights.numpy().round(3).tolist()
        log.info(f"Repeat-aware term fitted on validation: scale {float(model.repeat_term.scale.numpy()):.2f}, "
              f"weights {weights}, nll {nll:.3f}")
    summary = {
        "epochs_run": len(history),
        "best_epoch": 1 + int(np.argmax([h[f"valid_explore_{metric}"] for h in history])) if history else None,
        f"best_valid_explore_{metric}": float(best.numpy()),
        "examples_per_second": float(np.median([h["examples_per_second"] for h in history])) if history else None,
        "seconds_this_run": time.time() - started,
        "examples_this_run": trained_examples,
    }
    log.info(f"Weights digest: {weights_digest(model)} (equal on every worker of a distributed run)")
    if chief:
        _atomic_write_model(model, fileio.join(output_dir, MODEL_FILE))
        _write_vectors(model, catalogue.ids, load_eval_split(data_dir, "test"), fileio.join(output_dir, VECTORS_FILE))
        fileio.write_json(fileio.join(output_dir, TRAIN_SUMMARY_FILE), summary)
        log.info(f"Model written to {fileio.join(output_dir, MODEL_FILE)}")
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return summary
