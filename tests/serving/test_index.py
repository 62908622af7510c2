"""The ScaNN index: tuned for speed at the recall target, measured against exact search, grown with new products."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from serving.index import (
    IndexCatalogue,
    build_index,
    load_search_params,
    load_searcher_state,
    read_new_items,
    save_searcher,
)
from serving.index_tuning import Tuner, leaf_counts, leaves_to_search, reorders, tune_searcher
from serving.searcher import build_searcher, index_params, recall_against, search
from tests.conftest import tiny_config
from tfrec.config import IndexConfig
from tfrec.errors import TfrecError
from tfrec.topk import exact_top_k


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng, n, d, centres=40):
    middle = _unit(rng, centres, d)
    return middle[rng.integers(0, centres, n)] + 0.5 * _unit(rng, n, d)


def _fastest(report):
    """The fastest try at the target: of the final round when there was one, else of the timed points."""
    final = [t for t in report["tries"] if t["stage"] == "final"]
    pool = final or [t for t in report["tries"] if t["stage"] == "timed" and t["meets_target"]]
    return max(pool, key=lambda t: t["queries_per_second"])


def test_index_report_lists_every_try_and_the_choice_is_the_fastest_at_the_target(index_dir, trained_model_dir):
    report = json.loads((index_dir / "index_report.json").read_text())
    assert report["recall@10_vs_exact"] >= report["recall_target"] == 0.95
    assert report["queries"] >= 100
    for key in ("scann_batched_qps", "exact_batched_qps", "scann_single_qps", "exact_single_qps",
                "build_seconds", "tune_seconds"):
        assert report[key] > 0, key
    stages = {t["stage"] for t in report["tries"]}
    assert {"check", "timed"} <= stages <= {"check", "timed", "final"}
    assert any(t["brute_force"] for t in report["tries"]) and any(not t["brute_force"] for t in report["tries"])
    best = _fastest(report)
    assert report["scann_batched_qps"] == pytest.approx(best["queries_per_second"], rel=1e-3)
    chosen = {k: report[k] for k in ("num_leaves", "num_leaves_to_search", "reorder", "brute_force")}
    assert chosen == {k: best[k] for k in chosen}
    # search.json keeps the keys the export reads, and agrees with the report
    params = load_search_params(index_dir)
    assert {k: params[k] for k in chosen} == chosen and params["k"] == report["k"]
    catalogue = IndexCatalogue.load(index_dir)
    vectors = np.load(trained_model_dir / "vectors.npz")
    assert list(catalogue.ids) == list(vectors["item_ids"])
    np.testing.assert_allclose(catalogue.vectors, vectors["item_vectors"], atol=1e-6)
    assert catalogue.texts[0] and len(catalogue.texts) == len(catalogue)


def test_the_tuned_choice_meets_the_target_on_fresh_queries():
    rng = np.random.default_rng(0)
    vectors = _clustered(rng, 6_000, 16)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[rng.choice(len(vectors), 400, replace=False)] + 0.05 * _unit(rng, 400, 16)
    settings = IndexConfig(k=20, recall_target=0.9)
    searcher, params, report = tune_searcher(vectors, queries, settings, verbose=False)
    assert report["recall@10_vs_exact"] >= 0.9
    trees = sorted({t["num_leaves"] for t in report["tries"] if not t["brute_force"]})
    # no tree, sqrt(N), 2 sqrt(N) and (unless 2 sqrt(N) was slower than sqrt(N)) 4 sqrt(N) leaves
    assert trees == leaf_counts(len(vectors), settings)[:len(trees)] and len(trees) >= 3
    assert len({(t["num_leaves_to_search"], t["reorder"]) for t in report["tries"]}) > 3  # narrower and wider
    fresh = vectors[rng.choice(len(vectors), 300, replace=False)] + 0.05 * _unit(rng, 300, 16)
    got = search(searcher, fresh, 20, params)[:, :10]
    assert recall_against(got, exact_top_k(fresh, vectors, 10)) >= 0.88


def test_brute_force_on_a_tiny_catalogue_is_exact_and_survives_saving(tmp_path):
    rng = np.random.default_rng(2)
    vectors, queries = _unit(rng, 120, 8), _unit(rng, 30, 8)
    searcher, params, report = tune_searcher(vectors, queries, IndexConfig(k=20), verbose=False)
    assert params["brute_force"] and report["recall@10_vs_exact"] == 1.0
    assert all(t["brute_force"] for t in report["tries"])
    exact = np.sort(exact_top_k(queries, vectors, 10), 1)
    np.testing.assert_array_equal(np.sort(search(searcher, queries, 10, params), 1), exact)
    # the export's path: the saved state, recreated, searched with search.json's settings
    save_searcher(searcher, tmp_path / "scann", params)
    (tmp_path / "search.json").write_text(json.dumps({**params, "k": 20}))
    from scann.scann_ops.py import scann_ops

    state = load_searcher_state(tmp_path)  # the searcher lives as long as its state
    reloaded = scann_ops.searcher_from_module(state)
    got = search(reloaded, queries, 10, load_search_params(tmp_path))
    np.testing.assert_array_equal(np.sort(got, 1), exact)


def test_brute_force_wins_when_only_it_meets_the_target():
    rng = np.random.default_rng(3)
    vectors, queries = _unit(rng, 2_000, 32), _unit(rng, 100, 32)
    settings = IndexConfig(k=10, num_leaves_to_search=1, reorder=10, recall_target=0.999)
    _, params, report = tune_searcher(vectors, queries, settings, verbose=False)
    assert params["brute_force"]
    assert any(not t["meets_target"] for t in report["tries"] if not t["brute_force"])


def test_configured_settings_pin_their_axes():
    settings = IndexConfig(num_leaves=40, num_leaves_to_search=4, reorder=300)
    assert leaf_counts(100_000, settings) == [40]
    assert leaves_to_search(40, settings) == [4]
    assert reorders(100, 100_000, settings) == [300]
    assert reorders(100, 100_000, IndexConfig(reorder=20)) == [100]  # the export asks for k results
    assert leaf_counts(1_000_000, IndexConfig()) == [1000, 2000, 4000]
    assert leaf_counts(3_600, IndexConfig()) == [1, 60, 120, 225]
    assert leaf_counts(100, IndexConfig()) == []  # brute force only
    assert leaves_to_search(100, IndexConfig())[:6] == [1, 2, 3, 4, 6, 8]
    assert reorders(100, 1_000, IndexConfig()) == [100, 150, 200, 300, 400, 600, 800, 1000]


def test_the_saved_index_searches_as_chosen_and_builds_are_reproducible(tmp_path):
    rng = np.random.default_rng(4)
    vectors, queries = _unit(rng, 5_000, 16), _unit(rng, 50, 16)
    built = index_params(IndexConfig(), 70, 3, 100)
    chosen = {**built, "num_leaves_to_search": 20, "reorder": 300}
    first, second = build_searcher(vectors, 100, built), build_searcher(vectors, 100, built)
    np.testing.assert_array_equal(search(first, queries, 100, chosen), search(second, queries, 100, chosen))
    save_searcher(first, tmp_path / "scann", chosen)
    from scann.scann_ops.py import scann_ops

    state = load_searcher_state(tmp_path)  # the searcher lives as long as its state
    reloaded = scann_ops.searcher_from_module(state)
    default = reloaded.search_batched(tf.constant(queries), final_num_neighbors=100).indices.numpy()
    np.testing.assert_array_equal(default, search(first, queries, 100, chosen))


def test_an_unreachable_target_fails_with_what_was_tried(monkeypatch):
    monkeypatch.setattr(Tuner, "brute_force", lambda self: None)  # leave only hashed settings
    rng = np.random.default_rng(1)
    vectors, queries = _unit(rng, 2_000, 16), _unit(rng, 100, 16)
    settings = IndexConfig(k=10, num_leaves=30, num_leaves_to_search=1, reorder=10, recall_target=0.999)
    with pytest.raises(TfrecError, match=r"no index setting reaches recall@10 0.999 .* best of \d+ tries"):
        tune_searcher(vectors, queries, settings, verbose=False)


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


@pytest.mark.parametrize("normalize, expected", [(True, ["90001", "90002B"]), (False, ["90001.0", "90002B"])])
def test_new_products_ids_follow_the_data_sections_id_rule(sample_config, tmp_path, normalize, expected):
    config = tiny_config(sample_config, f"data.normalize_ids={str(normalize).lower()}")
    new_items = tmp_path / "new_items.csv"
    new_items.write_text("StockCode,Description\n90001.0,BLUE MUG\n90002B,GREEN MUG\n", encoding="utf-8")
    ids, texts, _, rejected = read_new_items(config, str(new_items))
    assert ids == expected and texts == ["BLUE MUG", "GREEN MUG"] and rejected == []
