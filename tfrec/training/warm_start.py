"""Warm start: a new model for a new catalogue that begins from a previous model's weights.

The previous model (a model folder, or a run folder holding ``model/``) must have the
same architecture: the same ``model`` settings (dropout rates aside) and categorical
fields. Then every weight carries over, and the tables indexed by catalogue rows are
mapped by item id (and categorical value):

* an item in both catalogues keeps its learned id vector;
* a new item gets an id vector of zeros, which is exactly how a cold item is served (its
  vector comes from its text and categories alone);
* an item gone from the catalogue is dropped with its row;
* a new categorical value starts from the row of the "missing" value, as it is served.

A frozen text encoder's vectors of texts the previous model already encoded are reused;
only new or changed texts are encoded. A scratch encoder keeps the previous WordPiece
vocabulary, so the token ids its weights learned mean the same.

A model folder records, per user, how many of the user's first groups it trained on
(``trained_groups.npz``). A warm run trains on what comes after them only
(``train.warm_start_windows: new``): training its previous model's windows again over-fits
them, while the new windows are the ones the test users' next purchases resemble most.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import yaml

from tfrec import fileio
from tfrec.config import Config, config_from_dict
from tfrec.config.derived import left_out
from tfrec.data import Catalogue, EvalSplit, load_catalogue
from tfrec.errors import TfrecError
from tfrec.layout import (
    CATALOGUE_DIR,
    CATEGORICAL_VOCAB_FILE,
    CONFIG_FILE,
    MODEL_DIR,
    MODEL_FILE,
    TEXT_VOCAB_FILE,
    TRAINED_GROUPS_FILE,
)

NOT_ARCHITECTURE = ("model.item_dropout", "model.user_tower.dropout")
"""Settings that change training, not the weights a model holds."""
CATALOGUE_WEIGHTS = ("text_vectors", "catalogue_tokens", "catalogue_categorical",
                     "graph_rows", "graph_columns", "graph_values", "graph_text_shift")
"""Item tower weights that hold the catalogue's own content: set from the new catalogue, never copied."""
FITTED_AFTER_TRAINING = ("text_weight", "text_decay")
"""User tower weights fitted on validation after the epochs: a warm run starts them where a cold run
does (weight 0, decay 1), so it trains the same query at the same temperature, and fits them again."""


class ArchitectureMismatch(TfrecError):
    """The config describes other towers than the previous model's."""


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What a warm start began from and what it carried over (recorded in ``train_summary.json``)."""

    source: str
    """The previous model folder."""
    items_kept: int
    items_added: int
    items_dropped: int
    texts_reused: int = 0
    texts_encoded: int = 0
    valid_before: float | None = None
    """The early-stopping metric on validation before the first step."""
    trained_on: str = "all windows"
    """``new windows`` (those the previous model never trained on) or ``all windows``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def write_trained_groups(path: str, valid: EvalSplit | None, before: Mapping[str, int] | None = None) -> None:
    """Writes, per user, the number of the user's first groups the published weights trained on.

    Args:
      path: the ``trained_groups.npz`` to write.
      valid: the validation split of the data this run trained on: every window targets one of
        the groups of its users' validation histories (the first is history only). ``None`` when
        the run published weights it did not train (a warm run that kept its previous weights).
      before: what the weights this run started from had trained on (a warm start's previous
        model); a user this run did not read keeps that count.
    """
    counts = dict(before or {})
    if valid is not None:
        for user, groups in zip(valid.user_ids.astype(str).tolist(), valid.history_groups):
            counts[user] = max(counts.get(user, 0), int(groups.max()) + 1 if len(groups) else 0)
    fileio.write_npz(path, user_ids=np.array(list(counts), dtype=str),
                     groups=np.array(list(counts.values()), np.int64))


def model_folder(previous: str | os.PathLike) -> str:
    """The model folder of ``previous``: itself, or the ``model/`` of a run folder."""
    previous = os.fspath(previous)
    for folder in (previous, fileio.join(previous, MODEL_DIR)):
        if fileio.exists(fileio.join(folder, MODEL_FILE)):
            return folder
    raise TfrecError(f"--warm-start {previous}: neither a model folder (no {MODEL_FILE}) nor a run folder "
                     f"(no {MODEL_DIR}/{MODEL_FILE}); pass the output folder of `tfrec train` or `tfrec run`")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def architecture(config: Mapping[str, Any]) -> dict[str, Any]:
    """The dotted settings that decide which weights a model holds, from a config's dict."""
    flat = _flatten({"model": config.get("model", {})})
    flat["data.items.categorical_fields"] = config.get("data", {}).get("items", {}).get("categorical_fields", [])
    return {key: value for key, value in flat.items() if key not in NOT_ARCHITECTURE}


