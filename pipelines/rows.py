"""Row-level validation: pure functions from one input row to an event, or a reason.

Every input row either becomes a kept row or is rejected with exactly one reason code.
The checks run in this order, and the first failing one names the reason:

=========================  ================================================================
``malformed_row``          bad CSV quoting, wrong field count, a JSON line that is not an object
``non_utf8``               the record's bytes are not valid UTF-8
``missing_field:<column>`` a required value is empty: user, item, timestamp, group id (when
                           configured); the item id of a catalogue row
``bad_id:<column>``        an id holds a line break (it could not be a line of the vocabulary)
``bad_timestamp``          the timestamp does not parse with ``timestamp_format``
``bad_number:<column>``    a quantity, or a value a numeric filter compares, is not a number
``filtered:<name>``        the row fails the configured filter ``name``
``too_long:<column>``      a text field is longer than ``data.items.max_text_chars``
``empty_text``             every text field of the item is empty
``unknown_item``           an interaction's item is not in the separate catalogue
=========================  ================================================================

Ids (user, item, group) that are integers written as floats, "15392.0" as spreadsheets and
pandas write a numeric column with gaps, are written as integers ("15392") unless
``data.normalize_ids`` is off (``normalize_id``), so every later stage shows and serves
the shop's own ids.

The first two come from the file readers (``pipelines.sources``); the rest from the
parsers below, which take a row's values as a mapping from column to value (text for
CSV, JSON values for JSON lines, Arrow values for Parquet) and strip whitespace.
"""

from __future__ import annotations

import calendar
import functools
import json
import math
import operator
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, NamedTuple

from tfrec.config import CatalogueConfig, FilterConfig, InteractionsConfig, ItemsConfig

MALFORMED_ROW = "malformed_row"
NON_UTF8 = "non_utf8"
BAD_TIMESTAMP = "bad_timestamp"
EMPTY_TEXT = "empty_text"
UNKNOWN_ITEM = "unknown_item"


def missing_field(column: str) -> str:
    return f"missing_field:{column}"


def bad_id(column: str) -> str:
    return f"bad_id:{column}"


def bad_number(column: str) -> str:
    return f"bad_number:{column}"


def filtered(name: str) -> str:
    return f"filtered:{name}"


def too_long(column: str) -> str:
    return f"too_long:{column}"


class Record(NamedTuple):
    """One input row as a reader found it."""

    source: str
    """The file it came from."""
    line: int
    """CSV / JSON lines: the physical line the record starts on (the header is line 1).
    Parquet: the 1-based row number."""
    raw: str
    """The record's text, for the rejected-rows file."""
    values: Mapping[str, Any]


class Rejection(NamedTuple):
    """One rejected input row: where it was, why, and what it said."""

    source: str
    line: int
    reason: str
    detail: str
    raw: str

    def to_json(self) -> str:
        return json.dumps(self._asdict(), ensure_ascii=False)


