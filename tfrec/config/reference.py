"""The configuration reference: every key, its default and its documentation, from the code."""

from __future__ import annotations

import json
import typing
from typing import Any

from tfrec.config.base import _Section
from tfrec.config.sections import Config


def _sections_in(annotation: Any) -> tuple[type[_Section] | None, str]:
    """The section class a field holds, and how (``""``, ``"?"`` optional, ``"[]"`` list)."""
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation, ""
    args = typing.get_args(annotation)
    sections = [a for a in args if isinstance(a, type) and issubclass(a, _Section)]
    if sections and typing.get_origin(annotation) is list:
        return sections[0], "[]"
    return (sections[0], "?") if sections else (None, "")


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    default = field.default
    if isinstance(default, _Section):
        return ""
    return "null" if default is None else json.dumps(default)


def reference(section: type[_Section] = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(key, default, description)`` of every setting, in file order (for docs/reference/configuration.md)."""
    rows = []
    for name, field in (section or Config).model_fields.items():
        key = prefix + name
        nested, how = _sections_in(field.annotation)
        description = " ".join((field.description or "").split())
        if nested is None:
            rows.append((key, _default_text(field), description))
            continue
        if how or description:
            rows.append((key, _default_text(field), description or (nested.__doc__ or "").split("\n")[0]))
        rows += reference(nested, f"{key}{'[].' if how == '[]' else '.'}")
    return rows


def reference_markdown() -> str:
    """The configuration reference as a Markdown table."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, description in reference():
        text = description.replace("|", "\\|").replace("``", "`")
        lines.append(f"| `{key}` | {f'`{default}`' if default else ''} | {text} |")
    return "\n".join(lines)
