"""Settings the code derives from the shop's own data.

A config may leave a model setting at ``auto``, or leave a setting of ``BASKET_SETTINGS`` out:
the value is then chosen by a rule on the shop's preprocessed data (its ``stats.json``:
catalogue size, training targets and how many of them are re-purchases), so a new shop gets
sensible settings from a data-only config. ``resolve`` returns the config with every choice
made; training writes that config into the model folder, and its summary and the model card
record the choices and the shop's kind, so a run can be reproduced with the values spelled out.

The rules read the training part only (never a held-out group), and why:

- The shop's kind (``shop_kind``): ``basket`` when its customers buy baskets and buy again:
  the training targets hold on average at least ``BASKET_SIZE`` items per group, and at least
  ``REPEAT_SHARE`` of them are items the customer bought in an earlier group; otherwise
  ``sequential`` (one item after another, mostly new ones, as in the Amazon review shops:
  one item per group, no re-purchase).
- A ``basket`` shop takes ``BASKET_SETTINGS`` for every one of them its config leaves out: a
  mean over the whole position-embedded history instead of a causal transformer over the
  recent items (customers reorder from a stable assortment, and a basket's items share one
  query), no text term (it lifts ``explore`` but costs ``all``, a re-purchase shop's
  headline), and shorter training with a constant rate, stopped on Recall@20. A
  ``sequential`` shop keeps the defaults, which were chosen on the Amazon shops.
- ``model.embedding_dim``: 256 for a catalogue of at least ``LARGE_CATALOGUE`` items, else
  128. More items need more room to be told apart; 3,700 items fit in 128 values.
- ``model.members``: one for a ``basket`` shop (three members measured no better on the
  bundled one); else ``MEMBERS`` independently trained members (an ensemble that is still one
  two-tower model) while ``members x training targets`` stays within ``MEMBER_TARGET_BUDGET``,
  fewer for a larger shop, at least one. Members multiply the cost of every training step.

Example:

>>> from tfrec.config import load_config
>>> config = load_config("configs/amazon_toys.yaml")
>>> config.model.members, config.model.embedding_dim
('auto', 'auto')
>>> stats = {"items": 11758, "train_targets": 107875, "train_repeat_targets": 0, "examples": {"train": 107875}}
>>> shop_kind(stats)
'sequential'
>>> resolved = resolve(config, stats)
>>> resolved.model.members, resolved.model.embedding_dim, resolved.model.user_tower.causal
(3, 256, True)
>>> derived_settings(config, stats)
{'model.embedding_dim': 256, 'model.members': 3}
>>> basket = {"items": 3665, "train_targets": 186331, "train_repeat_targets": 60000, "examples": {"train": 9339}}
>>> shop_kind(basket), resolve(config, basket).model.user_tower.pooling, resolve(config, basket).train.epochs
('basket', 'mean', 8)
"""

from __future__ import annotations

from typing import Any

from tfrec.config.base import ConfigError
from tfrec.config.sections import Config

LARGE_CATALOGUE = 10_000
"""Catalogues of at least this many items get 256-d vectors (per member), smaller ones 128-d."""
MEMBERS = 3
"""Ensemble members a shop gets when its training fits ``MEMBER_TARGET_BUDGET``."""
MEMBER_TARGET_BUDGET = 1_500_000
"""Most ``members x training targets`` per epoch the ``auto`` rule spends on members."""
BASKET_SIZE = 2.0
"""Mean items per training target group from which a shop's customers buy baskets."""
REPEAT_SHARE = 0.2
"""Share of training targets bought before (in an earlier group) from which a shop's customers buy again."""
BASKET_SETTINGS: dict[str, Any] = {
    "model.text_term": False,
    "model.user_tower.positions": "absolute",
    "model.user_tower.num_layers": 0,
    "model.user_tower.pooling": "mean",
    "model.user_tower.recent_items": "data.sequences.max_history",
    "model.user_tower.long_term": False,
    "model.user_tower.causal": False,
    "model.user_tower.dropout": 0.1,
    "train.epochs": 8,
    "train.early_stopping_patience": 2,
    "train.early_stopping_metric": "recall@20",
    "train.lr_schedule": "constant",
}
"""What a ``basket`` shop takes for each of these settings its config leaves out (a value
in ``SETTING_REFERENCES`` takes that setting's value)."""
SETTING_REFERENCES = ("data.sequences.max_history",)
"""``BASKET_SETTINGS`` values that name another setting."""