def check_architecture(config: Config, previous_dir: str, previous: Mapping[str, Any]) -> None:
    """Raises ``ArchitectureMismatch`` naming every architecture key that differs from the previous
    model's config (``previous``, read from ``previous_dir``)."""
    before, now = architecture(previous), architecture(config.to_dict())
    differing = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if differing:
        details = "; ".join(f"{key}: {before.get(key)!r} before, {now.get(key)!r} now" for key in differing)
        raise ArchitectureMismatch(
            f"cannot warm-start from {previous_dir}: the architecture differs in {', '.join(differing)} "
            f"({details}); train from scratch, or keep these settings as they were")


def keep_text_vocabulary(previous_dir: str, model_dir: str) -> None:
    """Copies a scratch encoder's WordPiece vocabulary, so the new model tokenizes as the previous one."""
    source = fileio.join(previous_dir, TEXT_VOCAB_FILE)
    if fileio.exists(source):
        fileio.copy(source, fileio.join(model_dir, TEXT_VOCAB_FILE))


def row_map(new_keys, old_keys) -> np.ndarray:
    """For each new key, the row of the same key among ``old_keys``; -1 for a new one."""
    old = {key: row for row, key in enumerate(old_keys)}
    return np.array([old.get(key, -1) for key in new_keys], np.int64)


def _table(path: str, num_fields: int) -> tuple[str, int] | None:
    """``("items", -1)`` for an item-indexed table, ``("categorical", i)`` for field ``i``'s, else None."""
    layer = path.rsplit("/", 2)[-2] if "/" in path else ""
    if layer.startswith("id_embedding"):
        return "items", -1
    for i in range(num_fields):
        if layer.startswith(f"categorical_{i}"):
            return "categorical", i
    return None


def _holds_catalogue_content(weight, num_items: int) -> bool:
    """A fixed item tower weight with a row per item: set from the new catalogue when the model is built."""
    return (not weight.trainable and "item_tower/" in weight.path and len(weight.shape) > 0
            and weight.shape[0] == num_items)


