"""The Beam transform that reads input files, split into parts, and validates every row.

``ReadRows`` matches the configured patterns, splits every file into ``FilePart``s
(``split_file``: Parquet by row groups, uncompressed CSV / JSON lines by byte range when
the config calls them splittable, anything else whole), spreads the parts over the workers
with a ``Reshuffle``, and reads each with ``ParseFileFn`` (parse and validate in one pass,
``sources.validated_rows``, which keeps per-row overhead low). It returns the kept rows,
the rejections and per-file row counts.

Line numbers stay exact when a file is read in byte ranges: a first, cheap pass counts the
line starts in each range (only newline bytes are counted, nothing is parsed), and each
range numbers its lines from the sum of the counts of the ranges before it. So a rejected
row names its file and physical line whichever way the file was read.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import CompressionTypes, FileSystems

from pipelines.rows import Rejection, RowParser
from pipelines.sources import BYTES, ROW_GROUPS, FilePart, count_line_starts, detect_format, open_input, validated_rows

PROGRESS_SECONDS = 10.0
"""How often a file part being read reports its progress (a log line and the ``rows_read`` counter)."""
PROGRESS_CHECK_ROWS = 1024
"""Rows between two looks at the clock."""
RANGE_BYTES = 64 << 20
"""Bytes of a splittable CSV / JSON-lines file one worker reads at a time; Parquet row groups
are gathered into parts of about this size (at least one row group each)."""

# Outputs of ReadRows.
ROWS = "rows"
ITEMS = "items"
REJECTED = "rejected"
COUNTS = "counts"

log = logging.getLogger(__name__)


def split_file(path: str, size: int, fmt: str, splittable: bool, range_bytes: int) -> list[FilePart]:
    """The parts one file is read in: Parquet by row groups (gathered up to ``range_bytes``), an
    uncompressed CSV / JSON-lines file by byte ranges of ``range_bytes`` when ``splittable``,
    anything else whole. Every file has at least one part, so even an empty one is counted."""
    if fmt == "parquet":
        with open_input(path, fmt) as stream:
            metadata = pq.ParquetFile(stream).metadata
        parts, start, gathered = [], 0, 0
        for group in range(metadata.num_row_groups):
            group_bytes = metadata.row_group(group).total_byte_size
            if group > start and gathered + group_bytes > range_bytes:
                parts.append(FilePart(path, ROW_GROUPS, start, group))
                start, gathered = group, 0
            gathered += group_bytes
        return [*parts, FilePart(path, ROW_GROUPS, start, metadata.num_row_groups)]
    if not splittable:
        return [FilePart(path)]
    compression = CompressionTypes.detect_compression_type(path)
    if compression != CompressionTypes.UNCOMPRESSED:
        log.info("%s: %s data cannot be read from the middle, so the file is read whole by one worker "
                 "(splittable applies to uncompressed files)", path, compression)
        return [FilePart(path)]
    return [FilePart(path, BYTES, start, min(start + range_bytes, size))
            for start in range(0, max(size, 1), range_bytes)]


def _line_starts(part: FilePart) -> Iterator[tuple[tuple[str, int], int]]:
    """``((path, start), lines starting in the part)`` for a byte range; nothing for other parts."""
    if part.unit == BYTES:
        with FileSystems.open(part.path, compression_type=CompressionTypes.UNCOMPRESSED) as stream:
            yield (part.path, part.start), count_line_starts(stream, part.start, part.stop)


def first_lines(counts: Sequence[tuple[tuple[str, int], int]]) -> dict[tuple[str, int], int]:
    """``(path, start) -> number of the first line starting in that byte range``, from every
    range's count of line starts (line numbers count from 1 at the file's start)."""
    numbers, before = {}, collections.Counter()
    for (path, start), n in sorted(counts):
        numbers[(path, start)] = before[path] + 1
        before[path] += n
    return numbers


def merge_counts(counts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several ``{"read", "kept", "rejected": {reason: n}}`` row counts."""
    read, kept, rejected = 0, 0, collections.Counter()
    for c in counts:
        read += c["read"]
        kept += c["kept"]
        rejected.update(c["rejected"])
    return {"read": read, "kept": kept, "rejected": dict(rejected)}


