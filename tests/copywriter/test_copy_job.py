"""``tfrec copy``: the Beam job with a tiny converted Llama, its cache by prompt, and a killed run resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving.copywriter.job import CopyOptions, run_copy
from serving.copywriter.pitches import read_pitches
from serving.items import write_items
from tfrec.config import load_config
from tfrec.copywriter.guard import violations
from tfrec.errors import TfrecError
from tfrec.layout import COPY_CACHE_DIR, COPY_SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[2]
TITLES = {"1": "RED RETROSPOT MUG", "2": "WHITE HANGING HEART T-LIGHT HOLDER", "3": "PAISLEY PARTY BAG",
          "4": "RED RETROSPOT MUG", "5": "GLASS STAR FROSTED T-LIGHT HOLDER", "6": "JUMBO BAG RED RETROSPOT"}
"""Items 1 and 4 share a title, so a prompt: it is generated once for both."""


def copy_config(preset):
    return load_config(ROOT / "configs" / "online_retail.yaml", [
        f"copy.generator={preset}", "copy.samples=2", "copy.max_length=48", "copy.scorer=''"])


@pytest.fixture()
def catalogue(tmp_path):
    folder = tmp_path / "export"
    write_items(folder, TITLES.keys(), TITLES.values())
    return folder


def records(output):
    return [json.loads(line) for path in sorted(output.glob("copy-*.jsonl")) for line in path.read_text().splitlines()]


def test_pitches_for_a_list_of_ids_are_cached_by_prompt(tiny_preset, catalogue, tmp_path):
    output = tmp_path / "copy"
    summary = run_copy(copy_config(tiny_preset), output, export_dir=str(catalogue),
                       options=CopyOptions(item_ids=("1", "2", "4", "missing")))
    written = {r["item_id"]: r for r in records(output)}
    assert sorted(written) == ["1", "2", "4"]
    assert summary["unknown_items"] == 1 and summary["records"] == 3
    assert summary["prompts_generated"] + summary["prompts_template"] == 2 and summary["prompts_cached"] == 0
    assert len(list((output / COPY_CACHE_DIR).glob("*.json"))) == 2
    assert written["1"]["prompt"] == written["4"]["prompt"]
    for record in written.values():
        assert record["source"] in ("generated", "template") and record["samples"] == 2
        if record["source"] == "template":  # a random model's samples fail, and say why
            assert record["failed"] and record["pitch"].endswith("picked for you.")
        assert set(violations(record["pitch"], record["title"])) <= {"echo"}  # a template says the title only
    assert json.loads((output / COPY_SUMMARY_FILE).read_text())["records"] == 3
    assert read_pitches(output)["2"]["pitch"] == written["2"]["pitch"]


def test_a_rerun_reuses_the_cache_and_writes_only_what_it_lacks(tiny_preset, catalogue, tmp_path):
    output, config = tmp_path / "copy", copy_config(tiny_preset)
    options = CopyOptions(item_ids=("1", "2", "3"))
    first = run_copy(config, output, export_dir=str(catalogue), options=options)
    again = run_copy(config, output, export_dir=str(catalogue), options=options)
    assert again["prompts_cached"] == 3 and again["prompts_generated"] + again["prompts_template"] == 0
    assert records(output) and {r["pitch"] for r in records(output)} == {
        json.loads(p.read_text())["verdict"]["pitch"] for p in (output / COPY_CACHE_DIR).glob("*.json")}
    sorted(output.joinpath(COPY_CACHE_DIR).glob("*.json"))[0].unlink()
    third = run_copy(config, output, export_dir=str(catalogue), options=options)
    assert third["prompts_cached"] == 2 and third["prompts_generated"] + third["prompts_template"] == 1
    assert first["records"] == third["records"] == 3


def test_pitches_for_a_batch_output(tiny_preset, catalogue, tmp_path):
    batch = tmp_path / "batch"
    batch.mkdir()
    lines = [{"user_id": "a", "item_ids": ["1", "2"], "scores": [0.9, 0.8], "because_ids": ["3", "3"],
              "because_scores": [0.5, 0.4]},
             {"user_id": "b", "item_ids": ["2", "5"], "scores": [0.7, 0.6], "because_ids": ["1", "6"],
              "because_scores": [0.3, 0.2]}]
    (batch / "recommendations-00000-of-00001.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    summary = run_copy(copy_config(tiny_preset), tmp_path / "copy", export_dir=str(catalogue),
                       options=CopyOptions(recommendations=str(batch)))
    assert sorted(r["item_id"] for r in records(tmp_path / "copy")) == ["1", "2", "5"]
    assert summary["records"] == 3 and all(r["because_id"] is None for r in records(tmp_path / "copy"))


def test_bad_inputs_are_refused_with_the_path(tiny_preset, catalogue, tmp_path):
    config = copy_config(tiny_preset)
    with pytest.raises(TfrecError, match="recommendations-"):
        run_copy(config, tmp_path / "out", export_dir=str(catalogue),
                 options=CopyOptions(recommendations=str(tmp_path)))
    with pytest.raises(TfrecError, match="not in the catalogue"):
        run_copy(config, tmp_path / "out", export_dir=str(catalogue), options=CopyOptions(item_ids=("nope",)))
    bad = tmp_path / "copy-00000-of-00001.jsonl"
    bad.write_text('{"item_id": "1", "pitch": "A mug."}\nnot json\n')
    with pytest.raises(TfrecError, match="line 2"):
        read_pitches(bad)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return [sys.executable, "-m", "tfrec.app.cli", "copy", *args], env


def test_a_killed_run_started_again_reuses_what_it_wrote(tiny_preset, catalogue, tmp_path):
    output = tmp_path / "copy"
    ids = ",".join(TITLES)
    sets = ["--set", f"copy.generator={tiny_preset}", "--set", "copy.samples=2", "--set", "copy.max_length=48",
            "--set", "copy.scorer=''"]
    command, env = _cli("--config", str(ROOT / "configs/online_retail.yaml"), *sets, "--items", ids,
                        "--export", str(catalogue), "--output", str(output))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list((output / COPY_CACHE_DIR).glob("*.json")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    kept = len(list((output / COPY_CACHE_DIR).glob("*.json")))
    assert kept >= 1 and not (output / COPY_SUMMARY_FILE).exists() or process.returncode == 0
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((output / COPY_SUMMARY_FILE).read_text())
    assert summary["prompts_cached"] == kept
    assert summary["prompts_cached"] + summary["prompts_generated"] + summary["prompts_template"] == 5
    assert summary["records"] == 6 and len(list((output / COPY_CACHE_DIR).glob("*.json"))) == 5
    assert not list(output.joinpath(COPY_CACHE_DIR).glob(".*"))  # no half-written entry left visible


def test_the_cli_exits_2_on_bad_input(tiny_preset, catalogue, tmp_path):
    command, env = _cli("--config", str(ROOT / "configs/online_retail.yaml"), "--items", "nope",
                        "--export", str(catalogue), "--output", str(tmp_path / "copy"),
                        "--set", f"copy.generator={tiny_preset}")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "not in the catalogue" in done.stderr
