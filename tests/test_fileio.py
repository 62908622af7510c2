"""Atomic writes: whole files or none, temporaries cleaned on the next run."""

import json
from pathlib import Path

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


def test_write_npz_is_atomic_and_readable(tmp_path):
    import numpy as np

    fileio.write_npz(tmp_path / "v.npz", a=[1, 2])
    assert np.load(tmp_path / "v.npz")["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["v.npz"]


def test_helpers_work_the_same_on_a_url_filesystem(tmp_path):
    """``ram://`` (TensorFlow's in-process filesystem) stands for a bucket: URLs are joined
    with ``/``, folders are copied file by file, and a staged local write lands whole."""
    root = "ram://fileio-helpers"
    assert fileio.join(root, "a", "b.txt") == "ram://fileio-helpers/a/b.txt"
    fileio.write_text(fileio.join(root, "a", "b.txt"), "bee")
    fileio.write_text(fileio.join(root, "a", "sub", "c.txt"), "sea")
    assert fileio.listdir(fileio.join(root, "a")) == ["b.txt", "sub"]
    assert fileio.glob(fileio.join(root, "a", "*.txt")) == [fileio.join(root, "a", "b.txt")]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        fileio.read_text(fileio.join(root, "missing.txt"))

    fileio.copy_tree(fileio.join(root, "a"), str(tmp_path / "local"))
    assert (tmp_path / "local" / "sub" / "c.txt").read_text() == "sea"
    with fileio.local_copy(fileio.join(root, "a")) as local:
        assert sorted(p.name for p in Path(local).rglob("*.txt")) == ["b.txt", "c.txt"]

    target = fileio.join(root, "staged")
    for content in ("first, the longer one", "second"):  # the second replaces the first whole
        with fileio.local_staging(target) as staged:
            with open(staged, "w") as f:
                f.write(content)
        assert fileio.read_text(target) == content
    assert fileio.listdir(root) == ["a", "staged"], "a temporary file was left behind"