class Rejected(Exception):
    """Raised by a check: the row is rejected for ``reason``; ``detail`` names field and value."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Event(NamedTuple):
    """One kept interaction."""

    user: str
    item: str
    group: str | None
    """The basket / invoice / session id; None when the config names no group column."""
    timestamp: int
    """Epoch seconds (UTC)."""
    source: str
    line: int
    quantity: float


class ItemText(NamedTuple):
    """What one row says about its item."""

    text: str
    """The non-empty text fields, joined with ``text_separator``."""
    categorical: tuple[str, ...]
    """One value per ``categorical_fields`` entry, "" when empty."""


class ParsedRow(NamedTuple):
    """A kept row: the item it names, what it says about the item, and the event if any."""

    item_id: str
    item: ItemText | None
    """None for interaction rows when the catalogue is a separate file."""
    event: Event | None
    """None for catalogue rows."""


# ------------------------------------------------------------------ values


def text_value(value: Any) -> str:
    """A value as stripped text: CSV text as is, JSON / Arrow scalars as JSON, None as ""."""
    if isinstance(value, str):
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise Rejected(NON_UTF8, f"a value is not valid UTF-8: {value!r}") from None
    return json.dumps(value, ensure_ascii=False)


def _number(text: str, column: str, why: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise Rejected(bad_number(column), f"{column}={text!r} is not a number ({why})") from None


_FLOAT_INTEGER = re.compile(r"([+-]?\d+)\.0+")


def normalize_id(value: str) -> str:
    """An integer written as a float ("15392.0") as the integer ("15392"); any other id as it is.

    >>> normalize_id("15392.0"), normalize_id("85123A"), normalize_id("1.5"), normalize_id("007.00")
    ('15392', '85123A', '1.5', '007')
    """
    match = _FLOAT_INTEGER.fullmatch(value)
    return match.group(1) if match else value


def _required_id(values: Mapping[str, Any], column: str, normalize: bool = False) -> str:
    value = text_value(values.get(column))
    if normalize:
        value = normalize_id(value)
    if not value:
        raise Rejected(missing_field(column), f"{column} is empty")
    if "\n" in value or "\r" in value:
        raise Rejected(bad_id(column), f"{column}={value!r} holds a line break")
    return value


# -------------------------------------------------------------- timestamps


def _to_epoch(moment: datetime) -> int:
    if moment.tzinfo is None:  # naive times are UTC
        return calendar.timegm(moment.timetuple())
    return math.floor(moment.timestamp())


@functools.lru_cache(maxsize=1 << 16)
def _parse_timestamp_text(text: str, timestamp_format: str) -> int:
    if timestamp_format in ("unix", "unix_ms"):
        seconds = float(text) / (1000.0 if timestamp_format == "unix_ms" else 1.0)
        if not math.isfinite(seconds):
            raise ValueError(f"{text!r} is not a finite number")
        return math.floor(seconds)
    if timestamp_format == "iso8601":
        return _to_epoch(datetime.fromisoformat(text))
    return _to_epoch(datetime.strptime(text, timestamp_format))


def parse_timestamp(value: Any, timestamp_format: str) -> int:
    """Epoch seconds from a ``strptime`` pattern, ``iso8601``, ``unix`` or ``unix_ms`` value.

    Naive times are taken as UTC. Typed timestamps (Parquet) are used as they are.
    Raises ``ValueError`` when the value does not parse.
    """
    if isinstance(value, datetime):
        return _to_epoch(value)
    return _parse_timestamp_text(text_value(value), timestamp_format)


# ----------------------------------------------------------------- filters


_NUMERIC_OPS: dict[str, Callable[[float, float], bool]] = {
    "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
}
_NEGATED_OPS = {"ne": "eq", "not_in": "in", "not_startswith": "startswith", "not_matches": "matches"}


class RowFilter:
    """A compiled ``tfrec.config.Filter``: ``check(values)`` raises ``Rejected`` when the row fails.

    ``gt``/``ge``/``lt``/``le`` compare numbers (a non-number is ``bad_number:<column>``);
    every other op compares the stripped text with the value's text.
    """

    def __init__(self, rule: FilterConfig):
        self.rule = rule
        test = self._predicate(_NEGATED_OPS.get(rule.op, rule.op))
        self._test = (lambda text: not test(text)) if rule.op in _NEGATED_OPS else test

    def _predicate(self, op: str) -> Callable[[str], bool]:
        rule = self.rule
        texts = [str(v) for v in rule.value] if isinstance(rule.value, list) else [str(rule.value)]
        if op in _NUMERIC_OPS:
            compare, reference, why = _NUMERIC_OPS[op], float(rule.value), f"filter {rule.name}"
            return lambda text: compare(_number(text, rule.column, why), reference)
        if op == "present":
            return bool
        if op == "eq":
            return texts[0].__eq__
        if op == "in":
            return frozenset(texts).__contains__
        if op == "startswith":
            prefixes = tuple(texts)
            return lambda text: text.startswith(prefixes)
        patterns = [re.compile(t) for t in texts]  # matches
        return lambda text: any(p.match(text) for p in patterns)

    def check(self, values: Mapping[str, Any]) -> None:
        text = text_value(values.get(self.rule.column))
        if not self._test(text):
            value = "" if self.rule.value is None else f" {self.rule.value!r}"
            raise Rejected(
                filtered(self.rule.name),
                f"{self.rule.column}={text!r} fails {self.rule.op}{value}",
            )


# ------------------------------------------------------------------- items


class ItemTextBuilder:
    """Builds an item's text and categorical values from one row."""

    def __init__(self, items: ItemsConfig):
        self.items = items

    @property
    def columns(self) -> list[str]:
        return [*self.items.text_fields, *self.items.categorical_fields]

    def __call__(self, values: Mapping[str, Any]) -> ItemText:
        parts = []
        for column in self.items.text_fields:
            text = text_value(values.get(column))
            if len(text) > self.items.max_text_chars:
                raise Rejected(
                    too_long(column),
                    f"{column} has {len(text):,} characters, more than {self.items.max_text_chars:,}",
                )
            if text:
                parts.append(text)
        if not parts:
            raise Rejected(EMPTY_TEXT, f"every text field is empty ({', '.join(self.items.text_fields)})")
        categorical = tuple(text_value(values.get(c)) for c in self.items.categorical_fields)
        return ItemText(self.items.text_separator.join(parts), categorical)


