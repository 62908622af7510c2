"""The training stage (``tfrec train``): in-batch softmax, a checkpoint every epoch, resume after a kill.

One custom loop serves every ``tf.distribute`` strategy (the default one, one-machine
``MirroredStrategy`` and ``MultiWorkerMirroredStrategy``): Keras 3's ``Model.fit`` does
not run under ``MultiWorkerMirroredStrategy``, while a ``tf.function`` step driven by
``strategy.run`` does.

The stage's phases each have a module: ``training_data`` (what is read), ``state``
(model, optimizer, checkpoints), ``epochs`` (the loop), ``text_weight`` and the repeat
term's fit here (after the loop), and ``warm_start`` (a run that begins from a previous model).

Each epoch reads the training examples in an order fixed by ``seed + epoch`` and ends
with a checkpoint (model, optimizer, negative-sampling generator, epoch counter and
early-stopping state) and an exact validation pass. Running the same command again
after an interruption restores the last checkpoint and replays the interrupted epoch
from its start, so a resumed run ends where an uninterrupted one would.

Outputs in the model folder: ``model.keras`` (the best epoch, with the fitted repeat
term), ``vectors.npz`` (the catalogue's vectors and the query vectors of the first
``index.eval_queries`` test users, on which the index is measured), ``checkpoints/``,
``logs/`` (TensorBoard), ``history.json`` (per-epoch loss and validation metrics),
``catalogue/`` (a copy of the items, so later stages need only the model folder) and
``trained_groups.npz`` (per user, the groups it trained on: a warm start from it trains what
comes after them).
"""

from __future__ import annotations

import hashlib
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
from tfrec.config.derived import derived_settings, resolve, shop_record
from tfrec.data import EvalSplit, load_eval_split, load_stats, pad_histories
from tfrec.errors import TfrecError
from tfrec.layout import (
    BEST_WEIGHTS,
    CATALOGUE_DIR,
    CONFIG_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    TRAIN_SUMMARY_FILE,
    TRAINED_GROUPS_FILE,
    VECTORS_FILE,
)
from tfrec.models.two_tower import TwoTowerModel
from tfrec.topk import SCORE_BUDGET
from tfrec.training.epochs import run_epochs
from tfrec.training.state import TrainingState, build_training_state
from tfrec.training.text_weight import fit_text_weight
from tfrec.training.training_data import TrainingData, load_training_data
from tfrec.training.warm_start import PreviousModel, write_trained_groups

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


def weights_digest(model: keras.Model) -> str:
    """A short hash of every weight of the model."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.asarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]


def copy_catalogue(data_dir: str, model_dir: str) -> str:
    """Copies the items, vocabulary and stats next to the model (later stages read them there)."""
    target = fileio.join(model_dir, CATALOGUE_DIR)
    for name in (layout.ITEMS_FILE, layout.VOCAB_FILE, layout.STATS_FILE, layout.CONFIG_FILE):
        if fileio.exists(fileio.join(data_dir, name)):
            fileio.copy(fileio.join(data_dir, name), fileio.join(target, name))
    return target


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
    """The catalogue's vectors and the query vectors of ``test``'s users (those the index is measured on)."""
    vectors = model.item_vectors()
    queries = query_vectors(model, pad_histories(test.histories, model.max_history), vectors)
    fileio.write_npz(path, item_ids=catalogue_ids.astype(str), item_vectors=vectors.numpy(),
                     query_vectors=queries.astype(np.float32), query_user_ids=test.user_ids.astype(str))


def finish_training(config: Config, data: TrainingData, state: TrainingState, work_dir: str) -> dict:
    """Loads the best epoch's weights, then fits the text term's weight and the repeat-aware
    term on the validation users measured each epoch (``train.validation_users`` of them);
    returns what was fitted, for the training summary."""
    model = state.model
    model.load_weights(fileio.join(work_dir, BEST_WEIGHTS))
    fitted = {}
    if model.user_tower.text_dim:
        measured = fit_text_weight(model, data.epoch_valid, config.train.early_stopping_metric,
                                   score_budget=config.eval.score_budget)
        fitted = {"text_weight": round(float(model.user_tower.text_weight.numpy()), 3),
                  "text_decay": round(float(model.user_tower.text_decay.numpy()), 3),
                  "text_weight_validation": measured}
    repeat_term = model.repeat_term
    if repeat_term is not None:
        nll = fit_repeat_term(model, data.epoch_valid, score_budget=config.eval.score_budget)
        weights = repeat_term.feature_weights.numpy().round(3).tolist()
        log.info(f"Repeat-aware term fitted on validation: scale {float(repeat_term.scale.numpy()):.2f}, "
                 f"weights {weights}, nll {nll:.3f}")
    return fitted


def _best_epoch(state: TrainingState, metric: str) -> int | None:
    """The epoch whose weights were kept: 0 when a warm start's previous weights stayed the best."""
    values = [h[f"valid_explore_{metric}"] for h in state.history]
    start = state.warm_start.valid_before if state.warm_start is not None else None
    if start is not None and (not values or start >= max(values)):  # no epoch beat it
        return 0
    return 1 + int(np.argmax(values)) if values else None


