"""Atomic writes: whole files or none, temporaries cleaned on the next run."""

import json

import pytest
import tensorflow as tf

from tfrec import fileio


def test_write_json_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "history.json"
    fileio.write_json(path, {"epoch": 1})
    fileio.write_json(path, {"epoch": 2})
    assert json.loads(path.read_text()) == {"epoch": 2}
    assert [p.name for p in path.parent.iterdir()] == ["history.json"]
    assert fileio.read_json(path) == {"epoch": 2}
    assert fileio.read_json(tmp_path / "missing.json", default={}) == {}


def test_a_failed_write_keeps_the_previous_version(tmp_path):
    path = tmp_path / "card.json"
    fileio.write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        fileio.write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".models.config.tmp-1234abcd").write_text("half")
    (tmp_path / ".3.tmp-deadbeef").mkdir()
    (tmp_path / "keep.txt").write_text("x")
    removed = fileio.remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_works_on_a_non_local_filesystem():
    path = "ram://fileio-test/out/data.txt"
    fileio.write_text(path, "hello")
    with tf.io.gfile.GFile(path) as f:
        assert f.read() == "hello"
    assert fileio.read_json("ram://fileio-test/none.json") is None


def test_staged_path_appears_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "model.keras"
    with pytest.raises(RuntimeError):
        with fileio.staged(target) as staged:
            assert staged.endswith("model.keras")
            open(staged, "w").write("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with fileio.staged(target) as staged:
        open(staged, "w").write("whole")
    assert target.read_text() == "whole" and [p.name for p in tmp_path.iterdir()] == ["model.keras"]
    fileio.write_npz(tmp_path / "v.npz", a=[1, 2])
    import numpy as np

    assert np.load(tmp_path / "v.npz")["a"].tolist() == [1, 2]
