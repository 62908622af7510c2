"""The whole job on a CSV holding one bad row per reason code."""

import pytest

from pipelines.preprocess import run_preprocess
from tests.pipelines import outputs
from tests.pipelines.bad_rows import KEPT_LINES, LINES, REJECTED, write_bad_rows
from tfrec import layout
from tfrec.app import cli
from tfrec.config import apply_overrides, config_from_dict
from tfrec.errors import TfrecError


@pytest.fixture(scope="module")
def bad_rows_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_rows")
    path, config = write_bad_rows(folder)
    output = folder / "data"
    stale = output / "train" / "part-00007-of-00009.tfrecord.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left over from an earlier run")
    stats = run_preprocess(config, output)
    return path, config, output, stats


def test_every_rejected_row_has_its_line_reason_and_raw_text(bad_rows_run):
    path, _, output, _ = bad_rows_run
    rejected = outputs.rejected(output)
    assert {r["line"]: r["reason"] for r in rejected} == REJECTED
    assert len(rejected) == len(REJECTED)
    by_line = {r["line"]: r for r in rejected}
    assert all(r["source"] == str(path) for r in rejected)
    assert by_line[8]["raw"].endswith("Caf\\xe9 mug")
    assert by_line[5]["raw"] == 'u2,103,b2,2024-01-02 10:00:00,1,1.00,"Green mug'
    assert "'yesterday'" in by_line[7]["detail"] and "ts=" in by_line[7]["detail"]
    assert "title has 100,000 characters" in by_line[11]["detail"]
    assert "-2" in by_line[9]["detail"] and "qty" in by_line[9]["detail"]


def test_rows_are_accounted_for_per_source_and_in_total(bad_rows_run):
    path, config, _, stats = bad_rows_run
    assert stats["rows_read"] == len(LINES)
    assert stats["rows_kept"] == len(KEPT_LINES)
    assert stats["rows_kept"] + stats["rows_rejected"] == stats["rows_read"]
    assert sum(stats["rejected_by_reason"].values()) == stats["rows_rejected"]
    assert list(stats["rejected_by_reason"]) == sorted(stats["rejected_by_reason"])
    assert stats["rejected_by_reason"]["malformed_row"] == 3
    assert stats["sources"] == {str(path): {"read": 18, "kept": 6, "rejected": 12}}
    assert stats["config_fingerprint"] == config.fingerprint("data")


def test_outputs_of_the_kept_rows(bad_rows_run):
    _, config, output, stats = bad_rows_run
    assert outputs.vocab(output) == ["101", "102", "103"]
    texts = {r["item_id"][0]: (r["text"][0], r["train_count"][0]) for r in outputs.items(output)}
    assert texts == {"101": ("Red mug", 1), "102": ("Blue\nmug, large", 0), "103": ("Green mug", 0)}
    # u1: baskets b1 [101 102], b5 [101], b6 [103], b7 [101]; u3 has one basket.
    assert outputs.split(output, "train") == [
        {"user_id": ["u1"], "history": [0, 1], "targets": [0], "target_group": [1]}]
    assert outputs.split(output, "valid") == [
        {"user_id": ["u1"], "history": [0, 1, 0], "history_group": [0, 0, 1], "targets": [2]}]
    assert outputs.split(output, "test") == [
        {"user_id": ["u1"], "history": [0, 1, 0, 2], "history_group": [0, 0, 1, 2], "targets": [0]}]
    assert stats["users"] == 2 and stats["users_dropped"] == {"short_history": 1}
    assert stats["items"] == 3 and stats["cold_start_items"] == 2
    assert stats["examples"] == {"train": 1, "valid": 1, "test": 1}
    assert stats["history_length"]["max"] == 4
    assert (output / layout.CONFIG_FILE).read_text() == config.to_yaml()


def test_stale_shards_of_an_earlier_run_are_removed(bad_rows_run):
    output = bad_rows_run[2]
    assert not (output / "train" / "part-00007-of-00009.tfrecord.gz").exists()
    assert sorted(p.name for p in (output / "train").iterdir()) == ["part-00000-of-00001.tfrecord.gz"]


def test_a_run_that_keeps_nothing_is_an_error(tmp_path):
    _, config = write_bad_rows(tmp_path)
    nobody = config_from_dict(apply_overrides(config.to_dict(), [
        "data.interactions.filters=[{name: nobody, column: user, op: eq, value: nobody}]"]))
    with pytest.raises(TfrecError, match="no interaction row was kept"):
        run_preprocess(nobody, tmp_path / "out")
    assert outputs.vocab(tmp_path / "out") == []
    stats = outputs.stats(tmp_path / "out")
    assert stats["rows_kept"] == 0 and stats["rows_rejected"] == len(LINES)
    assert "filtered:nobody" in stats["rejected_by_reason"]


def test_cli_names_a_pattern_that_matches_nothing(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    _, loaded = write_bad_rows(tmp_path)
    config.write_text(loaded.to_yaml())
    missing = str(tmp_path / "nowhere" / "*.csv")
    code = cli.main(["preprocess", "--config", str(config), "--output", str(tmp_path / "out"),
                     "--set", f"data.interactions.paths=['{missing}']"])
    assert code == 2
    assert f"no file matches {missing!r}" in capsys.readouterr().err
