"""A small CSV with one bad row per reason code, its config and the expected outcome of each line."""

from tfrec.config import config_from_dict

HEADER = b"user,item,basket,ts,qty,price,title\n"
LINES = [  # (first line number, record bytes, expected reason or "kept")
    (2, b"u1,101,b1,2024-01-01 10:00:00,1,1.50,Red mug", "kept"),
    (3, b'u1,102,b1,2024-01-01 10:05:00,2,2.00,"Blue\nmug, large"', "kept"),
    (5, b'u2,103,b2,2024-01-02 10:00:00,1,1.00,"Green mug', "malformed_row"),
    (6, b",104,b3,2024-01-02 10:00:00,1,1.00,Yellow mug", "missing_field:user"),
    (7, b"u3,105,b4,yesterday,1,1.00,Pink mug", "bad_timestamp"),
    (8, b"u3,106,b4,2024-01-03 10:00:00,1,1.00,Caf\xe9 mug", "non_utf8"),
    (9, b"u3,107,b4,2024-01-03 10:00:00,-2,1.00,Grey mug", "filtered:positive_quantity"),
    (10, b'u3,108,b4,2024-01-03 10:00:00,1,1.00,""', "empty_text"),
    (11, b"u3,109,b4,2024-01-03 10:00:00,1,1.00," + b"x" * 100_000, "too_long:title"),
    (12, b"u3,110,b4,2024-01-03 10:00:00,1,1.00", "malformed_row"),
    (13, b"u3,POST,b4,2024-01-03 10:00:00,1,1.00,Postage", "filtered:product_code"),
    (14, b"u3,111,b4,2024-01-03 10:00:00,1,free,Mug", "bad_number:price"),
    (15, b"u3,112,b4,2024-01-03 10:00:00,two,1.00,Mug", "bad_number:qty"),
    (16, b'u3,"11"3,b4,2024-01-03 10:00:00,1,1.00,Mug', "malformed_row"),
    (17, b"u1,101,b5,2024-01-04 10:00:00,1,1.50,Red mug", "kept"),
    (18, b"u1,103,b6,2024-01-05 10:00:00,1,1.00,Green mug", "kept"),
    (19, b"u1,101,b7,2024-01-06 10:00:00,1,1.50,Red mug", "kept"),
    (20, b"u3,101,b8,2024-01-06 10:00:00,1,1.50,Red mug", "kept"),
]
KEPT_LINES = [line for line, _, outcome in LINES if outcome == "kept"]
REJECTED = {line: outcome for line, _, outcome in LINES if outcome != "kept"}


def bad_rows_config(path):
    return config_from_dict({
        "name": "bad_rows",
        "data": {
            "interactions": {
                "paths": [str(path)],
                "columns": {"user_id": "user", "item_id": "item", "timestamp": "ts",
                            "group_id": "basket", "quantity": "qty"},
                "timestamp_format": "%Y-%m-%d %H:%M:%S",
                "filters": [
                    {"name": "positive_quantity", "column": "qty", "op": "gt", "value": 0},
                    {"name": "positive_price", "column": "price", "op": "gt", "value": 0},
                    {"name": "product_code", "column": "item", "op": "matches", "value": r"\d"},
                ],
            },
            "items": {"text_fields": ["title"]},
        },
    })


def write_bad_rows(folder):
    """Writes ``folder/bad_rows.csv``; returns its path and config."""
    path = folder / "bad_rows.csv"
    path.write_bytes(HEADER + b"\n".join(record for _, record, _ in LINES) + b"\n")
    return path, bad_rows_config(path)