# ----------------------------------------------------------------- parsers


class InteractionParser:
    """Validates one interaction row into a ``ParsedRow`` with its ``Event``.

    With ``items`` (the catalogue is inline), the row's item text is built and checked too.
    With ``normalize_ids``, ids that are integers written as floats become integers.
    """

    def __init__(self, interactions: InteractionsConfig, items: ItemsConfig | None, normalize_ids: bool = True):
        self.interactions = interactions
        self.normalize_ids = normalize_ids
        self.filters = [RowFilter(f) for f in interactions.filters]
        self.item_text = ItemTextBuilder(items) if items is not None else None

    @property
    def columns(self) -> list[str]:
        """Every column a row must have for this parser (for header checks)."""
        c = self.interactions.columns
        names = [c.user_id, c.item_id, c.timestamp, c.group_id, c.quantity]
        names += [f.column for f in self.interactions.filters]
        names += self.item_text.columns if self.item_text else []
        return list(dict.fromkeys(n for n in names if n))

    def __call__(self, record: Record) -> ParsedRow:
        values, c = record.values, self.interactions.columns
        user = _required_id(values, c.user_id, self.normalize_ids)
        item = _required_id(values, c.item_id, self.normalize_ids)
        group = _required_id(values, c.group_id, self.normalize_ids) if c.group_id else None
        stamp = values.get(c.timestamp)
        if not text_value(stamp):
            raise Rejected(missing_field(c.timestamp), f"{c.timestamp} is empty")
        try:
            timestamp = parse_timestamp(stamp, self.interactions.timestamp_format)
        except (ValueError, OverflowError):
            raise Rejected(
                BAD_TIMESTAMP,
                f"{c.timestamp}={text_value(stamp)!r} does not match {self.interactions.timestamp_format!r}",
            ) from None
        quantity = 1.0
        if c.quantity:
            text = text_value(values.get(c.quantity))
            quantity = _number(text, c.quantity, "quantity") if text else 1.0
        for row_filter in self.filters:
            row_filter.check(values)
        item_text = self.item_text(values) if self.item_text else None
        event = Event(user, item, group, timestamp, record.source, record.line, quantity)
        return ParsedRow(item, item_text, event)


class CatalogueParser:
    """Validates one row of a separate catalogue file into a ``ParsedRow`` without event."""

    def __init__(self, catalogue: CatalogueConfig, items: ItemsConfig, normalize_ids: bool = True):
        self.catalogue = catalogue
        self.normalize_ids = normalize_ids
        self.filters = [RowFilter(f) for f in catalogue.filters]
        self.item_text = ItemTextBuilder(items)

    @property
    def columns(self) -> list[str]:
        """Every column a row must have for this parser (for header checks)."""
        names = [self.catalogue.item_id, *(f.column for f in self.catalogue.filters), *self.item_text.columns]
        return list(dict.fromkeys(names))

    def __call__(self, record: Record) -> ParsedRow:
        item = _required_id(record.values, self.catalogue.item_id, self.normalize_ids)
        for row_filter in self.filters:
            row_filter.check(record.values)
        return ParsedRow(item, self.item_text(record.values), None)


RowParser = InteractionParser | CatalogueParser
