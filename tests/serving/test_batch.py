"""``tfrec batch``: the Beam job's lists are the served model's, for histories from a data
folder's split and from raw interaction files, in JSON lines and Parquet."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from serving.batch.job import BatchOptions, run_batch
from serving.client import RestClient
from serving.export import RETRIEVE
from serving.server import ANY_PORT, ModelServer
from tests.conftest import config_yaml
from tfrec.app.cli import main
from tfrec.data import load_catalogue, load_eval_split, load_stats

SCORE_TOLERANCE = 1e-5
REQUEST_ROWS = 32


def read_jsonl(folder) -> dict[str, dict]:
    records = [json.loads(line) for path in sorted(folder.glob("recommendations-*.jsonl"))
               for line in path.read_text(encoding="utf-8").splitlines()]
    by_user = {record["user_id"]: record for record in records}
    assert len(by_user) == len(records), "one record per customer"
    return by_user


def served(rest: RestClient, histories: list[list[str]], **options) -> list[dict]:
    """The served model's answers, ``REQUEST_ROWS`` histories per REST request."""
    answers = []
    for start in range(0, len(histories), REQUEST_ROWS):
        rows = histories[start:start + REQUEST_ROWS]
        width = max(len(h) for h in rows)
        out = rest.predict(RETRIEVE, {"history": [[""] * (width - len(h)) + h for h in rows], **options})
        answers += [{name: out[name][i].tolist() for name in out} for i in range(len(rows))]
    return answers


def assert_same(record: dict, answer: dict) -> None:
    assert record["item_ids"] == answer["item_ids"]
    assert record["because_ids"] == answer["because_ids"]
    for name in ("scores", "because_scores"):
        np.testing.assert_allclose(record[name], answer[name], rtol=0, atol=SCORE_TOLERANCE)


@pytest.fixture(scope="module")
def rest(export_dir):
    with ModelServer(export_dir, port=ANY_PORT, grpc_port=ANY_PORT, max_batch=REQUEST_ROWS) as server, \
            RestClient(server.rest_url) as client:
        yield client


def test_batch_over_a_split_equals_the_served_model(tiny, export_dir, sample_data_dir, rest, tmp_path):
    summary = run_batch(tiny, export_dir, tmp_path, data_dir=str(sample_data_dir), options=BatchOptions(batch_size=48))
    records = read_jsonl(tmp_path)
    split = load_eval_split(sample_data_dir, "test")
    ids = load_catalogue(sample_data_dir).ids
    assert summary["users"] == len(records) == len(split) == load_stats(sample_data_dir)["users_evaluated"]
    assert summary["version"] == 1 and summary["model_calls"] >= len(split) / 48
    assert 0 < summary["model_seconds"] and 0 < summary["recommend_seconds"] < summary["seconds"]
    assert json.loads((tmp_path / "batch_summary.json").read_text())["users"] == len(split)
    recent = tiny.serve.max_history  # what the server takes (the model reads no more)
    histories = [[ids[i] for i in history[-recent:]] for history in split.histories]
    for user, answer in zip(split.user_ids, served(rest, histories), strict=True):
        assert_same(records[user], answer)
        assert len(records[user]["item_ids"]) == tiny.export.k
    because = [b for record in records.values() for b in record["because_ids"]]
    assert because and all(because)


def test_batch_from_raw_files_through_the_cli_in_parquet(tiny, export_dir, sample_data_dir, retail_sample, rest,
                                                         tmp_path, capsys):
    out = tmp_path / "out"
    args = ["batch", "--export", str(export_dir), "--output", str(out), "--format", "parquet", "-k", "5",
            "--exclude-history", "--interactions", str(retail_sample), "--direct_num_workers=1"]
    config = tmp_path / "tiny.yaml"
    config.write_text(config_yaml(tiny), encoding="utf-8")
    assert main([*args, "--config", str(config)]) == 0
    logged = capsys.readouterr().out
    assert "Beam counters:" in logged and "tfrec_batch/customers" in logged
    table = pq.read_table(sorted(out.glob("recommendations-*.parquet"))).to_pylist()
    summary = json.loads((out / "batch_summary.json").read_text())
    stats = load_stats(sample_data_dir)
    # Every customer with a kept row, short histories included, with every one of their items.
    assert summary["users"] == len(table) == stats["users"] > stats["users_evaluated"]
    assert summary["counters"]["ReadInteractions/rows_kept"] == stats["rows_kept"]
    assert all(len(row["item_ids"]) == 5 for row in table)
    split = load_eval_split(sample_data_dir, "test")
    ids = load_catalogue(sample_data_dir).ids
    by_user = {row["user_id"]: row for row in table}
    held_out = {user: {ids[i] for i in t} for user, t in zip(split.user_ids, split.targets, strict=True)}
    assert all(not held_out[user] & set(by_user[user]["item_ids"]) for user in held_out)  # the test group is history


def test_batch_refuses_what_it_cannot_run(tiny, export_dir, sample_data_dir, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(config_yaml(tiny), encoding="utf-8")
    data = ["--data", str(sample_data_dir)]
    common = ["batch", "--config", str(config), "--export", str(export_dir), *data]
    assert main([*common, "--output", str(tmp_path / "a"), "--version", "9"]) == 2
    assert "tfrec_retrieve/9 holds no SavedModel" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main([*common, "--output", str(tmp_path / "b"), "--num_worker=2"])
    assert refused.value.code == 2 and "--num_worker=2" in capsys.readouterr().err
    assert main(["batch", "--config", str(config), "--export", str(sample_data_dir), *data,
                 "--output", str(tmp_path / "c")]) == 2
    assert "the output folder of `tfrec export`" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abc")


def test_batch_records_carry_the_pitches_of_a_copy_output(tiny, export_dir, sample_data_dir, tmp_path):
    ids = load_catalogue(sample_data_dir).ids.tolist()
    pitches = {item: f"Pitch of {item}." for item in ids[::2]}
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "copy-00000-of-00001.jsonl").write_text("".join(
        json.dumps({"item_id": item, "because_id": None, "pitch": pitch, "source": "generated"}) + "\n"
        for item, pitch in pitches.items()))
    out = tmp_path / "out"
    summary = run_batch(tiny, export_dir, out, data_dir=str(sample_data_dir),
                        options=BatchOptions(output_format="parquet", copy=str(copy)))
    table = pq.read_table(sorted(out.glob("recommendations-*.parquet"))).to_pylist()
    assert summary["copy"] == str(copy) and len(table) == summary["users"]
    assert all(row["pitches"] == [pitches.get(item) for item in row["item_ids"]] for row in table)
    assert any(p is not None for row in table for p in row["pitches"])
