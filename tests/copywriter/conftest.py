"""A tiny Llama GGUF file written once per session, and the keras-hub folder converted from it."""

from pathlib import Path

import pytest
from tiny_llama import random_weights, write_gguf

from tfrec.copywriter.gguf_llama import convert


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """``(path of the GGUF file, its weights in Hugging Face layout as the file holds them)``."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    stored = write_gguf(path, random_weights())
    return path, stored


@pytest.fixture(scope="session")
def tiny_preset(tiny_gguf, tmp_path_factory):
    """The tiny GGUF file converted into a keras-hub loadable folder."""
    return Path(convert(tiny_gguf[0], tmp_path_factory.mktemp("preset") / "tiny-llama"))
