"""``tfrec recommend``: recommendations, similar items, text search, explanations, business rules."""

import json

import pytest

from serving.items import read_items
from tfrec.app.cli import main


@pytest.fixture(scope="module")
def items(export_dir):
    return read_items(export_dir)


def _json(capsys, *args) -> dict:
    assert main(["recommend", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_recommendations_for_a_history_with_explanations(export_dir, items, capsys):
    history = list(items)[:3]
    out = _json(capsys, "--export", str(export_dir), "--history", ",".join(history), "-k", "5", "--explain")
    results = out["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert all(r["text"] == items[r["item_id"]] for r in results)
    assert all(r["because"]["item_id"] in history for r in results)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)


def test_business_rules_apply_before_top_k(export_dir, items, capsys):
    history = list(items)[:3]
    plain = _json(capsys, "--export", str(export_dir), "--history", ",".join(history), "-k", "8")
    blocked = plain["results"][0]["item_id"]
    ruled = _json(capsys, "--export", str(export_dir), "--history", ",".join(history), "-k", "8",
                  "--exclude-history", "--exclude", blocked)
    ids = [r["item_id"] for r in ruled["results"]]
    assert len(ids) == 8 and blocked not in ids and not set(ids) & set(history)


def test_scann_model_answers_the_same_request(export_dir, items, capsys):
    history = ",".join(list(items)[:4])
    exact = _json(capsys, "--export", str(export_dir), "--history", history, "-k", "10")
    approximate = _json(capsys, "--export", str(export_dir), "--history", history, "-k", "10", "--scann")
    assert approximate["request"]["model"] == "tfrec_retrieve_scann"
    overlap = {r["item_id"] for r in exact["results"]} & {r["item_id"] for r in approximate["results"]}
    assert len(overlap) >= 8


def test_similar_items_and_text_search(export_dir, items, capsys):
    item = list(items)[10]
    similar = _json(capsys, "--export", str(export_dir), "--similar-to", item, "-k", "5")
    assert len(similar["results"]) == 5 and item not in {r["item_id"] for r in similar["results"]}
    search = _json(capsys, "--export", str(export_dir), "--query", items[item], "-k", "5")
    scores = [r["score"] for r in search["results"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    other = _json(capsys, "--export", str(export_dir), "--query", "a quite different query", "-k", "5")
    assert [r["item_id"] for r in other["results"]] != [r["item_id"] for r in search["results"]]
    history = list(items)[:2]
    blended = _json(capsys, "--export", str(export_dir), "--query", items[item], "--history", ",".join(history),
                    "-k", "5")
    assert blended["request"]["history"] == history
    assert [r["score"] for r in blended["results"]] != scores  # the history moves the query


def test_table_output_and_unknown_ids(export_dir, items, capsys):
    history = list(items)[:2]
    assert main(["recommend", "--export", str(export_dir), "--history", ",".join([*history, "NO-SUCH-ITEM"]),
                 "-k", "3", "--explain"]) == 0
    captured = capsys.readouterr()
    assert "unknown item id(s) NO-SUCH-ITEM" in captured.err
    lines = captured.out.splitlines()
    assert "because you bought" in lines[0] and len(lines) == 2 + 3
    assert main(["recommend", "--export", str(export_dir), "--similar-to", "NO-SUCH-ITEM"]) == 2
    assert "unknown item id 'NO-SUCH-ITEM'" in capsys.readouterr().err
    assert main(["recommend", "--export", str(export_dir), "--history", "NOPE,NADA"]) == 2
    assert "none of the history's item ids" in capsys.readouterr().err
    assert main(["recommend", "--export", str(export_dir)]) == 2
    assert "give --history, --similar-to or --query" in capsys.readouterr().err
