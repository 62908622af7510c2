"""Reading a config: YAML, ``--set`` overrides, validation, and errors that name the key."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tfrec.config.base import ConfigError
from tfrec.config.sections import Config
from tfrec.config.serving_sections import ServeConfig


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: ``1e-4`` is a number (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."))


def read_yaml(text: str) -> Any:
    """Parses config YAML (``1e-4`` is a number, as a user means it)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    try:
        value = read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns ``raw`` with each ``a.b.c=value`` override applied (lists take an index)."""
    for text in overrides:
        path, value = _parse_override(text)
        node: Any = raw
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(node, list):
                node = node[_list_index(node, part, text)]
                continue
            if node.get(part) is None:
                node[part] = [] if nxt.isdigit() else {}
            node = node[part]
        last = path[-1]
        if isinstance(node, list):
            node[_list_index(node, last, text)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {text!r}: {'.'.join(path[:-1])} is not a section")
    return raw


def _list_index(node: list, part: str, text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {text!r}: {part!r} is not an index of a {len(node)}-item list")
    return int(part)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "missing":
        return f"{key}: missing required key"
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {error['msg']} (got {error.get('input')!r})"


def serve_settings(overrides: list[str]) -> ServeConfig:
    """``tfrec serve``'s settings without a config file: the defaults and ``serve.*`` overrides."""
    raw = apply_overrides({"serve": {}}, overrides)
    other = sorted(set(raw) - {"serve"})
    if other:
        raise ConfigError(f"without --config only serve.* keys can be set, not {other[0]}.*")
    try:
        return ServeConfig(**raw["serve"])
    except ValidationError as e:
        lines = "\n  ".join(_describe({**err, "loc": ("serve", *err["loc"])}) for err in e.errors())
        raise ConfigError(f"--set: invalid serve settings\n  {lines}") from None


def config_from_dict(raw: Any, source: str = "<config>") -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        lines = "\n  ".join(_describe(err) for err in e.errors())
        raise ConfigError(f"{source}: invalid configuration\n  {lines}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads, overrides and validates a YAML config; errors name the file and key."""
    path = os.fspath(path)
    try:
        if "://" in path:  # a bucket URL: read through TensorFlow's filesystems
            from tfrec import fileio

            text = fileio.read_text(path)
        else:
            text = Path(path).read_text(encoding="utf-8")
        raw = read_yaml(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = apply_overrides(raw, list(overrides or []))
    return config_from_dict(raw, str(path))


def save_config(config: Config, path: str | Path) -> None:
    from tfrec import fileio

    fileio.write_text(path, config.to_yaml())
