"""What training reads: the examples or sequences, the validation users, the steps per epoch."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from tfrec.config import Config
from tfrec.data import (
    Catalogue,
    EvalSplit,
    load_catalogue,
    load_eval_split,
    load_stats,
    shuffled_batches,
    train_examples,
)
from tfrec.data.graph import item_graph
from tfrec.data.sequences import causal_sequences, sequence_batches
from tfrec.data.sequences import target_counts as sequence_target_counts
from tfrec.errors import TfrecError

log = logging.getLogger(__name__)


def count_targets(examples: tf.data.Dataset, num_items: int) -> tuple[int, np.ndarray]:
    """The number of training examples and how often each item is a target (one pass)."""
    num_examples, counts = 0, np.zeros(num_items, np.int64)
    for _, targets in examples.batch(4096).as_numpy_iterator():
        num_examples += len(targets)
        counts += np.bincount(targets[targets >= 0], minlength=num_items)
    return num_examples, counts


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
    trained_on: str = "all windows"
    """``new windows`` when a warm run leaves out what its previous model trained on."""
    graph: sp.csr_matrix | None = None
    """The training split's item graph (``tfrec.data.graph.item_graph``) when ``model.graph``
    propagates over it, else None."""

    def epoch_batches(self, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
        """One epoch's batches, in an order fixed by ``seed``."""
        batches = (sequence_batches(*self.sequences, self.batch_size, seed) if self.causal else
                   shuffled_batches(self.examples, self.batch_size, shuffle_buffer, seed))
        return batches.repeat().take(self.steps_per_epoch)


def load_training_data(config: Config, data_dir: str, first_new_group: dict[str, int] | None = None) -> TrainingData:
    """Reads the training examples and validation users of ``data_dir``.

    Args:
        config: the run's config (``data``, ``model.user_tower`` and ``train`` are read).
        data_dir: a folder written by the preprocess stage.
        first_new_group: for a warm run, per user the first group its previous model never
            trained on (``PreviousModel.first_new_group``): earlier groups are not targets.

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
        sequences = causal_sequences(data_dir, window, cfg.skip_repeat_targets, first_new_group)
        num_examples, target_counts = len(sequences[0]), sequence_target_counts(sequences[2], len(catalogue))
        unit = "sequences"
    else:
        examples = train_examples(data_dir, config.data.sequences.max_history, cfg.max_targets,
                                  skip_repeats=cfg.skip_repeat_targets, first_new_group=first_new_group)
        num_examples, target_counts = count_targets(examples, len(catalogue))
        unit = "examples"
    steps_per_epoch = cfg.steps_per_epoch or num_examples // cfg.batch_size
    if num_examples < cfg.batch_size:  # batches are full: not one could be made
        new = " new since the previous model (train.warm_start_windows: new)" if first_new_group else ""
        raise TfrecError(
            f"{data_dir}: {num_examples} training {unit}{new} are fewer than one batch of {cfg.batch_size}; "
            "lower train.batch_size" + ("; or keep serving the previous model until more data has come" if new else "")
        )
    full_softmax = cfg.negatives == "full" or (
        cfg.negatives == "auto" and len(catalogue) <= cfg.full_softmax_max_items)
    data = TrainingData(
        stats=stats, catalogue=catalogue, valid=valid, epoch_valid=epoch_valid, causal=causal,
        examples=examples, sequences=sequences, num_examples=num_examples, target_counts=target_counts,
        unit=unit, batch_size=cfg.batch_size, steps_per_epoch=steps_per_epoch,
        targets_per_batch=cfg.batch_size * int(target_counts.sum()) / max(num_examples, 1),
        full_softmax=full_softmax, trained_on="new windows" if first_new_group else "all windows",
        graph=(item_graph(data_dir, len(catalogue), config.model.graph.neighbours)
               if config.model.graph.propagate != "none" else None),
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
