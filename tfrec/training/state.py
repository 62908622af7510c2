"""The training state: model, optimizer, early-stopping counters and the checkpoints that keep them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging

import keras
import tensorflow as tf

from tfrec import fileio
from tfrec.config import Config
from tfrec.layout import CHECKPOINT_DIR
from tfrec.models.two_tower import TwoTowerModel, build_model
from tfrec.training.optimizers import LazyAdam
from tfrec.training.training_data import TrainingData
from tfrec.training.warm_start import PreviousModel, WarmStart

log = logging.getLogger(__name__)


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
        model, warm = (build_model(config, data.catalogue, work_dir, graph=data.graph), None) if previous is None else (
            previous.build(config, data.catalogue, work_dir, graph=data.graph))
        if warm is not None:
            warm = dataclasses.replace(warm, trained_on=data.trained_on)
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
