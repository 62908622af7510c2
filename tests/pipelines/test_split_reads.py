"""Files read in parts: byte ranges of splittable CSV / JSON lines, Parquet row groups, compressed
files whole. Every part-wise read must give the rows, rejections, line numbers and per-file counts
of the whole-file read."""

import collections
import gzip
import io
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import reading, sources
from pipelines.rows import InteractionParser, Rejection
from tests.pipelines.bad_rows import HEADER, LINES, bad_rows_config
from tfrec.errors import TfrecError

ONE_LINE_RECORDS = [record for _, record, _ in LINES if b"\n" not in record]


# ------------------------------------------------------------ readers on byte ranges


def parts_of(data: bytes, range_bytes: int) -> list[sources.FilePart]:
    """The byte ranges of ``data``, numbered as ``ReadRows`` numbers them."""
    ranges = [(s, min(s + range_bytes, len(data))) for s in range(0, max(len(data), 1), range_bytes)]
    counts = [(("f", s), sources.count_line_starts(io.BytesIO(data), s, e)) for s, e in ranges]
    first = reading.first_lines(counts)
    return [sources.FilePart("f", sources.BYTES, s, e, first[("f", s)]) for s, e in ranges]


def read_in_ranges(data: bytes, fmt: str, range_bytes: int) -> list:
    found = []
    for part in parts_of(data, range_bytes):
        found += sources.read_records(io.BytesIO(data), "f", fmt, ",", [], part)
    return found


def read_whole(data: bytes, fmt: str) -> list:
    return list(sources.read_records(io.BytesIO(data), "f", fmt, ",", []))


CSV_FILES = {
    "lf": b"id,text\n1,a\n2,bb\n\n3,ccc\n4,\"d,d\"\n5,bad\"quote\n6,x,y\n",
    "crlf": b"id,text\r\n1,a\r\n2,bb\r\n\r\n3,ccc\r\n4,\"d,d\"\r\n",
    "no final newline": b"id,text\n1,a\n2,bb\n3,ccc",
    "header only": b"id,text\n",
    "header only, no newline": b"id,text",
    "blank lines": b"id,text\n\n\n1,a\n\n",
    "non-utf8": b"id,text\n1,caf\xe9\n2,ok\n",
}


@pytest.mark.parametrize("name", sorted(CSV_FILES))
def test_every_range_size_reads_each_csv_line_once_with_its_line_number(name):
    data = CSV_FILES[name]
    whole = read_whole(data, "csv")
    for range_bytes in range(1, len(data) + 2):
        assert read_in_ranges(data, "csv", range_bytes) == whole, range_bytes


def test_every_range_size_reads_each_jsonl_line_once_with_its_line_number():
    data = b'{"a": 1}\n\n[1]\n{"a": \n{"a": "caf\xe9"}\r\n{"a": 2}'
    whole = read_whole(data, "jsonl")
    assert [r.line for r in whole] == [1, 3, 4, 5, 6]
    for range_bytes in range(1, len(data) + 2):
        assert read_in_ranges(data, "jsonl", range_bytes) == whole, range_bytes


def test_empty_files_in_ranges():
    assert parts_of(b"", 4) == [sources.FilePart("f", sources.BYTES, 0, 0, 1)]
    for fmt in ("csv", "jsonl"):
        assert read_in_ranges(b"", fmt, 4) == read_whole(b"", fmt) == []


def test_a_bad_csv_header_is_an_error_naming_the_file_in_every_range():
    data = b'id,"text\n1,a\n2,b\n'
    for part in parts_of(data, 5):
        with pytest.raises(TfrecError, match="f: line 1: cannot read the CSV header"):
            list(sources.read_records(io.BytesIO(data), "f", "csv", ",", [], part))


def test_a_quoted_line_break_in_a_splittable_file_rejects_the_lines_it_breaks():
    data = b'id,text\n1,"two\nlines"\n2,ok\n'
    assert [(r.line, type(r).__name__) for r in read_whole(data, "csv")] == [(2, "Record"), (4, "Record")]
    found = [(r.line, r.reason if isinstance(r, Rejection) else "ok") for r in read_in_ranges(data, "csv", 1000)]
    assert found == [(2, "malformed_row"), (3, "malformed_row"), (4, "ok")]


# ------------------------------------------------------------------- file parts


def test_split_file_cuts_uncompressed_text_into_ranges_and_reads_the_rest_whole(tmp_path, caplog):
    path = tmp_path / "events.csv"
    path.write_bytes(b"x" * 250)
    assert [(p.unit, p.start, p.stop) for p in reading.split_file(str(path), 250, "csv", True, 100)] == [
        ("bytes", 0, 100), ("bytes", 100, 200), ("bytes", 200, 250)]
    assert reading.split_file(str(path), 250, "csv", False, 100) == [sources.FilePart(str(path))]
    assert reading.split_file(str(path), 0, "csv", True, 100) == [sources.FilePart(str(path), "bytes", 0, 0)]
    with caplog.at_level(logging.INFO, logger="pipelines.reading"):
        parts = reading.split_file(str(tmp_path / "events.csv.gz"), 10_000, "csv", True, 100)
    assert parts == [sources.FilePart(str(tmp_path / "events.csv.gz"))]
    assert caplog.text.count("events.csv.gz: gzip data cannot be read from the middle") == 1


# ------------------------------------------------------------- the Beam transform


def whole_file_outcomes(paths, fmt, parser):
    """Events, rejections and per-file counts of the whole-file reads, without Beam."""
    events, rejections, counts = [], [], []
    for path in paths:
        outcomes = [row for _, row in sources.validated_rows(str(path), sources.detect_format(str(path), fmt),
                                                              ",", parser)]
        rejected = [r for r in outcomes if isinstance(r, Rejection)]
        events += [r.event for r in outcomes if not isinstance(r, Rejection)]
        rejections += rejected
        counts.append((str(path), {"read": len(outcomes), "kept": len(outcomes) - len(rejected),
                                   "rejected": dict(collections.Counter(r.reason for r in rejected))}))
    return events, rejections, counts