def _mapped_rows(old: np.ndarray, rows: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Rows of ``old`` picked by ``rows``; ``fill`` where a row is -1 (a key the old table lacks)."""
    out = np.repeat(fill[None, :], len(rows), axis=0).astype(old.dtype)
    known = rows >= 0
    out[known] = old[rows[known]]
    return out


def transfer_weights(model, previous, item_rows: np.ndarray, value_rows: list[np.ndarray]) -> int:
    """Copies every weight of ``previous`` into ``model`` (same architecture, other catalogue).

    Args:
      item_rows: for each item of the new catalogue, its row in the previous one (-1: new).
      value_rows: per categorical field, for each code of the new vocabulary, the previous
        code of the same value (-1: a new value; code 0, "missing", maps to 0).

    Returns:
      The number of weights copied.
    """
    new_weights, old_weights = list(model.weights), list(previous.weights)
    # A model built in this process names its weights under its own path ("two_tower/item_tower/...");
    # a loaded one from the layer down ("item_tower/..."): the same weight ends the same way.
    differing = [f"{a.path} / {b.path}" for a, b in zip(new_weights, old_weights)
                 if not (a.path.endswith(b.path) or b.path.endswith(a.path))]
    if differing or len(new_weights) != len(old_weights):
        raise ArchitectureMismatch(f"the previous model holds other weights than this config's "
                                   f"({len(old_weights)} vs {len(new_weights)}; first differing: "
                                   f"{differing[:1] or 'none'})")
    copied = 0
    for new, old in zip(new_weights, old_weights, strict=True):
        name = new.path.rsplit("/", 1)[-1]
        if name in CATALOGUE_WEIGHTS + FITTED_AFTER_TRAINING or _holds_catalogue_content(new, model.num_items):
            continue
        value = np.asarray(old.numpy())
        table = _table(new.path, len(value_rows))
        if table == ("items", -1):
            value = _mapped_rows(value, item_rows, np.zeros(value.shape[1:], value.dtype))
        elif table is not None:
            value = _mapped_rows(value, value_rows[table[1]], value[0])
        if tuple(value.shape) != tuple(new.shape):
            raise ArchitectureMismatch(f"weight {new.path}: shape {tuple(new.shape)} here, {value.shape} in the "
                                       f"previous model")
        new.assign(value)
        copied += 1
    return copied


def categorical_rows(vocabularies: Mapping[str, list[str]], previous: Mapping[str, list[str]]) -> list[np.ndarray]:
    """Per field, the previous code of each new code (code ``i + 1`` is value ``i``; 0, "missing", stays 0)."""
    rows = []
    for field, values in vocabularies.items():
        old = row_map(values, previous.get(field, []))
        rows.append(np.concatenate([[0], np.where(old >= 0, old + 1, -1)]))
    return rows


@dataclasses.dataclass
class PreviousModel:
    """The model a warm start begins from: its folder and the config it was trained with."""

    folder: str
    config: dict[str, Any]

    @classmethod
    def open(cls, previous: str | os.PathLike) -> PreviousModel:
        """``previous``: a model folder, or a run folder holding ``model/``."""
        folder = model_folder(previous)
        path = fileio.join(folder, CONFIG_FILE)
        if not fileio.exists(path):
            raise TfrecError(f"{path} not found: the previous model's config is needed to check its architecture")
        return cls(folder, yaml.safe_load(fileio.read_text(path)))

    def first_new_group(self) -> dict[str, int] | None:
        """Per user the first group ordinal the previous model never trained on (its
        ``trained_groups.npz``); ``None`` for a model folder written without that file."""
        path = fileio.join(self.folder, TRAINED_GROUPS_FILE)
        if not fileio.exists(path):
            return None
        with np.load(io.BytesIO(fileio.read_bytes(path))) as arrays:
            return dict(zip(arrays["user_ids"].tolist(), arrays["groups"].tolist()))

    def adapt(self, config: Config) -> Config:
        """``config`` for a warm run: architecture settings left to the data (``auto``, or left out:
        ``tfrec.config.derived``) take the previous model's values, ``train.epochs`` and
        ``train.learning_rate`` become ``train.warm_start_epochs`` and ``train.warm_start_learning_rate``
        (where set), the learning rate falls from it to zero over those epochs (cosine, no warm-up: the
        weights are trained already), and the architecture is checked. Other settings the config
        leaves out stay left to the data."""
        before = architecture(self.config)
        chosen = {key: before[key] for key, value in architecture(config.to_dict()).items()
                  if (value == "auto" or left_out(config, key)) and key in before}
        train = config.train
        raw = config.model_dump(mode="json", exclude_unset=True)
        for key, value in {**chosen, "train.epochs": train.warm_start_epochs or train.epochs,
                           "train.learning_rate": train.warm_start_learning_rate or train.learning_rate,
                           "train.lr_schedule": "cosine", "train.warmup_steps": 0,
                           "train.warm_start": self.folder}.items():
            node = raw
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = value
        adapted = config_from_dict(raw)
        check_architecture(adapted, self.folder, self.config)
        return adapted

    def build(self, config: Config, catalogue: Catalogue, model_dir: str, graph=None):
        """A model for ``catalogue`` that starts from the previous weights; returns ``(model, WarmStart)``.
        ``graph``: the new training split's item graph (``build_model``), when the model propagates over one."""
        from tfrec.models import build_model, load_model
        from tfrec.models.two_tower import categorical_vocabularies

        keep_text_vocabulary(self.folder, model_dir)
        previous = load_model(self.folder)
        before = load_catalogue(fileio.join(self.folder, CATALOGUE_DIR), config.data.items.categorical_fields)
        known = {}
        if previous.item_tower.text_encoder is None:  # frozen: the previous text vectors are this encoder's
            vectors = np.asarray(previous.item_tower.text_vectors.numpy())
            known = {text: vectors[row] for row, text in enumerate(before.texts)}
        model = build_model(config, catalogue, model_dir, known_text_vectors=known, graph=graph)
        item_rows = row_map(catalogue.ids, before.ids)
        vocabularies = fileio.read_json(fileio.join(self.folder, CATEGORICAL_VOCAB_FILE), default={}) or {}
        transfer_weights(model, previous, item_rows,
                         categorical_rows(categorical_vocabularies(catalogue), vocabularies))
        kept = int((item_rows >= 0).sum())
        return model, WarmStart(
            self.folder, items_kept=kept, items_added=len(catalogue) - kept, items_dropped=len(before) - kept,
            texts_reused=sum(text in known for text in catalogue.texts),
            texts_encoded=len(set(catalogue.texts) - known.keys()) if known else 0)
