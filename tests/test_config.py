"""The configuration: validation errors that name the file and key, overrides, the reference."""

import re
from pathlib import Path

import pytest
import yaml

from tfrec.config import ConfigError, load_config, reference, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "configs" / "online_retail.yaml"


def _write(tmp_path, content: dict) -> Path:
    path = tmp_path / "shop.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def _bundled() -> dict:
    return yaml.safe_load(BUNDLED.read_text())


def test_every_bundled_config_loads():
    for path in (ROOT / "configs").glob("*.yaml"):
        config = load_config(path)
        assert config.name


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    raw = _bundled()
    raw["train"] = {"epochz": 3}
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=rf"{path}.*\n.*train\.epochz: unknown key"):
        load_config(path)


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    raw = _bundled()
    raw["train"] = {"batch_size": "large"}
    with pytest.raises(ConfigError, match=r"train\.batch_size: .*'large'"):
        load_config(_write(tmp_path, raw))


def test_missing_required_key(tmp_path):
    raw = _bundled()
    del raw["data"]["interactions"]["columns"]["user_id"]
    with pytest.raises(ConfigError, match=r"data\.interactions\.columns\.user_id: missing required key"):
        load_config(_write(tmp_path, raw))


def test_a_filter_needs_a_value_that_fits_its_op(tmp_path):
    raw = _bundled()
    raw["data"]["interactions"]["filters"].append({"name": "odd", "column": "Quantity", "op": "gt", "value": "x"})
    with pytest.raises(ConfigError, match="needs a number value"):
        load_config(_write(tmp_path, raw))



@pytest.mark.parametrize("op, value", [("matches", "([A-Z"), ("not_matches", ["ok", "*bad"])])
def test_a_bad_regex_fails_validation_naming_the_filter_key_and_pattern(tmp_path, op, value):
    raw = _bundled()
    raw["data"]["interactions"]["filters"].append({"name": "codes", "column": "StockCode", "op": op, "value": value})
    bad = value if isinstance(value, str) else value[1]
    with pytest.raises(ConfigError, match=rf"data\.interactions\.filters\.\d+: .*filter 'codes': value "
                                          rf"'{re.escape(bad)}' of op '{op}' is not a valid regular expression"):
        load_config(_write(tmp_path, raw))

def test_overrides_apply_yaml_values_and_are_validated():
    config = load_config(BUNDLED, ["train.epochs=3", "model.repeat_term=false", "eval.ks=[5, 10]",
                                   "data.interactions.filters.0.value=X"])
    assert config.train.epochs == 3 and config.model.repeat_term is False and config.eval.ks == [5, 10]
    assert config.data.interactions.filters[0].value == "X"
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(BUNDLED, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"train\.epochs: .*greater than or equal to 1"):
        load_config(BUNDLED, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(BUNDLED, ["data.interactions.filters.9.value=X"])


def test_a_number_in_exponent_notation_is_a_number_in_overrides_and_files(tmp_path):
    config = load_config(BUNDLED, ["train.learning_rate=3e-4", "train.weight_decay=1E-5"])
    assert (config.train.learning_rate, config.train.weight_decay) == (3e-4, 1e-5)
    raw = _bundled()
    raw["train"] = {"learning_rate": "placeholder"}
    path = _write(tmp_path, raw)
    path.write_text(path.read_text().replace("placeholder", "2e-3"))
    assert load_config(path).train.learning_rate == 2e-3


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_fingerprints_follow_the_sections_they_cover():
    a = load_config(BUNDLED)
    b = load_config(BUNDLED, ["train.epochs=2"])
    assert a.fingerprint("data") == b.fingerprint("data")
    assert a.fingerprint("train") != b.fingerprint("train")


def test_every_setting_is_documented_and_the_reference_page_is_current():
    rows = reference()
    assert len(rows) > 80
    assert all(description for _, _, description in rows), [key for key, _, d in rows if not d]
    page = (ROOT / "docs" / "reference" / "configuration.md").read_text(encoding="utf-8")
    assert reference_markdown() in page, (
        "regenerate the table of docs/reference/configuration.md with `python -m tfrec.config`")
