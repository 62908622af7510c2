"""The ScaNN index: measured against exact search, widened until it holds, grown with new products."""

import json
import shutil

import numpy as np
import pytest

from serving.index import (
    IndexCatalogue,
    build_index,
    build_searcher,
    default_params,
    exact_top_k,
    recall_against,
    search,
    tuned_searcher,
)
from tests.conftest import tiny_config
from tfrec.config import IndexConfig
from tfrec.errors import TfrecError


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_index_report_measures_scann_against_exact_search(index_dir, trained_model_dir):
    report = json.loads((index_dir / "index_report.json").read_text())
    assert report["recall@10_vs_exact"] >= report["recall_target"] == 0.95
    assert report["queries"] >= 100
    for key in ("scann_batched_qps", "exact_batched_qps", "scann_single_qps", "exact_single_qps",
                "build_seconds"):
        assert report[key] > 0, key
    catalogue = IndexCatalogue.load(index_dir)
    vectors = np.load(trained_model_dir / "vectors.npz")
    assert list(catalogue.ids) == list(vectors["item_ids"])
    np.testing.assert_allclose(catalogue.vectors, vectors["item_vectors"], atol=1e-6)
    assert catalogue.texts[0] and len(catalogue.texts) == len(catalogue)


def test_default_parameters_follow_the_catalogue_size():
    small, large = default_params(3_000, IndexConfig()), default_params(1_000_000, IndexConfig())
    assert small["num_leaves"] == 55 and small["num_leaves_to_search"] == 6
    assert large["num_leaves"] == 1000 and large["num_leaves_to_search"] == 100
    assert default_params(100, IndexConfig())["brute_force"]
    assert default_params(5_000, IndexConfig(num_leaves=80, num_leaves_to_search=4))["num_leaves_to_search"] == 4


def test_a_narrow_search_is_widened_until_recall_holds():
    rng = np.random.default_rng(0)
    vectors, queries = _unit(rng, 4_000, 16), _unit(rng, 200, 16)
    settings = IndexConfig(num_leaves=60, num_leaves_to_search=1, reorder=10, recall_target=0.9)
    searcher, params, report = tuned_searcher(vectors, queries, settings, verbose=False)
    assert len(report["tries"]) > 1 and report["tries"][0]["recall"] < 0.9
    assert params["num_leaves_to_search"] > 1
    got = search(searcher, queries, 10, params)
    assert recall_against(got, exact_top_k(queries, vectors, 10)) >= 0.9


def test_an_unreachable_target_fails_with_what_was_tried(monkeypatch):
    import serving.index

    monkeypatch.setattr(serving.index, "MAX_WIDENINGS", 1)
    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng, 4_000, 16), _unit(rng, 100, 16)
    settings = IndexConfig(num_leaves=60, num_leaves_to_search=1, reorder=10, recall_target=0.999)
    with pytest.raises(TfrecError, match=r"tried \[\{'num_leaves_to_search': 1, 'reorder': 10"):
        tuned_searcher(vectors, queries, settings, verbose=False)


def test_brute_force_for_a_small_catalogue_is_exact():
    rng = np.random.default_rng(2)
    vectors, queries = _unit(rng, 120, 8), _unit(rng, 30, 8)
    params = default_params(len(vectors), IndexConfig(k=20))
    searcher = build_searcher(vectors, 20, params)
    np.testing.assert_array_equal(np.sort(search(searcher, queries, 10, params), 1),
                                  np.sort(exact_top_k(queries, vectors, 10), 1))


def test_new_products_are_added_from_their_text(sample_config, trained_model_dir, index_dir, tmp_path):
    config = tiny_config(sample_config)
    grown = tmp_path / "index"
    shutil.copytree(index_dir, grown)
    before = IndexCatalogue.load(grown)
    new_items = tmp_path / "new_items.csv"
    existing = before.ids[0]
    new_items.write_text(
        "StockCode,Description\n"
        "NEW-1,RED ENAMEL MUG WITH GOLD RIM\n"
        "NEW-2,SET OF 3 HEART COOKIE CUTTERS\n"
        "NEW-3,\n"  # no text: rejected with its reason
        "NEW-1,RED ENAMEL MUG AGAIN\n",  # the same id twice: rejected
        encoding="utf-8",
    )
    report = build_index(config, trained_model_dir, grown, add_items=new_items)
    after = IndexCatalogue.load(grown)
    assert len(after) == len(before) + 2
    assert list(after.ids[-2:]) == ["NEW-1", "NEW-2"]
    assert after.texts[-2] == "RED ENAMEL MUG WITH GOLD RIM"
    np.testing.assert_allclose(np.linalg.norm(after.vectors[-2:], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(after.vectors[:-2], before.vectors)
    assert report["added_items"] == 2 and report["rejected_rows"] == 2
    assert {r["reason"] for r in report["rejected"]} == {"empty_text", "duplicate_item"}
    assert {r["line"] for r in report["rejected"]} == {4, 5}

    again = tmp_path / "again.csv"
    again.write_text(f"StockCode,Description\n{existing},SOMETHING\n", encoding="utf-8")
    with pytest.raises(TfrecError, match="already in the index"):
        build_index(config, trained_model_dir, grown, add_items=again)
