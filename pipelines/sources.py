"""Reading input files into numbered records, and validating them.

Readers work on a binary stream from ``FileSystems`` (so any filesystem Beam knows, and
any compression it detects from the extension) and yield, per input row, either a
``Record`` (its source file, line number, raw text and values) or a ``Rejection``.
CSV follows RFC 4180: a quoted value may span lines. A record whose quotes do not
balance within ``MAX_RECORD_LINES`` lines or ``MAX_RECORD_BYTES`` bytes is not allowed
to swallow the rest of the file: its first line is rejected as ``malformed_row`` and
reading resumes on the next line. Bytes are decoded as UTF-8 per record, so one bad
byte rejects one row (``non_utf8``).

A damaged compressed file (cut short, corrupt, or not compressed at all) is an error
naming the file and what is wrong with it, never a silent partial read: gzip, bzip2 and
xz files are read with Python's own readers, which check the end-of-stream marker and
the checksum, and every read error is reported as ``DamagedFileError``.

A reader reads a whole file, or one ``FilePart`` of it: the lines that start in a byte
range (uncompressed CSV and JSON lines whose records hold no line break), or a run of
Parquet row groups; a row's line number is the same either way. ``validated_rows`` is
the one loop that reads and validates rows; ``pipelines.reading`` runs it on the workers.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import csv
import gzip
import json
import logging
import lzma
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO, NamedTuple

import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import CompressionTypes, FileSystems

from pipelines import rows
from pipelines.rows import ParsedRow, Record, Rejected, Rejection, RowParser
from tfrec.errors import TfrecError

MAX_RECORD_LINES = 100
"""Physical lines one CSV record may span (quoted newlines) before its quoting is called bad."""
MAX_RECORD_BYTES = 1 << 20
"""Bytes one multi-line CSV record may hold before its quoting is called bad."""
CSV_FIELD_LIMIT = 2**31 - 1
PARQUET_BATCH_ROWS = 8192
COUNT_CHUNK_BYTES = 1 << 20
"""Bytes read at a time while counting the lines of a byte range."""

log = logging.getLogger(__name__)

_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}

def detect_format(path: str, declared: str) -> str:
    """The reader for ``path``: ``declared`` unless it is ``auto``, else by extension (.gz etc. ignored)."""
    if declared != "auto":
        return declared
    name = path.lower()
    compression = CompressionTypes.detect_compression_type(name)
    if compression != CompressionTypes.UNCOMPRESSED:
        name = name.rsplit(".", 1)[0]
    for extension, fmt in _EXTENSIONS.items():
        if name.endswith(extension):
            return fmt
    raise TfrecError(
        f"{path}: cannot tell the format from the extension; name it with `format:` "
        f"(csv, jsonl or parquet) or use one of {', '.join(_EXTENSIONS)}"
    )


def match_files(patterns: Sequence[str], key: str) -> list[tuple[str, int]]:
    """``(path, size)`` of every file the patterns match, sorted; an empty pattern is an error."""
    found: dict[str, int] = {}
    for pattern in patterns:
        try:
            matched = FileSystems.match([pattern])[0].metadata_list
        except (BeamIOError, ValueError) as e:  # e.g. a filesystem Beam has no plugin for
            hint = " (for gs:// paths: pip install 'tfrec[gcp]')" if pattern.startswith("gs://") else ""
            raise TfrecError(f"{key}: cannot list {pattern!r}{hint}: {e}") from None
        if not matched:
            raise TfrecError(f"{key}: no file matches {pattern!r}")
        found.update((m.path, m.size_in_bytes) for m in matched)
    return sorted(found.items())


# ------------------------------------------------------------------ opening files


class DamagedFileError(TfrecError):
    """An input file that cannot be read to its end: truncated, corrupt, or not what its name says."""


_CHECKED_READERS = {CompressionTypes.GZIP: gzip.GzipFile, CompressionTypes.BZIP2: bz2.BZ2File,
                    CompressionTypes.LZMA: lzma.LZMAFile}
"""Compressions read with Python's readers: they raise on a missing end-of-stream marker or bad checksum."""
_READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def _damage(error: Exception, compression: str) -> str:
    """What a read error says about the file, in words."""
    text = str(error) or type(error).__name__
    if isinstance(error, EOFError):
        return f"the {compression} data ends before its end-of-stream marker: the file is cut short ({text})"
    if isinstance(error, gzip.BadGzipFile) and text.startswith("Not a gzipped file"):
        return f"it is not gzip data, though its name says so ({text})"
    if compression != CompressionTypes.UNCOMPRESSED:
        return f"its {compression} data is corrupt ({text})"
    return f"it cannot be read ({text})"