def check_read_rows(paths, fmt, parser, range_bytes, **options):
    """ReadRows in byte ranges / row groups and whole gives the whole-file reads' outcomes."""
    events, rejections, counts = whole_file_outcomes(paths, fmt, parser)
    assert all(c["read"] == c["kept"] + sum(c["rejected"].values()) for _, c in counts)
    patterns = [str(p) for p in paths]
    with BeamTestPipeline() as p:
        for name, splittable in (("Whole", False), ("Split", True)):
            read = p | f"Read{name}" >> reading.ReadRows(patterns, fmt, ",", parser, splittable=splittable,
                                                         range_bytes=range_bytes, **options)
            assert_that(read[reading.ROWS], equal_to(events), label=f"Events{name}")
            assert_that(read[reading.REJECTED], equal_to(rejections), label=f"Rejected{name}")
            assert_that(read[reading.COUNTS], equal_to(counts), label=f"Counts{name}")
    return events, rejections


def test_csv_in_100_byte_ranges_gives_the_whole_file_rows_and_rejections(tmp_path):
    config = bad_rows_config(tmp_path / "*.csv")
    first = tmp_path / "one.csv"
    first.write_bytes(HEADER + b"\n".join(ONE_LINE_RECORDS) + b"\n")
    second = tmp_path / "two.csv"  # CRLF, no newline at the end
    second.write_bytes(HEADER.replace(b"\n", b"\r\n") + b"\r\n".join(ONE_LINE_RECORDS[-6:]))
    header_only = tmp_path / "three.csv"
    header_only.write_bytes(HEADER)
    assert len(reading.split_file(str(first), first.stat().st_size, "csv", True, 100)) > 10
    parser = InteractionParser(config.data.interactions, config.data.items)
    events, rejections = check_read_rows([first, second, header_only], "csv", parser, 100)
    assert len(events) == 9 and len(rejections) == 14
    assert {(r.source, r.line) for r in rejections if r.reason == "too_long:title"} == {(str(first), 9)}


def test_a_file_two_patterns_match_is_read_once(tmp_path):
    config = bad_rows_config(tmp_path / "*.csv")
    path = tmp_path / "one.csv"
    path.write_bytes(HEADER + b"\n".join(ONE_LINE_RECORDS) + b"\n")
    parser = InteractionParser(config.data.interactions, config.data.items)
    events, rejections, counts = whole_file_outcomes([path], "csv", parser)
    with BeamTestPipeline() as p:
        read = p | reading.ReadRows([str(tmp_path / "*.csv"), str(path)], "csv", ",", parser, splittable=True,
                                    range_bytes=100)
        assert_that(read[reading.ROWS], equal_to(events), label="Events")
        assert_that(read[reading.REJECTED], equal_to(rejections), label="Rejected")
        assert_that(read[reading.COUNTS], equal_to(counts), label="Counts")


def test_jsonl_in_100_byte_ranges_gives_the_whole_file_rows_and_rejections(tmp_path):
    config = bad_rows_config(tmp_path / "*.jsonl")
    rows = [{"user": f"u{n % 3}", "item": str(100 + n % 5), "basket": f"b{n}", "ts": f"2024-01-0{1 + n % 9} 10:00:00",
             "qty": "1", "price": "1.5", "title": f"Mug {n}"} for n in range(30)]
    rows[4]["ts"], rows[7]["price"], rows[12]["user"] = "yesterday", "free", ""
    lines = [json.dumps(row) for row in rows]
    lines[20] = '{"user": "u1", "item": '  # malformed
    lines.insert(9, "")  # a blank line is numbered but is no row
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    parser = InteractionParser(config.data.interactions, config.data.items)
    events, rejections = check_read_rows([path, empty], "jsonl", parser, 100)
    assert len(events) == 26
    assert sorted((r.line, r.reason) for r in rejections) == [
        (5, "bad_timestamp"), (8, "bad_number:price"), (14, "missing_field:user"), (22, "malformed_row")]


def test_parquet_is_read_by_row_groups(tmp_path):
    config = bad_rows_config(tmp_path / "*.parquet")
    rows = [{"user": f"u{n % 4}", "item": str(100 + n % 3), "basket": f"b{n}", "ts": "2024-01-01 10:00:00",
             "qty": "1" if n % 5 else "-1", "price": "2.0", "title": f"Lamp {n}"} for n in range(23)]
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=5)
    size = path.stat().st_size
    assert len(reading.split_file(str(path), size, "parquet", False, 1)) == 5
    assert len(reading.split_file(str(path), size, "parquet", False, reading.RANGE_BYTES)) == 1
    parser = InteractionParser(config.data.interactions, config.data.items)
    events, rejections = check_read_rows([path], "parquet", parser, 1)
    assert [r.line for r in rejections] == [1, 6, 11, 16, 21]
    assert sorted(e.line for e in events) == [n + 1 for n in range(23) if n % 5]


def test_a_gzip_csv_marked_splittable_is_read_whole(tmp_path):
    config = bad_rows_config(tmp_path / "*.csv.gz")
    path = tmp_path / "events.csv.gz"
    # A quoted line break: only a whole-file read keeps that row (line 3).
    path.write_bytes(gzip.compress(HEADER + b"\n".join(record for _, record, _ in LINES) + b"\n"))
    parser = InteractionParser(config.data.interactions, config.data.items)
    events, _ = check_read_rows([path], "auto", parser, 100)
    assert 3 in {e.line for e in events}
