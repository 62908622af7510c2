"""The promotion gate: a new export version replaces the served one only if it is not significantly
worse, as a scheduler sees it (exit codes of `tfrec export`), and `--force` overrides it on the record."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.export import QUERY, RETRIEVE, export_models
from serving.promotion import format_decision
from tests.conftest import ROOT, config_yaml, tiny_config
from tfrec.app.report import promotion_section
from tfrec.errors import ExitCode, TfrecError

INDEX_SETTINGS = ("index.num_leaves=20", "index.num_leaves_to_search=5", "index.reorder=100")


@pytest.fixture(scope="module")
def worse(tiny, sample_data_dir, tmp_path_factory):
    """A model trained for a single step, and its index: what the gate must keep out."""
    from serving.index import build_index
    from tfrec.training.trainer import train

    config = tiny_config(tiny, "train.epochs=1", "train.steps_per_epoch=1", *INDEX_SETTINGS)
    folder = tmp_path_factory.mktemp("worse")
    train(config, sample_data_dir, folder / "model")
    build_index(config, folder / "model", folder / "index")
    return folder / "model", folder / "index"


def tfrec(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, as a scheduler runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tfrec.app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)


def test_a_worse_model_is_refused_with_its_exit_code_and_forced_on_the_record(tiny, worse, sample_data_dir,
                                                                            export_dir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(export_dir, export)  # version 1: the tiny model trained for 12 steps
    before = sorted(p.relative_to(export) for p in export.rglob("*"))
    config = tmp_path / "config.yaml"
    config.write_text(config_yaml(tiny))
    model, index = worse
    command = ["export", "--config", config, "--model", model, "--index", index, "--output", export]

    missing = tfrec(*command)
    assert missing.returncode == ExitCode.ERROR == 2, missing.stderr[-2000:]
    assert "already serves version 1" in missing.stderr and "--data" in missing.stderr

    refused = tfrec(*command, "--data", sample_data_dir)
    assert refused.returncode == ExitCode.REFUSED == 3, refused.stderr[-3000:]
    assert "tfrec export: refused: version 2 was not published, version 1 stays served" in refused.stderr
    assert "Traceback" not in refused.stderr
    record = json.loads((export / "promotion.json").read_text())
    assert record["decision"] == "refused" and not record["published"] and not record["forced"]
    assert record["metric"] == "explore.ndcg@10" and record["version"] == 2 and record["served_version"] == 1
    assert record["new_value"] < record["served_value"]
    assert record["difference"]["ci"][1] < record["threshold"] == 0.0 and record["difference"]["significant"]
    assert record["users"] > 0 and record["items"] > 0
    assert set(record["new"]["metrics"]) == {"all", "explore"} and "recall@20" in record["served"]["ci"]["explore"]
    after = sorted(p.relative_to(export) for p in export.rglob("*"))
    assert [p for p in after if p not in before] == [Path("promotion.json")], "a refused version left files"

    forced = tfrec(*command, "--data", sample_data_dir, "--force")
    assert forced.returncode == ExitCode.OK, forced.stderr[-3000:]
    assert "FORCED" in forced.stdout + forced.stderr
    record = json.loads((export / "promotion.json").read_text())
    assert record["decision"] == "forced" and record["published"] and record["forced"]
    assert "--force" in record["reason"]
    assert (export / RETRIEVE / "2" / "saved_model.pb").exists() and (export / QUERY / "2").is_dir()
    assert json.loads((export / "model_card.json").read_text())["version"] == 2


def test_a_better_model_is_published_and_the_report_shows_both(tiny, worse, trained_model_dir, index_dir,
                                                               sample_data_dir, tmp_path):
    export = tmp_path / "export"
    model, index = worse
    export_models(tiny, model, index, export, version=1, verify=False)
    assert not (export / "promotion.json").exists()  # nothing served before: nothing to compare with
    with pytest.raises(TfrecError, match="already serves version 1"):
        export_models(tiny, trained_model_dir, index_dir, export, verify=False)

    paths = export_models(tiny, trained_model_dir, index_dir, export, verify=False, data_dir=sample_data_dir)
    assert Path(paths[RETRIEVE]).name == "2"
    record = json.loads((export / "promotion.json").read_text())
    assert record["decision"] == "published" and record["published"] and not record["forced"]
    assert record["new_value"] > record["served_value"]
    assert record["difference"]["difference"] == pytest.approx(record["new_value"] - record["served_value"])
    low, high = record["difference"]["ci"]
    assert low <= record["difference"]["difference"] <= high
    assert "PUBLISHED" in format_decision(record)
    section = promotion_section(record)
    assert "## Promotion gate" in section and "**published**" in section and "explore ndcg@10 (gate)" in section


def test_the_same_model_is_not_worse_than_itself(tiny, trained_model_dir, index_dir, sample_data_dir, export_dir,
                                                 tmp_path):
    """Both sides go through the same exported retrieve model: identical rankings, a zero difference."""
    export = tmp_path / "export"
    shutil.copytree(export_dir, export)
    config = tiny_config(tiny, "export.promotion_metric=all.recall@20", "export.promotion_margin=0.05")
    export_models(config, trained_model_dir, index_dir, export, verify=False, data_dir=sample_data_dir)
    record = json.loads((export / "promotion.json").read_text())
    assert record["decision"] == "published" and record["metric"] == "all.recall@20"
    assert record["new_value"] == record["served_value"] and record["difference"]["ci"] == [0.0, 0.0]
    assert record["threshold"] == pytest.approx(-0.05 * record["served_value"])
    assert record["new"]["metrics"] == record["served"]["metrics"]
