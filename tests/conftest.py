"""Fixtures shared by every test module: a sample of the bundled Online Retail data, its
config, and one data directory preprocessed from it (model and serving tests reuse it)."""

import tfrec  # noqa: F401, I001  (first: sets TF_USE_LEGACY_KERAS before anything imports TensorFlow)

import json
import zlib
from pathlib import Path

import pandas as pd
import pytest

from tfrec.config import Config, load_config

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
