"""The exported SavedModels, run in fresh processes that import only TensorFlow (plus TF-Text
or ScaNN where the graph needs their ops), against the in-process model.

Every request goes through both loaders a deployment uses: the TF1 session loader (graph
mode: TF Serving, ``saved_model_cli``, the C, C++, Java and Go APIs) and
``tf.saved_model.load``; the two must give identical ids and scores within 1e-5."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from serving.export import CANDIDATE, QUERY, RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR
from serving.verify import run_child, same_answers
from tfrec.data import load_catalogue, load_eval_split, pad_histories
from tfrec.models import load_model

ALL_MODELS = (QUERY, CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH)
NO_OPTIONS = {"exclude_history": False, "exclude_ids": [], "category": ""}


def serve_in_child(export_dir: Path, name: str, inputs: dict) -> dict:
    """The model's answer in graph mode, after checking the eager loader gives the same."""
    answer = run_child(export_dir / name / "1", [inputs])
    assert answer["modules"] == [], answer["modules"]
    graph, eager = answer["graph"][0], answer["eager"][0]
    assert "error" not in graph, graph
    assert same_answers(graph, eager) is None, same_answers(graph, eager)
    return graph


@pytest.fixture(scope="module")
def model(trained_model_dir):
    return load_model(trained_model_dir)


@pytest.fixture(scope="module")
def catalogue(trained_model_dir):
    return load_catalogue(trained_model_dir / "catalogue")


@pytest.fixture(scope="module")
def test_histories(sample_data_dir, catalogue):
    split = load_eval_split(sample_data_dir, "test")
    return [[catalogue.ids[i] for i in h[-30:]] for h in split.histories[:25]]


def _padded(histories: list[list[str]]) -> list[list[str]]:
    width = max(len(h) for h in histories)
    return [[""] * (width - len(h)) + h for h in histories]


def test_export_layout(export_dir):
    for name in ALL_MODELS:
        assert (export_dir / name / "1" / "saved_model.pb").exists(), name
    config = (export_dir / "models.config").read_text()
    assert "model_config_list" in config and 'name: "tfrec_retrieve"' in config
    assert 'name: "tfrec_retrieve_scann"' not in config.split("model_config_list")[1]  # needs ScaNN's ops
    card = json.loads((export_dir / "model_card.json").read_text())
    assert {"data", "config", "metrics", "packages", "index"} <= set(card)
    assert card["packages"]["tensorflow"].startswith("2.20")
    assert not [p for p in export_dir.rglob(".*") if p.is_dir()], "a temporary folder was left behind"


def test_exact_retrieval_matches_the_in_process_model(export_dir, model, catalogue, test_histories):
    k = 20
    out = serve_in_child(export_dir, RETRIEVE, {"history": _padded(test_histories), "k": k, **NO_OPTIONS})
    index = catalogue.index_of()
    histories = pad_histories([np.array([index[i] for i in h]) for h in test_histories], 30)
    scores = model.scores(histories, model.item_vectors()).numpy()
    expected = [[catalogue.ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in scores]
    assert out["item_ids"] == expected
    np.testing.assert_allclose(out["scores"], -np.sort(-scores, axis=1)[:, :k], rtol=1e-4, atol=1e-4)
    # Explanations name a history item of the same request.
    for because, history in zip(out["because_ids"], test_histories):
        assert set(because) <= set(history)


def test_scann_retrieval_recalls_the_exact_list(export_dir, test_histories):
    request = {"history": _padded(test_histories), "k": 10, **NO_OPTIONS}
    exact = serve_in_child(export_dir, RETRIEVE, request)["item_ids"]
    approximate = serve_in_child(export_dir, RETRIEVE_SCANN, request)["item_ids"]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approximate, exact)])
    assert recall >= 0.95


def test_query_and_candidate_models_reproduce_the_towers(export_dir, model, catalogue, test_histories):
    query = serve_in_child(export_dir, QUERY, {"history": _padded(test_histories[:5])})["query_vector"]
    index = catalogue.index_of()
    histories = pad_histories([np.array([index[i] for i in h]) for h in test_histories[:5]], 30)
    np.testing.assert_allclose(query, model.query_vectors(histories).numpy(), atol=1e-5)

    rows = [0, 3, 7]
    candidate = serve_in_child(export_dir, CANDIDATE, {
        "text": [catalogue.texts[i] for i in rows], "item_id": [catalogue.ids[i] for i in rows], "categories": [[]],
    })["item_vector"]
    np.testing.assert_allclose(candidate, model.item_vectors().numpy()[rows], atol=1e-4)


def test_a_new_product_gets_a_vector_without_retraining(export_dir):
    out = serve_in_child(export_dir, CANDIDATE, {"text": ["GREEN ENAMEL MUG WITH GOLD RIM"], "item_id": ["NEW-1"],
                                                 "categories": [[]]})
    vector = np.array(out["item_vector"][0])
    assert vector.shape == (16,) and np.isclose(np.linalg.norm(vector), 1.0, atol=1e-4)


def test_request_options_apply_before_top_k(export_dir, test_histories):
    history = test_histories[0]
    blocked = history[-1]
    out = serve_in_child(export_dir, RETRIEVE, {"history": [history + ["NOT-AN-ITEM"]], "k": 15,
                                                "exclude_history": True, "exclude_ids": [blocked], "category": ""})
    ids = out["item_ids"][0]
    assert len(ids) == 15 and not set(ids) & set(history)


def test_similar_and_search_models(export_dir, catalogue):
    item = catalogue.ids[0]
    similar = serve_in_child(export_dir, SIMILAR, {"item_id": [item], "k": 5, "exclude_ids": [], "category": ""})
    assert len(similar["item_ids"][0]) == 5 and item not in similar["item_ids"][0]
    assert similar["scores"][0] == sorted(similar["scores"][0], reverse=True)
    search = serve_in_child(export_dir, SEARCH, {"query": [catalogue.texts[0]], "k": 5, "history": [[""]],
                                                 "history_weight": 0.5, "exclude_ids": [], "category": ""})
    assert len(search["item_ids"][0]) == 5


def test_saved_model_cli_shows_every_model(export_dir):
    cli = Path(sys.executable).with_name("saved_model_cli")
    for name in ALL_MODELS:
        shown = subprocess.run([str(cli), "show", "--dir", str(export_dir / name / "1"), "--all"],
                               capture_output=True, text=True, timeout=300)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert "serving_default" in shown.stdout


def test_versions_are_added_atomically_and_never_overwritten(tiny, trained_model_dir, index_dir, export_dir,
                                                              sample_data_dir, tmp_path):
    from serving.export import export_models, stage
    from tfrec.errors import TfrecError

    export = tmp_path / "export"
    shutil.copytree(export_dir, export)  # the session's export stays at version 1
    with pytest.raises(TfrecError, match="already exists"):
        stage(tf.Module(), export / QUERY / "1")
    # The serving check of a new version is test_graph_mode's; here only where it is written matters.
    paths = export_models(tiny, trained_model_dir, index_dir, export, data_dir=sample_data_dir, verify=False)
    assert all(Path(p).name == "2" for p in paths.values())
    assert (export / QUERY / "1" / "saved_model.pb").exists()
