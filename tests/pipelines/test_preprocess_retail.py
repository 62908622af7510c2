"""The job on the Online Retail sample, checked against an independent pandas computation,
for leakage between splits, and for the same records across runs and runners."""

import collections
import gzip
import itertools
import json

import pandas as pd
import pytest

from pipelines import reading
from pipelines.preprocess import run_preprocess
from tests.pipelines import outputs
from tfrec import layout
from tfrec.config import apply_overrides, config_from_dict

SPLITS = (*layout.SPLITS, "items")


def flat(groups):
    return list(itertools.chain.from_iterable(groups))


def records(data_dir):
    found = {name: outputs.split(data_dir, name) for name in layout.SPLITS}
    found["items"] = outputs.items(data_dir)
    return found


@pytest.fixture(scope="module")
def expected(retail_sample, sample_config):
    """Kept rows, item texts and each customer's invoices (item ids, in order), with pandas."""
    frame = pd.read_csv(retail_sample, dtype=str, keep_default_na=False)
    frame = frame.apply(lambda column: column.str.strip())
    # data.normalize_ids (on by default): customer ids written as floats are read as integers.
    frame["CustomerID"] = frame.CustomerID.str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
    frame["line"] = range(2, len(frame) + 2)  # the sample has no quoted newlines
    kept = frame[(frame.CustomerID != "") & ~frame.InvoiceNo.str.startswith("C")
                 & (frame.Quantity.astype(float) > 0) & (frame.UnitPrice.astype(float) > 0)
                 & (frame.Description != "")]
    texts = (kept.groupby(["StockCode", "Description"]).size().reset_index(name="n")
             .sort_values(["StockCode", "n", "Description"], ascending=[True, False, True])
             .drop_duplicates("StockCode").set_index("StockCode").Description.to_dict())
    kept["ts"] = pd.to_datetime(kept.InvoiceDate)
    events = (kept.sort_values(["CustomerID", "ts", "InvoiceNo", "line"])
              .drop_duplicates(["CustomerID", "InvoiceNo", "StockCode"]))
    invoices = collections.defaultdict(dict)
    for customer, invoice, item in zip(events.CustomerID, events.InvoiceNo, events.StockCode):
        invoices[customer].setdefault(invoice, []).append(item)
    return {"rows": len(frame), "kept": len(kept), "events": len(events), "texts": texts,
            "first": kept.ts.min().isoformat() + "Z", "last": kept.ts.max().isoformat() + "Z",
            "groups": {user: list(groups.values()) for user, groups in invoices.items()}}


def test_sample_has_what_the_tests_need(expected, sample_data_dir):
    stats = outputs.stats(sample_data_dir)
    assert stats["rejected_by_reason"]["missing_field:CustomerID"] == 300
    assert stats["rejected_by_reason"]["filtered:not_cancelled"] > 10
    assert 200 <= stats["users_evaluated"] <= 400


def test_stats_match_pandas(expected, sample_config, sample_data_dir):
    stats = outputs.stats(sample_data_dir)
    groups = expected["groups"]
    evaluated = [u for u, g in groups.items() if len(g) >= 3]
    assert stats["rows_read"] == expected["rows"]
    assert stats["rows_kept"] == expected["kept"]
    assert stats["rows_kept"] + stats["rows_rejected"] == stats["rows_read"]
    assert stats["interactions"] == expected["events"]
    assert stats["groups"] == sum(len(g) for g in groups.values())
    assert stats["users"] == len(groups)
    assert stats["users_evaluated"] == len(evaluated)
    assert stats["users_dropped"] == {"short_history": len(groups) - len(evaluated)}
    assert stats["examples"]["train"] == sum(len(groups[u][1:-2]) for u in evaluated)
    assert stats["train_targets"] == sum(len(g) for u in evaluated for g in groups[u][1:-2])
    repeats = sum(len(set(g) & set(sum(groups[u][:j], [])))
                  for u in evaluated for j, g in enumerate(groups[u][:-2]) if j)
    assert stats["train_repeat_targets"] == repeats > 0  # items bought again: in an earlier training group
    assert stats["examples"]["valid"] == stats["examples"]["test"] == len(evaluated)
    assert stats["history_length"]["max"] == max(sum(map(len, groups[u][:-1])) for u in evaluated)
    assert stats["config_fingerprint"] == sample_config.fingerprint("data")
    assert stats["normalize_ids"] is True
    assert (stats["time_range"]["first_event"], stats["time_range"]["last_event"]) == (expected["first"],
                                                                                       expected["last"])
    assert expected["first"] < stats["time_range"]["test_from"] <= stats["time_range"]["test_to"] <= expected["last"]
    assert all("." not in user for user in groups)


