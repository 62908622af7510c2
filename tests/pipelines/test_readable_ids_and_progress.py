"""Ids written as floats become the shop's integer ids; the job reports progress and counters."""

import json
import logging

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import reading
from pipelines.preprocess import run_preprocess
from pipelines.rows import InteractionParser, normalize_id
from tfrec.config import config_from_dict

ROWS = [  # customer written as a float (a numeric column with gaps), stock codes as text
    ("15392.0", "85123", "536365", "2011-01-0{d} 10:00:00", "Heart holder"),
    ("15392.0", "71053.0", "536366", "2011-01-0{d} 11:00:00", "Metal lantern"),
    ("17850", "85123A", "536367.0", "2011-01-0{d} 12:00:00", "Cream cupid"),
    ("-3.00", "1.5", "536368", "2011-01-0{d} 13:00:00", "Glass star"),
]


def _write(folder, rows=ROWS, days=3):
    path = folder / "events.csv"
    lines = ["customer,code,invoice,time,title"]
    for day in range(1, days + 1):
        lines += [",".join(r).format(d=day).replace("5363", f"{day}363") for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(path, normalize=True):
    return config_from_dict({
        "name": "ids",
        "data": {
            "interactions": {"paths": [str(path)], "timestamp_format": "%Y-%m-%d %H:%M:%S",
                             "columns": {"user_id": "customer", "item_id": "code", "timestamp": "time",
                                         "group_id": "invoice"}},
            "items": {"text_fields": ["title"]},
            "normalize_ids": normalize,
        },
    })


def test_only_integers_written_as_floats_change():
    assert [normalize_id(v) for v in ("15392.0", "15392.000", "-3.00", "15392", "85123A", "1.5", "1e3", "0.0")] == [
        "15392", "15392", "-3", "15392", "85123A", "1.5", "1e3", "0"]


@pytest.mark.parametrize("normalize, users, items", [
    (True, ["15392", "15392", "17850", "-3"], ["85123", "71053", "85123A", "1.5"]),
    (False, ["15392.0", "15392.0", "17850", "-3.00"], ["85123", "71053.0", "85123A", "1.5"]),
])
def test_the_reader_normalizes_user_item_and_group_ids(tmp_path, normalize, users, items):
    config = _config(_write(tmp_path, days=1), normalize)
    data = config.data
    with BeamTestPipeline() as p:
        read = p | reading.ReadRows(data.interactions.paths, "auto", ",",
                                    InteractionParser(data.interactions, data.items, data.normalize_ids))
        assert_that(read[reading.ROWS] | beam.Map(lambda e: e.user), equal_to(users), label="Users")
        assert_that(read[reading.ROWS] | beam.Map(lambda e: e.item), equal_to(items), label="Items")
        assert_that(read[reading.ROWS] | beam.Map(lambda e: e.group),
                    equal_to(["13636" + "5", "136366", "136367" if normalize else "136367.0", "136368"]),
                    label="Groups")


def test_the_job_records_the_choice_reports_progress_and_counters(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(reading, "PROGRESS_CHECK_ROWS", 1)
    monkeypatch.setattr(reading, "PROGRESS_SECONDS", 0.0)
    config = _config(_write(tmp_path, days=4))
    with caplog.at_level(logging.INFO):
        stats = run_preprocess(config, tmp_path / "data")
    assert stats["normalize_ids"] is True
    assert json.loads((tmp_path / "data" / "stats.json").read_text())["normalize_ids"] is True
    vocabulary = (tmp_path / "data" / "vocab" / "items.txt").read_text().splitlines()
    assert "71053" in vocabulary and "71053.0" not in vocabulary
    # The held-out groups: each user's last invoice, the earliest at 11:00 on the last day.
    assert stats["time_range"] == {"first_event": "2011-01-01T10:00:00Z", "last_event": "2011-01-04T13:00:00Z",
                                   "test_from": "2011-01-04T11:00:00Z", "test_to": "2011-01-04T13:00:00Z"}
    log = caplog.text
    assert "rows read from" in log and "so far" in log
    assert "Beam counters:" in log and "ReadInteractions/rows_read" in log
    counters = log.split("Beam counters:")[1]
    assert f"{len(ROWS) * 4:>12,}" in counters.split("ReadInteractions/rows_read")[1].splitlines()[0]
