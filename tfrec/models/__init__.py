"""The two-tower model: text item tower, sequence user tower, repeat-aware term."""

from tfrec.models.attention import RelativeBlock
from tfrec.models.repeat import RepeatTerm
from tfrec.models.text import PretrainedTextEncoder, ScratchTextEncoder, TextPipeline
from tfrec.models.towers import ItemTower
from tfrec.models.two_tower import (
    TwoTowerModel,
    build_model,
    load_model,
    serving_text_pipeline,
    text_pipeline,
)
from tfrec.models.user_tower import UserTower

__all__ = [
    "ItemTower",
    "PretrainedTextEncoder",
    "RelativeBlock",
    "RepeatTerm",
    "ScratchTextEncoder",
    "TextPipeline",
    "TwoTowerModel",
    "UserTower",
    "build_model",
    "load_model",
    "serving_text_pipeline",
    "text_pipeline",
]
