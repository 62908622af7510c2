"""Warm start: a model for the next day's catalogue begins from the previous model's weights."""

import json
import shutil
import zlib

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from serving.model_card import build_model_card
from tests.conftest import RETAIL_DATA, config_yaml, tiny_config
from tfrec.app.cli import main
from tfrec.config import load_config
from tfrec.data import load_catalogue, load_eval_split
from tfrec.errors import TfrecError
from tfrec.models import load_model, text_pipeline
from tfrec.models.text import cached_text_vectors
from tfrec.training.trainer import train
from tfrec.training.warm_start import ArchitectureMismatch, PreviousModel, write_trained_groups


@pytest.fixture(scope="module")
def next_day_data(sample_config, tmp_path_factory):
    """Other customers of the same shop: most products are shared, some are new, some gone."""
    from pipelines.preprocess import run_preprocess

    frame = pd.read_csv(RETAIL_DATA, dtype=str, keep_default_na=False)
    chosen = frame["CustomerID"].map(lambda c: bool(c) and zlib.crc32(c.encode()) % 8 == 1)
    folder = tmp_path_factory.mktemp("next_day")
    frame[chosen].to_csv(folder / "interactions.csv.gz", index=False)
    config = tiny_config(sample_config, f"data.interactions.paths={json.dumps([str(folder / 'interactions.csv.gz')])}")
    run_preprocess(config, folder / "data")
    return config, folder / "data"


def test_items_in_both_keep_their_rows_and_new_ones_start_as_cold_items(trained_model_dir, next_day_data, tmp_path):
    config, data = next_day_data
    previous = load_model(trained_model_dir)
    before, after = load_catalogue(trained_model_dir / "catalogue"), load_catalogue(data)
    start = PreviousModel.open(trained_model_dir)
    model, warm = start.build(start.adapt(config), after, str(tmp_path))

    old_rows = before.index_of()
    shared = [i for i, item in enumerate(after.ids) if item in old_rows]
    new = [i for i, item in enumerate(after.ids) if item not in old_rows]
    assert shared and new and len(shared) < len(before)
    assert (warm.items_kept, warm.items_added, warm.items_dropped) == (
        len(shared), len(new), len(before) - len(shared))
    rows_before = previous.item_tower.id_embedding[0].embeddings.numpy()
    rows_after = model.item_tower.id_embedding[0].embeddings.numpy()
    assert rows_after.shape == (len(after), rows_before.shape[1])
    np.testing.assert_array_equal(rows_after[shared], rows_before[[old_rows[after.ids[i]] for i in shared]])
    np.testing.assert_array_equal(rows_after[new], 0.0)
    for name in ("user_tower", "repeat_term"):  # every other weight carries over as it was
        for a, b in zip(getattr(model, name).weights, getattr(previous, name).weights, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # A new item's vector is the one a cold item gets when served: from its text, with no id vector.
    tower = model.item_tower
    index = tf.constant(new[:5])
    cold = tower.embed(tower.text_features(index), tf.fill([5], -1), tower.categorical_codes(index))
    np.testing.assert_allclose(tower(index).numpy(), cold.numpy(), atol=1e-6)


def test_a_warm_run_trains_few_epochs_and_records_its_start(trained_model_dir, next_day_data, tmp_path):
    config, data = next_day_data
    run = tmp_path / "run"
    shutil.copytree(trained_model_dir, run / "model")  # a run folder is accepted too: its model/ is used
    warm = tiny_config(config, f"train.warm_start={json.dumps(str(run))}", "train.warm_start_epochs=1",
                       "train.epochs=5")
    summary = train(warm, data, tmp_path / "model")
    assert summary["epochs_run"] == 1
    assert summary["warm_start"]["source"] == str(run / "model") and summary["warm_start"]["items_added"] > 0
    assert 0.0 <= summary["warm_start"]["valid_before"] <= 1.0  # the start is measured before the first step
    assert summary["warm_start"]["trained_on"] == "new windows"
    assert (tmp_path / "model" / "trained_groups.npz").exists()  # what the next warm start leaves out
    recorded = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())
    assert recorded["train"]["warm_start"] == str(run / "model") and recorded["train"]["epochs"] == 1
    assert (recorded["train"]["lr_schedule"], recorded["train"]["warmup_steps"]) == ("cosine", 0)  # it anneals
    card = build_model_card(load_config(tmp_path / "model" / "config.yaml"), tmp_path / "model", None,
                            tmp_path / "export", 1, models={})
    assert f"Warm-started from `{run / 'model'}`" in card["model_parameters"]["model_architecture"]
    assert card["config"]["train"]["warm_start"] == str(run / "model")