class ParseFileFn(beam.DoFn):
    """Reads one ``FilePart`` and validates every row.

    Main output: the ``Event`` of every kept interaction row. Tagged outputs: ``ITEMS``
    (``(item_id, ItemText)`` of kept rows that describe their item), ``REJECTED``
    (``Rejection``s) and ``COUNTS`` (one ``(source, {"read", "kept", "rejected"})`` per part,
    ``rejected`` counting each reason). Side inputs: ``first_lines`` (``first_lines()`` of the
    byte ranges) numbers the lines of a byte range in its file; with ``known_items``, rows
    naming an item outside it are rejected as ``unknown_item``.

    Progress: every ``progress_seconds`` (default ``PROGRESS_SECONDS``) while a part is read, the rows read so far go to
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

    def process(self, part: FilePart, first_lines: dict[tuple[str, int], int], known_items: Any = None):
        source = part.path
        if part.unit == BYTES:
            part = part._replace(first_line=first_lines[(source, part.start)])
        fmt = detect_format(source, self.fmt)
        read, kept, rejected = 0, 0, collections.Counter()
        counted, started = 0, time.monotonic()
        last_report = started
        every = PROGRESS_SECONDS if self.progress_seconds is None else self.progress_seconds

        for _, outcome in validated_rows(source, fmt, self.delimiter, self.parser, None, known_items, part):
            read += 1
            if not read % PROGRESS_CHECK_ROWS and time.monotonic() - last_report >= every:
                last_report = time.monotonic()
                self._count("rows_read", read - counted)
                counted = read
                log.info("%s: %s rows read from %s so far (%s kept, %s rejected; %s rows/s)", self.namespace,
                         f"{read:,}", part, f"{kept:,}", f"{sum(rejected.values()):,}",
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
    """Matches ``patterns`` and reads every file through ``parser``, split into parts that spread
    over the workers (see ``split_file``; ``range_bytes``: default ``RANGE_BYTES``).

    Returns ``{ROWS: events, ITEMS: (item_id, ItemText), REJECTED: Rejection, COUNTS: (source,
    counts)}``, with one ``COUNTS`` element per file. The lines of a byte range are numbered in
    their file from a first pass that only counts each range's line starts, so a row has the
    same line number however its file is read.
    """

    def __init__(self, patterns: Sequence[str], fmt: str, delimiter: str, parser: RowParser,
                 known_items: beam.pvalue.AsSideInput | None = None, progress_seconds: float | None = None,
                 splittable: bool = False, range_bytes: int | None = None):
        super().__init__()
        self.patterns = list(patterns)
        self.fmt = fmt
        self.delimiter = delimiter
        self.parser = parser
        self.known_items = known_items
        self.progress_seconds = progress_seconds
        self.splittable = splittable
        self.range_bytes = range_bytes or RANGE_BYTES

    def expand(self, pbegin):
        side = {"known_items": self.known_items} if self.known_items is not None else {}
        fmt, splittable, range_bytes = self.fmt, self.splittable, self.range_bytes
        parts = (
            pbegin
            | "Patterns" >> beam.Create(self.patterns)
            | "MatchFiles" >> fileio.MatchAll()
            | "PathsAndSizes" >> beam.Map(lambda m: (m.path, m.size_in_bytes))
            | "OncePerFile" >> beam.Distinct()  # a file two patterns match is read once
            | "SplitFiles" >> beam.FlatMapTuple(lambda path, size: split_file(
                path, size, detect_format(path, fmt), splittable, range_bytes))
            | "SpreadParts" >> beam.Reshuffle()
        )
        numbers = (
            parts
            | "CountLineStarts" >> beam.FlatMap(_line_starts)
            | "AllRanges" >> beam.combiners.ToList()
            | "FirstLines" >> beam.Map(first_lines)
        )
        read = parts | "ValidateRows" >> beam.ParDo(
            ParseFileFn(self.parser, self.fmt, self.delimiter, namespace=self.label,
                        progress_seconds=self.progress_seconds),
            first_lines=beam.pvalue.AsSingleton(numbers), **side,
        ).with_outputs(ITEMS, REJECTED, COUNTS, main=ROWS)
        counts = read[COUNTS] | "CountsPerFile" >> beam.CombinePerKey(merge_counts)
        return {ROWS: read[ROWS], ITEMS: read[ITEMS], REJECTED: read[REJECTED], COUNTS: counts}