def _stat(stats: dict, key: str) -> int:
    value = stats.get("examples", {}).get("train") if key == "train_examples" else stats.get(key)
    if value is None:
        raise ConfigError(f"stats.json has no {key!r}: preprocess the data again with this version "
                          f"to derive the settings a config leaves to the data from it")
    return int(value)


def shop_profile(stats: dict) -> dict[str, Any]:
    """The training part's figures the shop's kind is read from, and the kind."""
    targets = max(_stat(stats, "train_targets"), 1)
    basket_size = targets / max(_stat(stats, "train_examples"), 1)
    repeat_share = _stat(stats, "train_repeat_targets") / targets
    basket = basket_size >= BASKET_SIZE and repeat_share >= REPEAT_SHARE
    return {"kind": "basket" if basket else "sequential", "train_basket_size": round(basket_size, 3),
            "train_repeat_share": round(repeat_share, 4),
            "rule": f"basket when the training targets hold at least {BASKET_SIZE:g} items per group and at least "
                    f"{REPEAT_SHARE:.0%} of them were bought before, else sequential"}


def shop_record(stats: dict) -> dict[str, Any] | None:
    """``shop_profile`` for the run's records, or None when ``stats.json`` predates its figures."""
    try:
        return shop_profile(stats)
    except ConfigError:
        return None


def shop_kind(stats: dict) -> str:
    """``basket`` or ``sequential`` (``shop_profile``)."""
    return shop_profile(stats)["kind"]


def _embedding_dim(config: Config, stats: dict) -> int:
    return 256 if _stat(stats, "items") >= LARGE_CATALOGUE else 128


def _members(config: Config, stats: dict) -> int:
    if shop_kind(stats) == "basket":
        return 1
    targets = max(_stat(stats, "train_targets"), 1)
    return max(1, min(MEMBERS, MEMBER_TARGET_BUDGET // targets))


RULES = {
    "model.embedding_dim": _embedding_dim,
    "model.members": _members,
}
"""Each ``auto`` setting and the rule that chooses its value."""


def _get(config: Config, dotted: str) -> Any:
    value = config
    for key in dotted.split("."):
        value = getattr(value, key)
    return value


def left_out(config: Config, dotted: str) -> bool:
    """Whether the config leaves ``dotted`` out (it, or a section above it, was never set)."""
    node = config
    for key in dotted.split("."):
        if key not in node.model_fields_set:
            return True
        node = getattr(node, key)
    return False


def derived_settings(config: Config, stats: dict) -> dict[str, Any]:
    """``{"section.key": value}`` of every setting of ``config`` chosen from ``stats``: each
    ``auto`` setting, and for a ``basket`` shop each of ``BASKET_SETTINGS`` it leaves out."""
    chosen = {dotted: rule(config, stats) for dotted, rule in RULES.items() if _get(config, dotted) == "auto"}
    missing = [dotted for dotted in BASKET_SETTINGS if left_out(config, dotted)]
    if missing and shop_kind(stats) == "basket":
        for dotted in missing:
            value = BASKET_SETTINGS[dotted]
            chosen[dotted] = _get(config, value) if value in SETTING_REFERENCES else value
    return chosen


def _updated(node, updates: dict):
    """``node`` (a section) with ``updates`` (``{key: value or nested updates}``) applied."""
    return node.model_copy(update={key: _updated(getattr(node, key), value) if isinstance(value, dict) else value
                                   for key, value in updates.items()})


def resolve(config: Config, stats: dict) -> Config:
    """``config`` with every setting it leaves to the data chosen for ``stats`` (``derived_settings``).

    Args:
        config: a validated config, possibly with ``auto`` or left-out settings.
        stats: the preprocessed data's ``stats.json`` (``items``, ``train_targets``,
            ``train_repeat_targets`` and ``examples.train`` are read).

    Returns:
        A config with no ``auto`` left (``config`` itself when nothing was chosen).
    """
    chosen = derived_settings(config, stats)
    if not chosen:
        return config
    nested: dict[str, Any] = {}
    for dotted, value in chosen.items():
        *parents, key = dotted.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    return _updated(config, nested)
