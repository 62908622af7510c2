"""A shop with JSON-lines and Parquet logs and a separate catalogue file."""

import gzip
import json

import pandas as pd
import pytest

from pipelines.preprocess import run_preprocess
from pipelines.sources import DamagedFileError
from tests.pipelines import outputs
from tfrec.config import config_from_dict

CATALOGUE = (
    "item_id,title,description,category,brand,status\n"
    "A,Lamp,Warm light,home,Lux,active\n"
    "B,Mug,,kitchen,,active\n"
    "B,Mug,,kitchen,Acme,active\n"
    'B,"Mug, old name",,kitchen,,active\n'
    "C,Chair,Oak,home,Woody,active\n"
    "D,,,home,Lux,active\n"                   # line 7: empty_text
    "E,Retired thing,,home,,retired\n"        # line 8: filtered:active
    "F,Never bought,,garden,,active\n"        # cold start
)


def session(user, item, session_id, t):
    return {"user": user, "sku": item, "session": session_id, "ts": 1_700_000_000 + t}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shop")
    (folder / "catalogue.csv").write_text(CATALOGUE)
    jsonl = [session("u1", "A", "s1", 0), session("u1", "B", "s1", 1), session("u1", "C", "s2", 10),
             session("u1", "Z", "s2", 11),  # line 4: unknown_item
             [1, 2],                          # line 5: malformed_row
             session("u1", "A", "s3", 20), session("u1", "B", "s4", 30)]
    with gzip.open(folder / "events-1.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(row) for row in jsonl) + "\n")
    parquet = pd.DataFrame([session("u2", "A", "t1", 0), session(None, "A", "t1", 1),  # row 2: missing user
                            session("u2", "C", "t2", 5), session("u2", "Q", "t2", 6),   # row 4: unknown_item
                            session("u2", "B", "t3", 9)])
    parquet.to_parquet(folder / "events-2.parquet")
    config = config_from_dict({
        "name": "shop",
        "data": {
            "interactions": {
                "paths": [str(folder / "events-*.jsonl.gz"), str(folder / "events-*.parquet")],
                "columns": {"user_id": "user", "item_id": "sku", "timestamp": "ts", "group_id": "session"},
                "timestamp_format": "unix",
            },
            "catalogue": {
                "paths": [str(folder / "catalogue.csv")], "item_id": "item_id",
                "filters": [{"name": "active", "column": "status", "op": "eq", "value": "active"}],
            },
            "items": {"text_fields": ["title", "description"], "categorical_fields": ["category", "brand"]},
            "sequences": {"min_groups": 3},
        },
    })
    output = folder / "data"
    return folder, output, run_preprocess(config, output)


def test_items_come_from_the_catalogue_file_only(shop):
    _, output, stats = shop
    assert outputs.vocab(output) == ["A", "B", "C", "F"]
    items = {r["item_id"][0]: r for r in outputs.items(output)}
    assert items["B"]["text"] == ["Mug"] and items["B"]["cat_brand"] == ["Acme"]
    assert items["A"]["text"] == ["Lamp. Warm light"] and items["A"]["cat_category"] == ["home"]
    assert [items[i]["item_index"][0] for i in "ABCF"] == [0, 1, 2, 3]
    assert items["F"]["train_count"] == [0]
    assert stats["items"] == 4
    assert stats["catalogue"]["rows_read"] == 8
    assert stats["catalogue"]["rejected_by_reason"] == {"empty_text": 1, "filtered:active": 1}


def test_jsonl_and_parquet_rows_with_their_reasons(shop):
    folder, output, stats = shop
    jsonl, parquet = str(folder / "events-1.jsonl.gz"), str(folder / "events-2.parquet")
    found = {(r["source"], r["line"], r["reason"]) for r in outputs.rejected(output)}
    assert found == {
        (jsonl, 4, "unknown_item"), (jsonl, 5, "malformed_row"),
        (parquet, 2, "missing_field:user"), (parquet, 4, "unknown_item"),
        (str(folder / "catalogue.csv"), 7, "empty_text"), (str(folder / "catalogue.csv"), 8, "filtered:active"),
    }
    assert stats["sources"] == {jsonl: {"read": 7, "kept": 5, "rejected": 2},
                                parquet: {"read": 5, "kept": 3, "rejected": 2}}
    assert stats["rows_kept"] + stats["rows_rejected"] == stats["rows_read"] == 12


def test_sequences_across_both_sources(shop):
    _, output, stats = shop
    test = {r["user_id"][0]: r for r in outputs.split(output, "test")}
    assert test["u1"]["history"] == [0, 1, 2, 0] and test["u1"]["targets"] == [1]
    assert test["u2"]["history"] == [0, 2] and test["u2"]["targets"] == [1]
    assert outputs.split(output, "train") == [
        {"user_id": ["u1"], "history": [0, 1], "targets": [2], "target_group": [1]}]
    assert stats["cold_start_items"] == 3


def test_a_gzip_cut_short_fails_the_job_naming_the_file(tmp_path):
    rows = [session(f"u{n % 7}", "AB"[n % 2], f"s{n}", n) for n in range(300)]
    data = gzip.compress(("\n".join(json.dumps(row) for row in rows) + "\n").encode())
    cut = tmp_path / "events.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "catalogue.csv").write_text(CATALOGUE)
    config = config_from_dict({"name": "cut", "data": {
        "interactions": {"paths": [str(cut)], "timestamp_format": "unix",
                         "columns": {"user_id": "user", "item_id": "sku", "timestamp": "ts", "group_id": "session"}},
        "catalogue": {"paths": [str(tmp_path / "catalogue.csv")], "item_id": "item_id"},
        "items": {"text_fields": ["title"]}}})
    with pytest.raises(DamagedFileError, match=rf"{cut}: the gzip data ends before its end-of-stream marker"):
        run_preprocess(config, tmp_path / "data")
    assert not (tmp_path / "data" / "stats.json").exists()
