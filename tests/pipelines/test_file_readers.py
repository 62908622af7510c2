"""File readers: line numbers, RFC 4180 quoting, bounded recovery from bad quoting, encodings."""

import gzip
import io
import json

import pandas as pd
import pytest

from pipelines import sources
from pipelines.rows import Record, Rejection
from tfrec.errors import TfrecError


def read_csv(text: bytes) -> list[Record | Rejection]:
    return list(sources.read_csv(io.BytesIO(text), "f.csv"))


def outcomes(records) -> list[tuple[int, str]]:
    return [(r.line, r.reason if isinstance(r, Rejection) else "ok") for r in records]


def test_quoted_newlines_and_delimiters_keep_the_starting_line():
    records = read_csv(b'id,text\n1,"two\nlines, and ""quotes"""\n2,plain\r\n\n3,"x"\n')
    assert outcomes(records) == [(2, "ok"), (4, "ok"), (6, "ok")]
    assert records[0].values == {"id": "1", "text": 'two\nlines, and "quotes"'}
    assert records[1].values == {"id": "2", "text": "plain"}


def test_unbalanced_quote_rejects_one_line_and_reading_resumes():
    rows = [b"%d,fine" % i for i in range(3, 300)]
    records = read_csv(b'id,text\n1,"never closed\n' + b"\n".join(rows) + b"\n")
    assert outcomes(records)[:3] == [(2, "malformed_row"), (3, "ok"), (4, "ok")]
    assert len(records) == 1 + len(rows)
    assert records[0].raw == '1,"never closed'


def test_two_stray_quotes_do_not_merge_the_lines_between_them():
    records = read_csv(b'id,text\n1,ab"c\n2,fine\n3,x"y\n4,fine\n')
    assert outcomes(records) == [(2, "malformed_row"), (3, "ok"), (4, "malformed_row"), (5, "ok")]


def test_field_count_and_strict_quoting():
    records = read_csv(b'a,b,c\n1,2\n1,2,3,4\n1,"2"x,3\n1,2,3\n')
    assert outcomes(records) == [(2, "malformed_row"), (3, "malformed_row"), (4, "malformed_row"), (5, "ok")]
    assert "2 fields where the header has 3" in records[0].detail


def test_values_longer_than_the_csv_module_default_are_read():
    records = read_csv(b"id,text\n1," + b"x" * 200_000 + b"\n")
    assert len(records[0].values["text"]) == 200_000


def test_invalid_utf8_rejects_only_its_row_with_escaped_raw():
    records = read_csv(b"a,b\n1,caf\xe9\n" + "2,café\n".encode())
    assert outcomes(records) == [(2, "non_utf8"), (3, "ok")]
    assert records[0].raw == "1,caf\\xe9"
    assert records[1].values["b"] == "café"


def test_header_byte_order_mark_and_other_delimiters():
    records = list(sources.read_csv(io.BytesIO("\ufeffa;b\n1;2\n".encode()), "f.csv", ";"))
    assert records[0].values == {"a": "1", "b": "2"}


def test_json_lines():
    text = b'{"u": "a", "n": 1}\n\n[1, 2]\n{"u": \n"\xff"\n{"u": "b"}\n'
    records = list(sources.read_jsonl(io.BytesIO(text), "f.jsonl"))
    assert outcomes(records) == [(1, "ok"), (3, "malformed_row"), (4, "malformed_row"), (5, "non_utf8"), (6, "ok")]
    assert records[0].values == {"u": "a", "n": 1}
    assert "not an object" in records[1].detail


def test_parquet_row_numbers_and_column_selection(tmp_path):
    path = tmp_path / "f.parquet"
    pd.DataFrame({"u": ["a", None, "c"], "n": [1, 2, 3], "unused": ["x", "y", "z"]}).to_parquet(path)
    with open(path, "rb") as stream:
        records = list(sources.read_parquet(stream, str(path), ["u", "n", "absent"]))
    assert [r.line for r in records] == [1, 2, 3]
    assert records[1].values == {"u": None, "n": 2}
    assert json.loads(records[0].raw) == {"u": "a", "n": 1}


@pytest.mark.parametrize("path, fmt", [
    ("a/b.csv", "csv"), ("b.CSV.gz", "csv"), ("b.jsonl.gz", "jsonl"), ("b.json", "jsonl"),
    ("b.parquet", "parquet"), ("gs://bucket/x/b.tsv", "csv"),
])
def test_format_from_extension(path, fmt):
    assert sources.detect_format(path, "auto") == fmt
    assert sources.detect_format(path, "jsonl") == "jsonl"


def test_unknown_extension_and_missing_files_are_user_errors(tmp_path):
    with pytest.raises(TfrecError, match="format"):
        sources.detect_format("logs.txt", "auto")
    with pytest.raises(TfrecError, match="no file matches .*nothing-\\*.csv"):
        sources.match_files([str(tmp_path / "nothing-*.csv")], "data.interactions.paths")
    with pytest.raises(TfrecError, match="absent.csv"):
        sources.match_files([str(tmp_path / "absent.csv")], "data.interactions.paths")


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("user,item\n1,2\n")
    with pytest.raises(TfrecError, match="f.csv: column 'ts'"):
        sources.check_columns(str(path), "csv", ",", ["user", "ts"], "data.interactions")


def _damaged_gzip(tmp_path, kind: str):
    """A CSV of 300 rows, gzipped and then damaged: cut in half, corrupted, or plain text named .gz."""
    text = "u,i\n" + "".join(f"user{n},item{n}\n" for n in range(300))
    path = tmp_path / f"{kind}.csv.gz"
    data = gzip.compress(text.encode())
    if kind == "cut":
        data = data[: len(data) // 2]
    elif kind == "corrupt":
        data = data[:20] + bytes(b ^ 0xFF for b in data[20:60]) + data[60:]
    else:
        data = text.encode()
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind, words", [
    ("cut", "ends before its end-of-stream marker: the file is cut short"),
    ("corrupt", "its gzip data is corrupt"),
    ("plain", "it is not gzip data, though its name says so"),
])
def test_a_damaged_gzip_is_an_error_naming_the_file_never_a_partial_read(tmp_path, kind, words):
    path = _damaged_gzip(tmp_path, kind)
    with pytest.raises(sources.DamagedFileError, match=words) as caught:
        with sources.open_input(str(path), "csv") as stream:
            list(sources.read_records(stream, str(path), "csv", ",", ["u", "i"]))
    assert str(path) in str(caught.value)
    if kind == "plain":  # the header check before the job fails the same way
        with pytest.raises(sources.DamagedFileError, match=words):
            sources.check_columns(str(path), "csv", ",", ["u"], "data.interactions")


def test_an_intact_gzip_reads_every_row(tmp_path):
    path = tmp_path / "whole.csv.gz"
    path.write_bytes(gzip.compress(b"u,i\n" + b"".join(b"a,%d\n" % n for n in range(300))))
    with sources.open_input(str(path), "csv") as stream:
        assert len(list(sources.read_records(stream, str(path), "csv", ",", ["u", "i"]))) == 300
