"""Removing and restoring products without retraining: `tfrec index --remove / --restore` publishes a
new export version whose every model, loaded in graph mode in a fresh process, never returns a removed
id, and a restored product comes back with its vector."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from serving.export import CANDIDATE, QUERY, RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR, export_models
from serving.items import read_items
from serving.verify import run_children
from tests.conftest import ROOT
from tfrec.errors import ExitCode

ALL_MODELS = (QUERY, CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH)


def tfrec(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tfrec.app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)


def requests(ids: list[str], texts: dict[str, str], k: int) -> dict[str, list[dict]]:
    """Per model: what it answers by default, and (exact models) its whole catalogue ranked."""
    history, item, query = ids[:4], ids[10], texts[ids[20]]
    return {RETRIEVE: [{"history": [history]}, {"history": [history], "k": k}],
            RETRIEVE_SCANN: [{"history": [history]}],
            SIMILAR: [{"item_id": [item]}, {"item_id": [item], "k": k}],
            SEARCH: [{"query": [query]}, {"query": [query], "k": k}]}


def graph_mode(export, version: int, asked: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The answers of each model's ``version`` in TF Serving's loader, in one fresh process."""
    answers = run_children({export / name / str(version): r for name, r in asked.items()})
    for answer in answers:
        assert answer["modules"] == [] and "graph_load_error" not in answer
    return {name: answer["graph"] for name, answer in zip(asked, answers)}


@pytest.fixture(scope="module")
def changed(export_dir, tmp_path_factory):
    """The session's export (version 1), then version 2 without the items version 1 put first."""
    export = tmp_path_factory.mktemp("changes") / "export"
    shutil.copytree(export_dir, export)
    texts = read_items(export)
    ids = list(texts)
    asked = requests(ids, texts, len(ids))
    before = graph_mode(export, 1, asked)
    first = [before[RETRIEVE][0]["item_ids"][0][:2], before[SIMILAR][0]["item_ids"][0][:1],
             before[SEARCH][0]["item_ids"][0][:1], before[RETRIEVE_SCANN][0]["item_ids"][0][:1]]
    removed = sorted({i for part in first for i in part})
    listed = export.parent / "sold_out.txt"
    listed.write_text("# sold out today\n" + "\n".join(removed[1:]) + "\n")
    done = tfrec("index", "--export", export, "--remove", f"{removed[0]}", "-q")
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    done = tfrec("index", "--export", export, "--remove", f"@{listed}")
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    assert "version 3 published" in done.stdout and "checked in graph mode" in done.stdout
    return export, ids, asked, before, removed


def test_no_model_returns_a_removed_item_in_graph_mode(changed):
    export, ids, asked, before, removed = changed
    assert len(removed) >= 3
    after = graph_mode(export, 3, asked)
    for name, answers in after.items():
        for answer in answers:
            returned = {i for key in ("item_ids", "because_ids") for row in answer.get(key, []) for i in row}
            assert not returned & set(removed), (name, returned & set(removed))
    # the whole catalogue ranked: every item that stays is there, the removed ones only as "" at the end
    ranked = after[RETRIEVE][1]["item_ids"][0]
    assert set(ranked) - {""} == set(ids) - set(removed)
    assert ranked[-len(removed):] == [""] * len(removed)
    assert after[RETRIEVE][1]["scores"][0][-1] == pytest.approx(-1e30)
    # a default list is still full: the next items move up
    assert len(after[RETRIEVE][0]["item_ids"][0]) == 20 and "" not in after[RETRIEVE][0]["item_ids"][0]
    kept = [i for i in before[RETRIEVE][1]["item_ids"][0] if i not in removed]
    assert after[RETRIEVE][1]["item_ids"][0][: len(kept)] == kept


def test_the_new_version_is_the_same_graph_and_is_recorded(changed):
    export, ids, asked, before, removed = changed
    for name in ALL_MODELS:
        for version in (2, 3):
            assert (export / name / str(version) / "saved_model.pb").read_bytes() == \
                   (export / name / "1" / "saved_model.pb").read_bytes()
    record = json.loads((export / "removed_items.json").read_text())
    assert record["removed"] == removed and record["version"] == 3
    assert [c["version"] for c in record["changes"]] == [2, 3] and record["changes"][1]["seconds"] > 0
    assert json.loads((export / "model_card.json").read_text())["removed_items"] == len(removed)
    assert not [p for p in export.rglob(".*") if p.is_dir()], "a staging folder was left behind"


def test_restoring_brings_items_back_with_their_vectors(changed):
    export, ids, asked, before, removed = changed
    done = tfrec("index", "--export", export, "--restore", ",".join(removed))
    assert done.returncode == ExitCode.OK, done.stderr[-3000:]
    after = graph_mode(export, 4, asked)
    for name, answers in after.items():
        for again, then in zip(answers, before[name]):
            assert again["item_ids"] == then["item_ids"], name
            np.testing.assert_allclose(again["scores"], then["scores"], atol=1e-6)
    assert json.loads((export / "removed_items.json").read_text())["removed"] == []
    unchanged = tfrec("index", "--export", export, "--restore", removed[0])
    assert unchanged.returncode == ExitCode.OK and "nothing changed" in unchanged.stdout
    assert not (export / RETRIEVE / "5").exists()


def test_an_unknown_id_is_named_and_changes_nothing(export_dir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(export_dir, export)
    known = list(read_items(export))[0]
    done = tfrec("index", "--export", export, "--remove", f"{known},NO-SUCH-ITEM,{known.lower()}x")
    assert done.returncode == ExitCode.ERROR, done.stderr[-2000:]
    assert "'NO-SUCH-ITEM'" in done.stderr and "nothing was changed" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (export / RETRIEVE).iterdir()) == ["1"]
    assert not (export / "removed_items.json").exists()


def test_a_new_export_keeps_removed_items_removed(changed, tiny, trained_model_dir, index_dir, sample_data_dir,
                                                  tmp_path):
    export, ids, asked, before, removed = changed
    target = tmp_path / "export"
    shutil.copytree(export, target, ignore=shutil.ignore_patterns("4", "5"))
    (target / "removed_items.json").write_text(json.dumps({"removed": removed}))
    export_models(tiny, trained_model_dir, index_dir, target, version=7, verify=False, data_dir=sample_data_dir)
    answers = graph_mode(target, 7, {RETRIEVE: asked[RETRIEVE]})[RETRIEVE]
    assert not {i for row in answers[1]["item_ids"] for i in row} & set(removed) - {""}
    assert answers[1]["item_ids"][0][-len(removed):] == [""] * len(removed)
