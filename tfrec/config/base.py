"""What every configuration section shares: its pydantic settings, and the error a bad value raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from tfrec.errors import TfrecError


class ConfigError(TfrecError, ValueError):
    """A configuration file, or an override, is not valid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)
