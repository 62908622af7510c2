"""The one configuration object that travels through every stage.

A config is a YAML file (see ``configs/online_retail.yaml``) validated into the
frozen ``Config`` tree below. Unknown keys, wrong types and missing required keys
are errors that name the file and the dotted key, so a typo never silently falls
back to a default. Overrides given on the command line as ``--set a.b=value`` are
applied to the YAML before validation; ``value`` is parsed as YAML, so numbers,
booleans, lists and ``null`` work as they do in the file.

Example:

>>> config = load_config("configs/online_retail.yaml", ["train.epochs=2"])
>>> config.train.epochs
2
"""

from tfrec.config.base import ConfigError
from tfrec.config.loading import apply_overrides, config_from_dict, load_config, save_config, serve_settings
from tfrec.config.reference import reference, reference_markdown
from tfrec.config.sections import (
    AlsConfig,
    CatalogueConfig,
    ColumnsConfig,
    Config,
    DataConfig,
    EvalConfig,
    ExportConfig,
    FilterConfig,
    IndexConfig,
    InteractionsConfig,
    ItemsConfig,
    ModelConfig,
    ScratchEncoderConfig,
    SequencesConfig,
    TextEncoderConfig,
    TrainConfig,
    UserTowerConfig,
)
from tfrec.config.serving_sections import BatchingConfig, CopyConfig, ServeConfig

__all__ = [
    "AlsConfig", "BatchingConfig", "CatalogueConfig", "ColumnsConfig", "Config", "ConfigError", "CopyConfig",
    "DataConfig", "EvalConfig", "ExportConfig", "FilterConfig", "IndexConfig", "InteractionsConfig", "ItemsConfig",
    "ModelConfig",
    "ScratchEncoderConfig", "SequencesConfig", "ServeConfig", "TextEncoderConfig", "TrainConfig",
    "UserTowerConfig", "apply_overrides", "config_from_dict", "load_config", "reference", "reference_markdown",
    "save_config", "serve_settings",
]
