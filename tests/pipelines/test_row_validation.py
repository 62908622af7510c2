"""Row validation: timestamps, filters, required fields and item texts, without Beam."""

from datetime import UTC, datetime

import pytest

from pipelines import rows
from pipelines.rows import (
    CatalogueParser,
    Event,
    InteractionParser,
    ItemText,
    Record,
    Rejected,
    RowFilter,
    parse_timestamp,
)
from tfrec.config import CatalogueConfig, ColumnsConfig, FilterConfig, InteractionsConfig, ItemsConfig

EPOCH_2024 = 1704067200  # 2024-01-01 00:00:00 UTC


@pytest.mark.parametrize("value, fmt, expected", [
    ("2024-01-01 00:00:00", "%Y-%m-%d %H:%M:%S", EPOCH_2024),
    ("01/01/2024 00:01", "%d/%m/%Y %H:%M", EPOCH_2024 + 60),
    ("2024-01-01T00:00:00", "iso8601", EPOCH_2024),
    ("2024-01-01T01:00:00+01:00", "iso8601", EPOCH_2024),
    ("2024-01-01T00:00:00Z", "iso8601", EPOCH_2024),
    (" 1704067200 ", "unix", EPOCH_2024),
    ("1704067200.9", "unix", EPOCH_2024),
    ("1704067200500", "unix_ms", EPOCH_2024),
    (1704067200, "unix", EPOCH_2024),
    (datetime(2024, 1, 1, tzinfo=UTC), "unix", EPOCH_2024),
])
def test_timestamps_parse_to_utc_epoch_seconds(value, fmt, expected):
    assert parse_timestamp(value, fmt) == expected


@pytest.mark.parametrize("value, fmt", [
    ("yesterday", "iso8601"), ("2024-13-01 00:00:00", "%Y-%m-%d %H:%M:%S"), ("nan", "unix"), ("12abc", "unix_ms"),
])
def test_bad_timestamps_raise(value, fmt):
    with pytest.raises(ValueError):
        parse_timestamp(value, fmt)


@pytest.mark.parametrize("op, value, passing, failing", [
    ("eq", "GB", "GB", "FR"),
    ("ne", "GB", "FR", "GB"),
    ("gt", 0, "1.5", "0"),
    ("ge", 0, "0", "-1"),
    ("lt", 10, "9", "10"),
    ("le", 10, "10", "11"),
    ("in", ["GB", "FR"], "FR", "DE"),
    ("not_in", ["GB", "FR"], "DE", "GB"),
    ("startswith", "C", "C123", "123"),
    ("not_startswith", "C", "123", "C123"),
    ("matches", r"\d{5}", "12345A", "POST"),
    ("not_matches", r"\d{5}", "POST", "12345"),
    ("present", None, "x", ""),
])
def test_each_filter_op_keeps_and_rejects(op, value, passing, failing):
    row_filter = RowFilter(FilterConfig(name="rule", column="c", op=op, value=value))
    row_filter.check({"c": f" {passing} "})
    with pytest.raises(Rejected) as caught:
        row_filter.check({"c": failing})
    assert caught.value.reason == "filtered:rule"
    assert "c=" in caught.value.detail


def test_numeric_filter_on_text_is_bad_number():
    row_filter = RowFilter(FilterConfig(name="positive_price", column="price", op="gt", value=0))
    with pytest.raises(Rejected) as caught:
        row_filter.check({"price": "free"})
    assert caught.value.reason == "bad_number:price"
    assert "'free'" in caught.value.detail


INTERACTIONS = InteractionsConfig(
    paths=["x.csv"],
    columns=ColumnsConfig(user_id="user", item_id="item", timestamp="ts", group_id="basket", quantity="qty"),
    timestamp_format="unix",
    filters=[FilterConfig(name="positive_quantity", column="qty", op="gt", value=0)],
)
ITEMS = ItemsConfig(text_fields=["title", "brand"], categorical_fields=["category"], text_separator=" | ",
              max_text_chars=20)
GOOD = {"user": " u1 ", "item": "i1", "ts": "100", "basket": "b1", "qty": "2", "title": "Mug ",
        "brand": "", "category": "kitchen"}


def parse(values, items=ITEMS):
    return InteractionParser(INTERACTIONS, items)(Record("f.csv", 7, "raw", values))


def test_interaction_row_becomes_event_and_item_text():
    row = parse(GOOD)
    assert row.event == Event("u1", "i1", "b1", 100, "f.csv", 7, 2.0)
    assert row.item_id == "i1"
    assert row.item == ItemText("Mug", ("kitchen",))
    assert parse({**GOOD, "brand": "Acme"}).item.text == "Mug | Acme"
    assert parse(GOOD, items=None).item is None


@pytest.mark.parametrize("change, reason", [
    ({"user": "  "}, "missing_field:user"),
    ({"item": None}, "missing_field:item"),
    ({"basket": ""}, "missing_field:basket"),
    ({"ts": ""}, "missing_field:ts"),
    ({"item": "a\nb"}, "bad_id:item"),
    ({"ts": "soon"}, rows.BAD_TIMESTAMP),
    ({"qty": "two"}, "bad_number:qty"),
    ({"qty": "-1"}, "filtered:positive_quantity"),
    ({"title": "x" * 21}, "too_long:title"),
    ({"title": "", "brand": " "}, rows.EMPTY_TEXT),
])
def test_interaction_rejections(change, reason):
    with pytest.raises(Rejected) as caught:
        parse({**GOOD, **change})
    assert caught.value.reason == reason


def test_columns_lists_every_configured_column_once():
    assert InteractionParser(INTERACTIONS, ITEMS).columns == [
        "user", "item", "ts", "basket", "qty", "title", "brand", "category"]


def test_catalogue_row():
    parser = CatalogueParser(
        CatalogueConfig(paths=["c.csv"], item_id="sku",
                  filters=[FilterConfig(name="active", column="status", op="eq", value="active")]),
        ITEMS,
    )
    row = parser(Record("c.csv", 2, "raw", {"sku": "A1", "title": "Lamp", "brand": "Lux", "status": "active"}))
    assert (row.item_id, row.item, row.event) == ("A1", ItemText("Lamp | Lux", ("",)), None)
    with pytest.raises(Rejected, match="filtered:active"):
        parser(Record("c.csv", 3, "raw", {"sku": "A2", "title": "Lamp", "status": "retired"}))
    with pytest.raises(Rejected, match="missing_field:sku"):
        parser(Record("c.csv", 4, "raw", {"title": "Lamp", "status": "active"}))


def test_typed_values_become_text():
    assert rows.text_value(17850.0) == "17850.0"
    assert rows.text_value(3) == "3"
    assert rows.text_value(None) == ""
    assert rows.text_value(b" ab ") == "ab"
    with pytest.raises(Rejected, match="non_utf8"):
        rows.text_value(b"\xff")
