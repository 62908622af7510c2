"""Reading input files into numbered records, and the Beam transform that validates them.

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

``ReadRows`` is the composite that matches the configured patterns, reads every file
with ``ParseFileFn`` (parse and validate in one pass, which keeps per-row overhead low)
and returns the kept rows, the rejections and per-file row counts.
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
import time
import zlib
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
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
PROGRESS_SECONDS = 10.0
"""How often a file being read reports its progress (a log line and the ``rows_read`` counter)."""
PROGRESS_CHECK_ROWS = 1024
"""Rows between two looks at the clock."""

log = logging.getLogger(__name__)

_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}

# Tagged outputs of ParseFileFn.
ITEMS = "items"
REJECTED = "rejected"
COUNTS = "counts"


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


def _lines(stream: BinaryIO, first_number: int = 1) -> Iterator[tuple[int, bytes]]:
    return enumerate(iter(stream.readline, b""), start=first_number)


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


def read_csv(stream: BinaryIO, source: str, delimiter: str = ",") -> Iterator[Record | Rejection]:
    """Records of a CSV file with a header line; ``line`` is the physical line a record starts on."""
    # A long value is for validation to reject (too_long), not for the csv module's 128 KiB limit.
    csv.field_size_limit(CSV_FIELD_LIMIT)
    header = csv_header(stream, source, delimiter)
    numbered = _lines(stream, first_number=2)  # the header is line 1
    pending: collections.deque[tuple[int, bytes]] = collections.deque()

    def next_line() -> tuple[int, bytes] | None:
        return pending.popleft() if pending else next(numbered, None)

    while (first := next_line()) is not None:
        number, line = first
        if not line.strip():
            continue
        parts, quotes, size = [first], line.count(b'"'), len(line)
        while quotes % 2 and len(parts) < MAX_RECORD_LINES and size < MAX_RECORD_BYTES:
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


def read_jsonl(stream: BinaryIO, source: str) -> Iterator[Record | Rejection]:
    """Records of a JSON-lines file, one JSON object per line."""
    for number, line in _lines(stream):
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


def read_parquet(stream: BinaryIO, source: str, columns: Sequence[str]) -> Iterator[Record]:
    """Records of a Parquet file (``line`` is the 1-based row number); reads only ``columns``."""
    parquet = pq.ParquetFile(stream)
    present = [c for c in columns if c in parquet.schema_arrow.names]
    number = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=present):
        for values in batch.to_pylist():
            number += 1
            yield Record(source, number, json.dumps(values, ensure_ascii=False, default=str), values)


def read_records(
    stream: BinaryIO, source: str, fmt: str, delimiter: str, columns: Sequence[str]
) -> Iterator[Record | Rejection]:
    if fmt == "csv":
        return read_csv(stream, source, delimiter)
    if fmt == "jsonl":
        return read_jsonl(stream, source)
    return read_parquet(stream, source, columns)


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


# --------------------------------------------------------------- Beam side


def validated_rows(path: str, fmt: str, delimiter: str, parser: RowParser, opener=None,
                   known_items: Any = None) -> Iterator[tuple[Record | None, ParsedRow | Rejection]]:
    """Every row of one file, parsed and validated: ``(record, ParsedRow)`` for a kept row, ``(record or
    None, Rejection)`` with its reason for a rejected one (the record: source, line and raw text).

    The one read-and-validate loop: the Beam job runs it per file (``ParseFileFn``) and
    ``tfrec index --add`` on a file of new products. With ``known_items``, a row naming an
    item outside it is rejected as ``unknown_item``. ``opener(compression_type)`` opens the
    file (default: Beam's ``FileSystems``, any filesystem Beam knows).
    """
    with open_input(path, fmt, opener) as stream:
        for record in read_records(stream, path, fmt, delimiter, parser.columns):
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


class ParseFileFn(beam.DoFn):
    """Reads one file and validates every row.

    Main output: the ``Event`` of every kept interaction row. Tagged outputs: ``ITEMS``
    (``(item_id, ItemText)`` of kept rows that describe their item), ``REJECTED``
    (``Rejection``s) and ``COUNTS`` (one ``(source, {"read", "kept", "rejected"})`` per file,
    ``rejected`` counting each reason). With a ``known_items`` side input, rows naming an
    item outside it are rejected as ``unknown_item``.

    Progress: every ``progress_seconds`` (default ``PROGRESS_SECONDS``) while a file is read, the rows read so far go to
    the ``rows_read`` counter (live in a runner's monitoring, e.g. Dataflow's job page)
    and to a log line.
    """

    def __init__(self, parser: RowParser, fmt: str, delimiter: str, namespace: str,
                 progress_seconds: float | None = None):
        self.parser = parser
        self.fmt = fmt
        self.delimiter = delimiter
        self.namespace = namespace
        self.progress_seconds = progress_seconds

    def process(self, readable: fileio.ReadableFile, known_items: Any = None):
        source = readable.metadata.path
        fmt = detect_format(source, self.fmt)
        read, kept, rejected = 0, 0, collections.Counter()
        counted, started = 0, time.monotonic()
        last_report = started
        every = PROGRESS_SECONDS if self.progress_seconds is None else self.progress_seconds

        def opener(compression_type):
            return readable.open(mime_type="application/octet-stream", compression_type=compression_type)

        for _, outcome in validated_rows(source, fmt, self.delimiter, self.parser, opener, known_items):
            read += 1
            if not read % PROGRESS_CHECK_ROWS and time.monotonic() - last_report >= every:
                last_report = time.monotonic()
                self._count("rows_read", read - counted)
                counted = read
                log.info("%s: %s rows read from %s so far (%s kept, %s rejected; %s rows/s)", self.namespace,
                         f"{read:,}", source, f"{kept:,}", f"{sum(rejected.values()):,}",
                         f"{read / max(last_report - started, 1e-9):,.0f}")
            if isinstance(outcome, Rejection):
                rejected[outcome.reason] += 1
                yield beam.pvalue.TaggedOutput(REJECTED, outcome)
                continue
            kept += 1
            if outcome.item is not None:
                yield beam.pvalue.TaggedOutput(ITEMS, (outcome.item_id, outcome.item))
            if outcome.event is not None:
                yield outcome.event
        self._count("rows_read", read - counted)
        self._count("rows_kept", kept)
        for reason, n in rejected.items():
            self._count("rows_rejected", n)
            self._count(f"rejected:{reason}", n)
        yield beam.pvalue.TaggedOutput(
            COUNTS, (source, {"read": read, "kept": kept, "rejected": dict(rejected)})
        )

    def _count(self, name: str, n: int) -> None:
        beam.metrics.Metrics.counter(self.namespace, name).inc(n)


class ReadRows(beam.PTransform):
    """Matches ``patterns`` and reads every file through ``parser``.

    Returns the ``DoOutputsTuple`` of ``ParseFileFn``: the main output (events) and the
    ``ITEMS``, ``REJECTED`` and ``COUNTS`` outputs.
    """

    def __init__(self, patterns: Sequence[str], fmt: str, delimiter: str, parser: RowParser,
                 known_items: beam.pvalue.AsSideInput | None = None, progress_seconds: float | None = None):
        super().__init__()
        self.patterns = list(patterns)
        self.fmt = fmt
        self.delimiter = delimiter
        self.parser = parser
        self.known_items = known_items
        self.progress_seconds = progress_seconds

    def expand(self, pbegin):
        side = {"known_items": self.known_items} if self.known_items is not None else {}
        return (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "MatchFiles" >> fileio.MatchAll()
            | "OpenFiles" >> fileio.ReadMatches()
            | "ValidateRows" >> beam.ParDo(
                ParseFileFn(self.parser, self.fmt, self.delimiter, namespace=self.label,
                            progress_seconds=self.progress_seconds), **side
            ).with_outputs(ITEMS, REJECTED, COUNTS, main="rows")
        )
