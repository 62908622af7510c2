"""``tfrec recommend``: ask an export for recommendations, similar items or a text search.

It calls the exported SavedModels themselves (the newest version of each), so what it
prints is what a model server answers. Results are a table of item ids, product texts
and scores, or JSON with ``--json``.

Examples::

    tfrec recommend --export runs/online_retail/export --history 85123A,71053 --explain
    tfrec recommend --export runs/online_retail/export --similar-to 85123A
    tfrec recommend --export runs/online_retail/export --query "red enamel mug"
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from serving.export import RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR
from serving.items import read_items
from serving.saved_model import load_serving_signature
from tfrec.errors import TfrecError


def _ids(text: str | None) -> list[str]:
    return [i.strip() for i in (text or "").split(",") if i.strip()]


def recommend(args: argparse.Namespace) -> dict:
    """Runs the request the arguments describe; returns ``{"request": ..., "results": [...]}``."""
    import tensorflow as tf

    export_dir = os.fspath(args.export)
    items = read_items(export_dir)
    history, exclude = _ids(args.history), _ids(args.exclude)
    unknown = [i for i in history + exclude + _ids(args.similar_to) if i not in items]
    if unknown:
        print(f"note: unknown item id(s) {', '.join(unknown)} (not in this export's catalogue); they are ignored",
              file=sys.stderr)
    common = {"k": tf.constant(args.k), "exclude_ids": tf.constant(exclude, tf.string),
              "category": tf.constant(args.category or "")}
    if args.similar_to:
        if args.similar_to not in items:
            raise TfrecError(f"unknown item id {args.similar_to!r}: it is not in this export's catalogue")
        out = load_serving_signature(export_dir, SIMILAR)(item_id=tf.constant([args.similar_to]), **common)
        request = {"similar_to": args.similar_to}
    elif args.query:
        out = load_serving_signature(export_dir, SEARCH)(query=tf.constant([args.query]),
                                                 history=tf.constant([history or [""]]), **common)
        request = {"query": args.query, "history": history}
    else:
        if not any(i in items for i in history):
            raise TfrecError("none of the history's item ids is in this export's catalogue")
        name = RETRIEVE_SCANN if args.scann else RETRIEVE
        out = load_serving_signature(export_dir, name)(history=tf.constant([history]),
                                               exclude_history=tf.constant(args.exclude_history), **common)
        request = {"history": history, "model": name}
    results = []
    for i, (item, score) in enumerate(zip(out["item_ids"].numpy()[0], out["scores"].numpy()[0])):
        item = item.decode()
        result = {"rank": i + 1, "item_id": item, "text": items.get(item, ""), "score": round(float(score), 5)}
        if args.explain and "because_ids" in out:
            because = out["because_ids"].numpy()[0][i].decode()
            result["because"] = {"item_id": because, "text": items.get(because, ""),
                                 "score": round(float(out["because_scores"].numpy()[0][i]), 5)}
        results.append(result)
    return {"request": request, "results": results}


def format_results(response: dict) -> str:
    rows = response["results"]
    explain = any("because" in r for r in rows)
    width = max([len(r["text"]) for r in rows] + [7])
    header = f"{'#':>3}  {'item':<12}{'product':<{width}}  {'score':>9}" + ("  because you bought" if explain else "")
    lines = [header, "-" * len(header)]
    for r in rows:
        line = f"{r['rank']:>3}  {r['item_id']:<12}{r['text']:<{width}}  {r['score']:>9.4f}"
        if explain:
            b = r["because"]
            line += f"  {b['text'] or b['item_id']} ({b['score']:.3f})" if b["item_id"] else "  -"
        lines.append(line)
    return "\n".join(lines)


def recommend_cli(args: argparse.Namespace) -> int:
    if sum(bool(x) for x in (args.similar_to, args.query)) > 1 or not (args.history or args.similar_to or args.query):
        raise TfrecError("give --history, --similar-to or --query (--query may be combined with --history)")
    response = recommend(args)
    print(json.dumps(response, indent=1) if args.json else format_results(response))
    return 0