class _CheckedStream:
    """A binary stream whose read errors become ``DamagedFileError`` naming the file."""

    def __init__(self, stream: BinaryIO, source: str, compression: str):
        self._stream, self._source, self._compression = stream, source, compression

    def _checked(self, method, *args):
        try:
            return method(*args)
        except _READ_ERRORS as e:
            raise DamagedFileError(f"{self._source}: {_damage(e, self._compression)}; fix or remove the file "
                                   f"(nothing read from it is used)") from None

    def read(self, *args) -> bytes:
        return self._checked(self._stream.read, *args)

    def readline(self, *args) -> bytes:
        return self._checked(self._stream.readline, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def open_input(path: str, fmt: str, opener=None) -> Iterator[BinaryIO]:
    """An input file for reading, decompressed by its extension (Parquet as stored), every read checked.

    ``opener(compression_type)`` opens the raw file (default: ``FileSystems.open``); a Beam
    ``ReadableFile``'s ``open`` fits.
    """
    opener = opener or (lambda compression_type: FileSystems.open(path, compression_type=compression_type))
    compression = (CompressionTypes.UNCOMPRESSED if fmt == "parquet"
                   else CompressionTypes.detect_compression_type(path))
    reader = _CHECKED_READERS.get(compression)
    with opener(CompressionTypes.UNCOMPRESSED if reader else compression) as raw:
        stream = reader(fileobj=raw, mode="rb") if reader is gzip.GzipFile else (
            reader(raw, mode="rb") if reader else raw)
        with contextlib.closing(stream) if reader else contextlib.nullcontext(stream):
            yield stream if fmt == "parquet" else _CheckedStream(stream, path, compression)


# ------------------------------------------------------------------ readers


WHOLE, BYTES, ROW_GROUPS = "whole", "bytes", "row_groups"
"""The units ``FilePart`` reads: a whole file, a byte range, Parquet row groups."""


class ByteRange(NamedTuple):
    """The bytes ``[start, stop)`` of an uncompressed file: its lines are those that start there."""

    start: int
    stop: int


class FilePart(NamedTuple):
    """One unit of reading work: a whole file (``WHOLE``), the lines starting in a byte range
    ``[start, stop)`` of one (``BYTES``), or its Parquet row groups ``start .. stop - 1``
    (``ROW_GROUPS``). ``first_line`` numbers the first line of a byte range in its file."""

    path: str
    unit: str = WHOLE
    start: int = 0
    stop: int = 0
    first_line: int = 1

    @property
    def byte_range(self) -> ByteRange | None:
        return ByteRange(self.start, self.stop) if self.unit == BYTES else None

    @property
    def row_groups(self) -> range | None:
        return range(self.start, self.stop) if self.unit == ROW_GROUPS else None

    def __str__(self) -> str:
        if self.unit == BYTES:
            return f"{self.path} (bytes {self.start:,} to {self.stop:,})"
        if self.unit == ROW_GROUPS:
            return f"{self.path} (row groups {self.start:,} to {self.stop - 1:,})"
        return self.path


def _lines(stream: BinaryIO, first_number: int = 1) -> Iterator[tuple[int, bytes]]:
    return enumerate(iter(stream.readline, b""), start=first_number)


def _range_lines(stream: BinaryIO, span: ByteRange, first_number: int) -> Iterator[tuple[int, bytes]]:
    """The numbered lines that start in ``[span.start, span.stop)`` of a seekable, uncompressed stream.

    A range that starts mid-line skips to the next line start (the line belongs to the range it
    starts in); at offset 0 the stream is read from where it stands (after a CSV header).
    """
    if span.start > 0:
        stream.seek(span.start - 1)
        stream.readline()  # the end of the line before (just its newline if one ends at start - 1)
    position = stream.tell()
    number = first_number
    while position < span.stop:
        line = stream.readline()
        if not line:
            return
        yield number, line
        number += 1
        position += len(line)


def count_line_starts(stream: BinaryIO, start: int, stop: int) -> int:
    """How many lines start at a byte offset in ``[start, stop)`` (``stop`` at most the file size)."""
    count = 1 if start == 0 < stop else 0  # offset 0 starts a line; any other after a newline
    first = max(start, 1) - 1  # newlines at first .. stop - 2 start the lines at first + 1 .. stop - 1
    left = stop - 1 - first
    stream.seek(first)
    while left > 0:
        chunk = stream.read(min(left, COUNT_CHUNK_BYTES))
        if not chunk:
            break
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


def _parse_csv(text: str, delimiter: str) -> list[str]:
    parsed = list(csv.reader([text], delimiter=delimiter, strict=True))
    if len(parsed) != 1:
        raise csv.Error("not exactly one record")
    return parsed[0]


def csv_header(stream: BinaryIO, source: str, delimiter: str) -> list[str]:
    """The column names on the first line (a UTF-8 byte-order mark is dropped)."""
    first = stream.readline()
    try:
        return [name.strip() for name in _parse_csv(first.decode("utf-8-sig").rstrip("\r\n"), delimiter)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise TfrecError(f"{source}: line 1: cannot read the CSV header: {e}") from None


def read_csv(stream: BinaryIO, source: str, delimiter: str = ",", span: ByteRange | None = None,
             first_line: int = 1) -> Iterator[Record | Rejection]:
    """Records of a CSV file with a header line; ``line`` is the physical line a record starts on.

    With ``span``, only the records on lines starting in that byte range, the first of them
    numbered ``first_line`` (the header is still read from the file's start), and every line
    is one record: a quoted value may not span lines.
    """
    # A long value is for validation to reject (too_long), not for the csv module's 128 KiB limit.
    csv.field_size_limit(CSV_FIELD_LIMIT)
    header = csv_header(stream, source, delimiter)
    if span is None:
        numbered, most_lines = _lines(stream, first_number=2), MAX_RECORD_LINES  # the header is line 1
    else:  # at offset 0 the header was line first_line
        numbered = _range_lines(stream, span, first_line + 1 if span.start == 0 else first_line)
        most_lines = 1
    pending: collections.deque[tuple[int, bytes]] = collections.deque()

    def next_line() -> tuple[int, bytes] | None:
        return pending.popleft() if pending else next(numbered, None)

    while (first := next_line()) is not None:
        number, line = first
        if not line.strip():
            continue
        parts, quotes, size = [first], line.count(b'"'), len(line)
        while quotes % 2 and len(parts) < most_lines and size < MAX_RECORD_BYTES:
            more = next_line()
            if more is None:
                break
            parts.append(more)
            quotes += more[1].count(b'"')
            size += len(more[1])
        data = b"".join(p[1] for p in parts) if len(parts) > 1 else line
        try:
            text, bad_byte = data.decode("utf-8"), None
        except UnicodeDecodeError as e:
            text, bad_byte = _decode(data), e.start
        text = text.rstrip("\r\n")
        problem = "unbalanced quotes" if quotes % 2 else ""
        if not problem:
            try:
                fields = _parse_csv(text, delimiter)
                if len(fields) != len(header):
                    problem = f"{len(fields)} fields where the header has {len(header)}"
            except csv.Error as e:
                problem = f"bad quoting: {e}"
        if problem:
            # Reject the first line only; the lines it tried to swallow are read again.
            pending.extendleft(reversed(parts[1:]))
            yield Rejection(source, number, rows.MALFORMED_ROW, problem, _decode(line).rstrip("\r\n"))
        elif bad_byte is not None:
            yield Rejection(source, number, rows.NON_UTF8, f"invalid UTF-8 at byte {bad_byte}", text)
        else:
            yield Record(source, number, text, dict(zip(header, fields)))


def read_jsonl(stream: BinaryIO, source: str, span: ByteRange | None = None,
               first_line: int = 1) -> Iterator[Record | Rejection]:
    """Records of a JSON-lines file, one JSON object per line; with ``span``, only the lines that
    start in that byte range, the first of them numbered ``first_line``."""
    numbered = _lines(stream) if span is None else _range_lines(stream, span, first_line)
    for number, line in numbered:
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            yield Rejection(source, number, rows.NON_UTF8, f"invalid UTF-8 at byte {e.start}",
                            _decode(line).rstrip("\r\n"))
            continue
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            yield Rejection(source, number, rows.MALFORMED_ROW, f"invalid JSON: {e}", text)
            continue
        if not isinstance(values, dict):
            yield Rejection(source, number, rows.MALFORMED_ROW,
                            f"a JSON {type(values).__name__}, not an object", text)
            continue
        yield Record(source, number, text, values)


def read_parquet(stream: BinaryIO, source: str, columns: Sequence[str],
                 row_groups: range | None = None) -> Iterator[Record]:
    """Records of a Parquet file (``line`` is the 1-based row number in the file); reads only
    ``columns``, and with ``row_groups`` only those row groups."""
    parquet = pq.ParquetFile(stream)
    present = [c for c in columns if c in parquet.schema_arrow.names]
    if row_groups is None:
        row_groups = range(parquet.metadata.num_row_groups)
    if not row_groups:
        return
    number = sum(parquet.metadata.row_group(i).num_rows for i in range(row_groups.start))
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=row_groups, columns=present):
        for values in batch.to_pylist():
            number += 1
            yield Record(source, number, json.dumps(values, ensure_ascii=False, default=str), values)


def read_records(
    stream: BinaryIO, source: str, fmt: str, delimiter: str, columns: Sequence[str], part: FilePart | None = None
) -> Iterator[Record | Rejection]:
    """The records of one file, or of the ``part`` of it named (None: the whole file)."""
    span = part.byte_range if part is not None else None
    first_line = part.first_line if part is not None else 1
    if fmt == "csv":
        return read_csv(stream, source, delimiter, span, first_line)
    if fmt == "jsonl":
        return read_jsonl(stream, source, span, first_line)
    return read_parquet(stream, source, columns, part.row_groups if part is not None else None)


def file_columns(path: str, fmt: str, delimiter: str) -> list[str] | None:
    """The columns a CSV header or a Parquet schema declares; None for JSON lines."""
    if fmt == "csv":
        with open_input(path, fmt) as stream:
            return csv_header(stream, path, delimiter)
    if fmt == "parquet":
        with open_input(path, fmt) as stream:
            return list(pq.ParquetFile(stream).schema_arrow.names)
    return None


def check_columns(path: str, fmt: str, delimiter: str, needed: Sequence[str], key: str) -> None:
    """Raises ``TfrecError`` naming the file and column when a configured column is not in the file."""
    available = file_columns(path, fmt, delimiter)
    if available is None:
        return
    missing = [c for c in needed if c not in available]
    if missing:
        raise TfrecError(
            f"{path}: column {missing[0]!r} (from {key}) is not in the file; "
            f"its columns are {', '.join(available)}"
        )


# ------------------------------------------------------------ validation


def validated_rows(path: str, fmt: str, delimiter: str, parser: RowParser, opener=None, known_items: Any = None,
                   part: FilePart | None = None) -> Iterator[tuple[Record | None, ParsedRow | Rejection]]:
    """Every row of one file (or of its ``part``), parsed and validated: ``(record, ParsedRow)``
    for a kept row, ``(record or None, Rejection)`` with its reason for a rejected one (the
    record: source, line and raw text).

    The one read-and-validate loop: the Beam job runs it per file part (``ParseFileFn``) and
    ``tfrec index --add`` on a file of new products. With ``known_items``, a row naming an
    item outside it is rejected as ``unknown_item``. ``opener(compression_type)`` opens the
    file (default: Beam's ``FileSystems``, any filesystem Beam knows).
    """
    with open_input(path, fmt, opener) as stream:
        for record in read_records(stream, path, fmt, delimiter, parser.columns, part):
            if not isinstance(record, Record):
                yield None, record
                continue
            try:
                row = parser(record)
                if known_items is not None and row.item_id not in known_items:
                    raise Rejected(rows.UNKNOWN_ITEM, f"item {row.item_id!r} is not in the catalogue")
            except Rejected as e:
                yield record, Rejection(record.source, record.line, e.reason, e.detail, record.raw)
                continue
            yield record, row