def test_vocabulary_and_item_records(expected, sample_data_dir):
    vocab = outputs.vocab(sample_data_dir)
    assert vocab == sorted(expected["texts"])
    items = outputs.items(sample_data_dir)
    assert sorted(r["item_index"][0] for r in items) == list(range(len(vocab)))
    assert {r["item_id"][0]: r["text"][0] for r in items} == expected["texts"]
    train_targets = collections.Counter(t for r in outputs.split(sample_data_dir, "train") for t in r["targets"])
    assert {r["item_index"][0]: r["train_count"][0] for r in items if r["train_count"][0]} == train_targets
    assert outputs.stats(sample_data_dir)["cold_start_items"] == len(vocab) - len(train_targets)


def test_no_split_sees_its_future(expected, sample_config, sample_data_dir):
    index = {item: i for i, item in enumerate(outputs.vocab(sample_data_dir))}
    groups = {u: [[index[i] for i in g] for g in gs] for u, gs in expected["groups"].items()}
    max_history = sample_config.data.sequences.max_history
    for example in outputs.split(sample_data_dir, "train"):
        user_groups = groups[example["user_id"][0]]
        # The window of training group j: the items of groups < j -> the items of group j.
        windows = [(flat(user_groups[:j])[-max_history:], user_groups[j], [j]) for j in range(1, len(user_groups) - 2)]
        assert (example["history"], example["targets"], example["target_group"]) in windows, example
    for split, held_out in (("valid", -2), ("test", -1)):
        for example in outputs.split(sample_data_dir, split):
            user_groups = groups[example["user_id"][0]]
            ordinal = len(user_groups) + held_out
            assert example["history"] == flat(user_groups[:ordinal])
            assert example["history_group"] == [j for j in range(ordinal) for _ in user_groups[j]]
            assert max(example["history_group"]) < ordinal
            assert example["targets"] == sorted(set(user_groups[ordinal]))


def test_runs_and_runners_give_the_same_records(sample_config, sample_data_dir, tmp_path):
    reference = records(sample_data_dir)
    for name, beam_args in (("again", []), ("direct", ["--runner=DirectRunner"]),
                            ("multi", ["--direct_running_mode=multi_processing", "--direct_num_workers=2"])):
        output = tmp_path / name
        run_preprocess(sample_config, output, beam_args)
        again = records(output)
        for split in SPLITS:
            assert outputs.multiset(again[split]) == outputs.multiset(reference[split]), (name, split)
        assert outputs.vocab(output) == outputs.vocab(sample_data_dir)
        assert outputs.stats(output) == outputs.stats(sample_data_dir)


def test_without_a_runner_flag_the_job_runs_in_process_on_the_fn_api_runner():
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from pipelines.options import pipeline_options
    from pipelines.preprocess import local_runner

    assert isinstance(local_runner(pipeline_options(["--direct_num_workers=2"])), FnApiRunner)
    assert local_runner(pipeline_options(["--runner=DirectRunner"])) is None


def test_byte_ranges_of_an_uncompressed_copy_give_the_same_outputs(retail_sample, sample_config, sample_data_dir,
                                                                   tmp_path, monkeypatch):
    copy = tmp_path / "online_retail_sample.csv"
    copy.write_bytes(gzip.decompress(retail_sample.read_bytes()))
    monkeypatch.setattr(reading, "RANGE_BYTES", 256 << 10)
    assert len(reading.split_file(str(copy), copy.stat().st_size, "csv", True, reading.RANGE_BYTES)) > 10
    config = config_from_dict(apply_overrides(sample_config.to_dict(), [
        f"data.interactions.paths={json.dumps([str(copy)])}", "data.interactions.splittable=true"]))
    output = tmp_path / "split"
    stats = run_preprocess(config, output)
    reference = records(sample_data_dir)
    again = records(output)
    for split in SPLITS:
        assert outputs.multiset(again[split]) == outputs.multiset(reference[split]), split
    assert outputs.vocab(output) == outputs.vocab(sample_data_dir)
    expected = outputs.stats(sample_data_dir)
    assert stats["sources"] == {str(copy): expected["sources"][str(retail_sample)]}
    for key in ("sources", "config_fingerprint"):
        del stats[key], expected[key]
    assert stats == expected
    rejected = sorted((r["line"], r["reason"], r["raw"]) for r in outputs.rejected(output))
    assert rejected == sorted((r["line"], r["reason"], r["raw"]) for r in outputs.rejected(sample_data_dir))