def training_summary(config: Config, state: TrainingState, seconds: float, trained_examples: int) -> dict:
    """What ``train_summary.json`` holds: epochs, the best epoch and its value, speed."""
    metric, history = config.train.early_stopping_metric, state.history
    return {
        "epochs_run": len(history),
        "best_epoch": _best_epoch(state, metric),
        f"best_valid_explore_{metric}": float(state.best.numpy()),
        "examples_per_second": float(np.median([h["examples_per_second"] for h in history])) if history else None,
        "seconds_this_run": seconds,
        "examples_this_run": trained_examples,
        **({"warm_start": state.warm_start.to_dict()} if state.warm_start is not None else {}),
    }


def write_outputs(model: TwoTowerModel, data: TrainingData, summary: dict, data_dir: str, output_dir: str,
                  queries: int, previous: PreviousModel | None = None) -> None:
    """Writes ``model.keras``, ``trained_groups.npz``, ``vectors.npz`` (the catalogue, and the first
    ``queries`` test users: the held-out queries the index stage measures on) and ``train_summary.json``.

    ``trained_groups.npz`` lists what the written weights trained on: this run's windows and, for a
    warm run, what its previous model had trained on; only the latter when no epoch beat the
    previous weights (``best_epoch`` 0), which are then the ones written."""
    _atomic_write_model(model, fileio.join(output_dir, MODEL_FILE))
    kept_previous = previous is not None and summary["best_epoch"] == 0
    write_trained_groups(fileio.join(output_dir, TRAINED_GROUPS_FILE), None if kept_previous else data.valid,
                         previous.first_new_group() if previous is not None else None)
    test = load_eval_split(data_dir, "test")
    _write_vectors(model, data.catalogue.ids, test.subset(np.arange(min(len(test), queries))),
                   fileio.join(output_dir, VECTORS_FILE))
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
        log.info("Settings derived from the data (%s shop): %s", (shop_record(stats) or {}).get("kind"),
                 ", ".join(f"{k}={v}" for k, v in derived.items()))
    only_new = previous is not None and config.train.warm_start_windows == "new"
    first_new_group = previous.first_new_group() if only_new else None
    if only_new and first_new_group is None:
        log.info(f"{previous.folder} does not record what it trained on: training every window")
    data = load_training_data(config, data_dir, first_new_group)
    if chief:
        copy_catalogue(data_dir, output_dir)
        save_config(config, fileio.join(output_dir, CONFIG_FILE))
    state = build_training_state(config, data, strategy, work_dir, resume, previous)
    started = time.time()
    trained_examples = run_epochs(config, data, state, strategy, work_dir,
                                  fileio.join(output_dir, HISTORY_FILE) if chief else None)
    fitted = finish_training(config, data, state, work_dir)
    summary = training_summary(config, state, time.time() - started, trained_examples)
    summary |= {"derived": derived, "shop": shop_record(stats), **fitted}
    log.info(f"Weights digest: {weights_digest(state.model)} (equal on every worker of a distributed run)")
    if chief:
        write_outputs(state.model, data, summary, data_dir, output_dir, config.index.eval_queries, previous)
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    return summary
