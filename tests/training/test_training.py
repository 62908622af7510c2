"""Training on the Online Retail sample: outputs, reproducibility, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import config_yaml, tiny_config
from tfrec.models import load_model
from tfrec.training.trainer import train


def test_training_writes_every_output(trained_model_dir):
    for name in ("model.keras", "vectors.npz", "history.json", "train_summary.json", "config.yaml",
                 "catalogue/items.tfrecord.gz", "catalogue/vocab/items.txt", "checkpoints/checkpoint"):
        assert (trained_model_dir / name).exists(), name
    assert list((trained_model_dir / "logs").iterdir()), "no TensorBoard events"
    history = json.loads((trained_model_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and 0 <= h["valid_explore_recall@20"] <= 1 for h in history)
    vectors = np.load(trained_model_dir / "vectors.npz")
    model = load_model(trained_model_dir)
    assert vectors["item_vectors"].shape == (model.num_items, 16)
    assert len(vectors["item_ids"]) == model.num_items
    np.testing.assert_allclose(np.linalg.norm(vectors["query_vectors"], axis=1), 1.0, rtol=1e-4)


def test_training_is_reproducible(tiny, sample_data_dir, trained_model_dir, tmp_path):
    train(tiny, sample_data_dir, tmp_path)
    first = json.loads((trained_model_dir / "history.json").read_text())
    second = json.loads((tmp_path / "history.json").read_text())
    for a, b in zip(first, second):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["valid_explore_recall@20"] == pytest.approx(b["valid_explore_recall@20"], abs=1e-3)


def test_killed_training_resumes_from_its_checkpoint(sample_config, sample_data_dir, tmp_path):
    config = tiny_config(sample_config, "train.epochs=3", "train.steps_per_epoch=12",
                         "train.early_stopping_patience=0")
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(config_yaml(config))
    out = tmp_path / "model"
    command = [sys.executable, "-m", "tfrec.app.cli", "train", "--config", str(config_path),
               "--data", str(sample_data_dir), "--output", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "checkpoint").exists():
        assert run.poll() is None, run.stdout.read().decode()
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (out / "model.keras").exists()
    # A kill can fall between the checkpoint and history.json, or tear a file written by other means:
    # the history comes from the checkpoint, so neither misleads the resumed run.
    (out / "history.json").write_text('[{"epoch": 1, "loss": 0.5, "valid_explore_')

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "Resumed from" in resumed.stdout
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # Its output went to a pipe: one line per epoch (loss, validation, speed, time), no progress-bar redraws.
    assert "\r" not in resumed.stdout and "\u2501" not in resumed.stdout + resumed.stderr
    lines = [line for line in resumed.stdout.splitlines() if line.startswith("Epoch ")]
    resumed_epochs = [int(line.split()[1].split("/")[0]) for line in lines]
    assert resumed_epochs and resumed_epochs == sorted(set(resumed_epochs)) and resumed_epochs[-1] == 3, lines
    assert all(" loss " in line and "valid (explore) recall@20" in line and "examples/s" in line
               and line.endswith("s") for line in lines), lines
    summary = json.loads((out / "train_summary.json").read_text())

    # The interrupted-and-resumed run ends where an uninterrupted one does.
    straight = tmp_path / "straight"
    train(config, sample_data_dir, straight)
    expected = json.loads((straight / "history.json").read_text())
    for a, b in zip(history, expected):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert summary["best_epoch"] == json.loads((straight / "train_summary.json").read_text())["best_epoch"]


def test_fine_tuning_trains_only_the_last_layers_of_the_pretrained_encoder(sample_config, sample_data_dir, tmp_path):
    config = tiny_config(sample_config, "model.text_encoder.kind=pretrained", "model.text_encoder.fine_tune=last_n",
                         "model.text_encoder.fine_tune_layers=1", "model.text_encoder.sequence_length=8",
                         "data.sequences.max_history=4", "train.batch_size=4", "train.max_targets=4",
                         "train.epochs=1", "train.steps_per_epoch=2", "model.repeat_term=false")
    from tfrec.data import load_catalogue
    from tfrec.models.two_tower import build_model

    before = build_model(config, load_catalogue(sample_data_dir), tmp_path / "fresh").item_tower.text_encoder
    train(config, sample_data_dir, tmp_path / "model")
    after = load_model(tmp_path / "model").item_tower.text_encoder
    weights = {w.path: w.numpy() for w in before.weights}
    changed = {w.path for w in after.weights if not np.allclose(w.numpy(), weights[w.path])}
    assert changed, "no encoder weight was trained"
    assert all("transformer_layer_5" in path for path in changed), changed  # MiniLM-L6: layers 0..5


def test_lazy_adam_is_what_trains_when_configured(tiny, sample_data_dir, trained_model_dir, tmp_path):
    config = tiny_config(tiny, "train.optimizer=lazy_adam")
    train(config, sample_data_dir, tmp_path)
    lazy = json.loads((tmp_path / "history.json").read_text())
    dense = json.loads((trained_model_dir / "history.json").read_text())
    assert [h["epoch"] for h in lazy] == [1, 2]
    assert all(np.isfinite(h["loss"]) and 0 <= h["valid_explore_recall@20"] <= 1 for h in lazy)
    # Same seed, same batches: only the rows the dense optimizer moves outside each batch differ.
    assert lazy[0]["loss"] != pytest.approx(dense[0]["loss"], rel=1e-6)
    vectors = np.load(tmp_path / "vectors.npz")
    np.testing.assert_allclose(np.linalg.norm(vectors["item_vectors"], axis=1), 1.0, rtol=1e-4)
