"""Settings the code derives from the shop's own data.

A config may leave a model setting at ``auto``: the value is then chosen by a rule on the
shop's preprocessed data (its ``stats.json``: catalogue size, training targets), so a new
shop gets sensible settings from a data-only config. ``resolve`` returns the config with
every ``auto`` replaced; training writes that config into the model folder and the model
card records the choices, so a run can be reproduced with the values spelled out.

The rules, and why:

- ``model.embedding_dim``: 256 for a catalogue of at least ``LARGE_CATALOGUE`` items, else
  128. More items need more room to be told apart; 3,700 items fit in 128 values.
- ``model.members``: ``MEMBERS`` independently trained members (an ensemble that is still one
  two-tower model) while ``members x training targets`` stays within ``MEMBER_TARGET_BUDGET``,
  fewer for a larger shop, at least one. Members multiply the cost of every training step.

Example:

>>> from tfrec.config import load_config
>>> config = load_config("configs/amazon_toys.yaml")
>>> config.model.members, config.model.embedding_dim
('auto', 'auto')
>>> stats = {"items": 11924, "train_targets": 126999}
>>> resolved = resolve(config, stats)
>>> resolved.model.members, resolved.model.embedding_dim
(3, 256)
>>> derived_settings(config, stats)
{'model.embedding_dim': 256, 'model.members': 3}
"""

from __future__ import annotations

from typing import Any

from tfrec.config.sections import Config, ConfigError

LARGE_CATALOGUE = 10_000
"""Catalogues of at least this many items get 256-d vectors (per member), smaller ones 128-d."""
MEMBERS = 3
"""Ensemble members a shop gets when its training fits ``MEMBER_TARGET_BUDGET``."""
MEMBER_TARGET_BUDGET = 1_500_000
"""Most ``members x training targets`` per epoch the ``auto`` rule spends on members."""


def _embedding_dim(stats: dict) -> int:
    return 256 if _stat(stats, "items") >= LARGE_CATALOGUE else 128


def _members(stats: dict) -> int:
    targets = max(_stat(stats, "train_targets"), 1)
    return max(1, min(MEMBERS, MEMBER_TARGET_BUDGET // targets))


def _stat(stats: dict, key: str) -> int:
    if key not in stats:
        raise ConfigError(f"stats.json has no {key!r}: preprocess the data again with this version "
                          f"to derive the model's `auto` settings from it")
    return int(stats[key])


RULES = {
    ("model", "embedding_dim"): _embedding_dim,
    ("model", "members"): _members,
}
"""Each ``auto`` setting, by section and key, and the rule that chooses its value."""


def derived_settings(config: Config, stats: dict) -> dict[str, Any]:
    """``{"section.key": value}`` of every ``auto`` setting of ``config``, chosen from ``stats``."""
    return {f"{section}.{key}": rule(stats) for (section, key), rule in RULES.items()
            if getattr(getattr(config, section), key) == "auto"}


def resolve(config: Config, stats: dict) -> Config:
    """``config`` with every ``auto`` setting replaced by the value its rule picks for ``stats``.

    Args:
        config: a validated config, possibly with ``auto`` settings.
        stats: the preprocessed data's ``stats.json`` (``items`` and ``train_targets`` are read).

    Returns:
        A config with no ``auto`` left (``config`` itself when it had none).
    """
    chosen = derived_settings(config, stats)
    if not chosen:
        return config
    sections: dict[str, dict] = {}
    for dotted, value in chosen.items():
        section, key = dotted.split(".")
        sections.setdefault(section, {})[key] = value
    return config.model_copy(update={
        section: getattr(config, section).model_copy(update=values) for section, values in sections.items()
    })