def test_a_warm_run_keeps_the_previous_weights_when_no_epoch_beats_them(trained_model_dir, next_day_data, tmp_path):
    config, data = next_day_data
    warm = tiny_config(config, f"train.warm_start={json.dumps(str(trained_model_dir))}", "train.warm_start_epochs=1",
                       "train.warm_start_learning_rate=1e-12")
    summary = train(warm, data, tmp_path / "model")
    assert summary["best_epoch"] == 0 and summary["epochs_run"] == 1
    recorded = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())["train"]
    assert summary[f"best_valid_explore_{recorded['early_stopping_metric']}"] == summary["warm_start"]["valid_before"]
    assert recorded["learning_rate"] == 1e-12
    previous, kept = load_model(trained_model_dir), load_model(tmp_path / "model")
    for a, b in zip(kept.user_tower.trainable_weights, previous.user_tower.trainable_weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_warm_run_on_the_data_its_previous_model_read_finds_nothing_new(trained_model_dir, sample_data_dir, tiny,
                                                                           tmp_path):
    warm = tiny_config(tiny, f"train.warm_start={json.dumps(str(trained_model_dir))}")
    with pytest.raises(TfrecError, match="0 training examples new since the previous model"):
        train(warm, sample_data_dir, tmp_path / "model")
    again = tiny_config(warm, "train.warm_start_windows=all", "train.warm_start_epochs=1")
    assert train(again, sample_data_dir, tmp_path / "again")["warm_start"]["trained_on"] == "all windows"


def test_a_different_architecture_is_refused_naming_the_keys(trained_model_dir, next_day_data, tmp_path, capsys):
    config, data = next_day_data
    other = tiny_config(config, "model.embedding_dim=24", "model.user_tower.num_layers=2")
    with pytest.raises(ArchitectureMismatch) as refused:
        PreviousModel.open(trained_model_dir).adapt(other)
    assert "model.embedding_dim: 16 before, 24 now" in str(refused.value)
    assert "model.user_tower.num_layers: 1 before, 2 now" in str(refused.value)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config_yaml(config), encoding="utf-8")
    assert main(["train", "--config", str(config_file), "--data", str(data), "--output", str(tmp_path / "m"),
                 "--warm-start", str(trained_model_dir), "--set", "model.embedding_dim=24"]) == 2
    assert "the architecture differs in model.embedding_dim" in capsys.readouterr().err
    assert main(["train", "--config", str(config_file), "--data", str(data), "--output", str(tmp_path / "m"),
                 "--warm-start", str(tmp_path)]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_texts_already_encoded_are_reused(tiny, trained_model_dir, tmp_path):
    pipeline = text_pipeline(tiny, trained_model_dir)
    texts = ["RED ENAMEL MUG", "BLUE ENAMEL MUG", "RED ENAMEL MUG"]
    known = {"RED ENAMEL MUG": np.full(pipeline.encoder.output_dim, 7.0, np.float32)}
    vectors = cached_text_vectors(pipeline, texts, tmp_path, known=known)
    np.testing.assert_array_equal(vectors[[0, 2]], 7.0)
    np.testing.assert_allclose(vectors[1], pipeline.encode(["BLUE ENAMEL MUG"], verbose=False)[0], atol=1e-5)


TEXT_TERM = ("model.text_encoder.kind=pretrained", "model.text_encoder.sequence_length=8", "model.text_term=true",
             "train.epochs=1", "train.steps_per_epoch=3", "train.validation_users=200")
"""A tiny model with the fixed text part: the packaged MiniLM, frozen."""


@pytest.fixture(scope="module")
def text_term_model_dir(tiny, sample_data_dir, tmp_path_factory):
    """A text-term model whose fitted text weight and decay are far from a cold run's start (0 and 1)."""
    folder = tmp_path_factory.mktemp("text_term_model")
    train(tiny_config(tiny, *TEXT_TERM), sample_data_dir, folder)
    model = load_model(folder)
    model.user_tower.text_weight.assign(0.6)
    model.user_tower.text_decay.assign(0.3)
    model.save(str(folder / "model.keras"))
    return folder


def test_a_warm_run_of_a_text_term_model_trains_the_query_a_cold_run_trains(text_term_model_dir, next_day_data,
                                                                             tmp_path):
    config, data = next_day_data
    start = PreviousModel.open(text_term_model_dir)
    model, _ = start.build(start.adapt(tiny_config(config, *TEXT_TERM)), load_catalogue(data), str(tmp_path))
    tower = model.user_tower
    assert (float(tower.text_weight.numpy()), float(tower.text_decay.numpy())) == (0.0, 1.0)
    # Training reads the trained part of the query: unscaled by the previous (1 - w), as in a cold run.
    histories = np.array([[-1, 0, 1, 2], [3, 4, 5, 6]])
    trained = model.query_vectors(histories).numpy()[:, :tower.trained_dim]
    np.testing.assert_allclose(np.linalg.norm(trained, axis=-1), 1.0, rtol=1e-5)


def _trained_groups(folder) -> dict:
    with np.load(folder / "trained_groups.npz") as saved:
        return dict(zip(saved["user_ids"].tolist(), saved["groups"].tolist()))


def test_a_warm_run_that_keeps_its_previous_weights_lists_only_what_they_trained_on(text_term_model_dir,
                                                                                     next_day_data, tmp_path):
    config, data = next_day_data
    warm = tiny_config(config, *TEXT_TERM, f"train.warm_start={json.dumps(str(text_term_model_dir))}",
                       "train.warm_start_epochs=1", "train.warm_start_learning_rate=1e-12")
    summary = train(warm, data, tmp_path / "kept")
    assert summary["best_epoch"] == 0
    assert _trained_groups(tmp_path / "kept") == _trained_groups(text_term_model_dir)
    assert len(summary["text_weight_validation"]) > 1  # the text weight and decay are fitted again
    assert (summary["text_weight"], summary["text_decay"]) == (
        round(float(load_model(tmp_path / "kept").user_tower.text_weight.numpy()), 3),
        round(float(load_model(tmp_path / "kept").user_tower.text_decay.numpy()), 3))


def test_trained_groups_add_this_runs_windows_to_what_the_previous_model_trained_on(sample_data_dir, tmp_path):
    valid = load_eval_split(sample_data_dir, "valid")
    first, second = valid.user_ids.astype(str)[:2]
    before = {"a customer absent today": 4, first: 10**6, second: 0}
    write_trained_groups(str(tmp_path / "trained_groups.npz"), valid, before)
    after = _trained_groups(tmp_path)
    assert after["a customer absent today"] == 4 and after[first] == 10**6  # nothing trained is forgotten
    assert after[second] == int(valid.history_groups[1].max()) + 1  # this run's windows of the customer
    assert set(after) == set(before) | set(valid.user_ids.astype(str))
    write_trained_groups(str(tmp_path / "trained_groups.npz"), None, before)  # the previous weights, kept
    assert _trained_groups(tmp_path) == before


def test_a_model_propagating_over_the_item_graph_warm_starts_on_the_new_datas_graph(tiny, sample_data_dir,
                                                                                     next_day_data, tmp_path):
    """The graph is the catalogue's content, not a weight: a warm run rebuilds it from its own
    training split, and the id rows it propagates carry over as without a graph."""
    from tfrec.data.graph import item_graph

    graph_settings = ("model.graph.propagate=ids", "model.graph.neighbours=5")
    train(tiny_config(tiny, *graph_settings, "train.epochs=1", "train.steps_per_epoch=3"), sample_data_dir,
          tmp_path / "first")
    config, data = next_day_data
    start = PreviousModel.open(tmp_path / "first")
    adapted = start.adapt(tiny_config(config, *graph_settings))
    before, after = load_catalogue(tmp_path / "first" / "catalogue"), load_catalogue(data)
    graph = item_graph(data, len(after), neighbours=5)
    model, _ = start.build(adapted, after, str(tmp_path / "built"), graph=graph)
    assert model.item_tower.graph_edges == graph.nnz
    np.testing.assert_array_equal(model.item_tower.graph_values.numpy(), graph.tocoo().data)
    old_rows = before.index_of()
    shared = [i for i, item in enumerate(after.ids) if item in old_rows]
    previous = load_model(tmp_path / "first").item_tower.id_embedding[0].embeddings.numpy()
    np.testing.assert_array_equal(model.item_tower.id_embedding[0].embeddings.numpy()[shared],
                                  previous[[old_rows[after.ids[i]] for i in shared]])
    warm = tiny_config(config, *graph_settings, f"train.warm_start={json.dumps(str(tmp_path / 'first'))}",
                       "train.warm_start_epochs=1")
    summary = train(warm, data, tmp_path / "warm")
    assert summary["epochs_run"] == 1 and summary["warm_start"]["items_added"] > 0
    assert load_model(tmp_path / "warm").item_tower.graph_edges == graph.nnz
