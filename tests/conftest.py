"""Fixtures shared by every test module: a sample of the bundled Online Retail data, its
config, one data directory preprocessed from it, and, built once and reused by the
training, serving and run tests, a tiny trained model, its ScaNN index and its export."""

import json
import zlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tfrec.config import Config, apply_overrides, config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
RETAIL_DATA = ROOT / "data" / "online_retail" / "online_retail.csv.gz"
RETAIL_CONFIG = ROOT / "configs" / "online_retail.yaml"
CUSTOMERS_KEPT_ONE_IN = 8
ROWS_WITHOUT_CUSTOMER = 300


@pytest.fixture(scope="session")
def retail_sample(tmp_path_factory) -> Path:
    """Every row of one customer in eight (chosen by a CRC of the CustomerID text), plus the
    first rows that have no customer; cancellations of the chosen customers come along."""
    frame = pd.read_csv(RETAIL_DATA, dtype=str, keep_default_na=False)
    customer = frame["CustomerID"]
    chosen = customer.map(lambda c: bool(c) and zlib.crc32(c.encode()) % CUSTOMERS_KEPT_ONE_IN == 0)
    anonymous = (customer == "") & ((customer == "").cumsum() <= ROWS_WITHOUT_CUSTOMER)
    path = tmp_path_factory.mktemp("retail") / "online_retail_sample.csv.gz"
    frame[chosen | anonymous].to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def sample_config(retail_sample) -> Config:
    """The bundled config (filters included) reading the sample instead of the full file."""
    return load_config(RETAIL_CONFIG, [f"data.interactions.paths={json.dumps([str(retail_sample)])}"])


@pytest.fixture(scope="session")
def sample_data_dir(sample_config, tmp_path_factory) -> Path:
    """The sample preprocessed once (in-memory DirectRunner)."""
    from pipelines.preprocess import run_preprocess

    output = tmp_path_factory.mktemp("retail_data")
    run_preprocess(sample_config, output)
    return output


TINY = [
    "model.embedding_dim=16",
    "model.members=1",
    "model.text_encoder.kind=scratch",
    "model.text_encoder.sequence_length=12",
    "model.text_encoder.scratch.vocabulary_size=300",
    "model.text_encoder.scratch.hidden_dim=16",
    "model.text_encoder.scratch.intermediate_dim=32",
    "model.user_tower.num_layers=1",
    "model.user_tower.intermediate_dim=32",
    "model.user_tower.long_term=true",
    "data.sequences.max_history=10",
    "train.batch_size=64",
    "train.epochs=2",
    "train.steps_per_epoch=6",
    "train.learning_rate=0.003",
    "eval.als.iterations=3",
]


def config_yaml(config: Config) -> str:
    """``config`` as a file a user writes: only what it sets; the rest stays left to the data."""
    return yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def tiny_config(base, *extra: str):
    """``base`` made tiny; what ``base`` leaves out stays left to the data (``tfrec.config.derived``)."""
    return config_from_dict(apply_overrides(base.model_dump(mode="json", exclude_unset=True), [*TINY, *extra]))


@pytest.fixture(scope="session")
def tiny(sample_config):
    return tiny_config(sample_config)


@pytest.fixture(scope="session")
def trained_model_dir(tiny, sample_data_dir, tmp_path_factory):
    """One trained tiny model, shared by the tests that only read it."""
    from tfrec.training.trainer import train

    out = tmp_path_factory.mktemp("model")
    train(tiny, sample_data_dir, out)
    return out


@pytest.fixture(scope="session")
def index_dir(tiny, trained_model_dir, tmp_path_factory):
    """A ScaNN index over the tiny model's catalogue."""
    from serving.index import build_index

    out = tmp_path_factory.mktemp("index")
    build_index(tiny, trained_model_dir, out)
    return out


@pytest.fixture(scope="session")
def export_dir(tiny, trained_model_dir, index_dir, tmp_path_factory):
    """Version 1 of every exported model of the tiny model."""
    from serving.export import export_models

    out = tmp_path_factory.mktemp("export")
    export_models(tiny, trained_model_dir, index_dir, out, version=1)
    return out


SLOW_FIRST = (
    "serving/test_graph_mode.py",
    "serving/test_promotion.py",
    "test_run.py",
    "test_remote_filesystems.py",
    "training/test_training.py",
    "training/test_multi_worker.py",
    "serving/test_catalogue_changes.py",
    "serving/test_killed_publish.py",
    "training/test_warm_start.py",
    "serving/test_page.py",
    "serving/test_export.py",
)
"""Test files that take minutes, slowest first. They run first, so that on several workers
(`make test`: pytest-xdist, one file per worker at a time) the suite does not end waiting on one."""


def pytest_collection_modifyitems(items):
    tests = Path(__file__).resolve().parent

    def rank(item) -> int:
        path = Path(str(item.path)).resolve()
        if tests not in path.parents:  # the library's docstring examples
            return len(SLOW_FIRST)
        name = path.relative_to(tests).as_posix()
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: every other file keeps its place
