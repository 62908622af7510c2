"""Two days of the bundled shop, run as a scheduler would: warm start, promotion gate,
catalogue change and the batch job.

Day 1 is every interaction before a cut date ``--days-before-end`` days before the last one;
day 2 is all of them. The script calls the ``tfrec`` commands a scheduler would call, in
this process, and reads their exit codes:

1. day 1: ``preprocess``, ``train``, ``index``, ``export`` (version 1 of the served folder);
2. day 2: ``preprocess``; ``train`` from scratch (cold) and ``train --warm-start`` day 1's
   model (warm), each timed and then evaluated (``evaluate``);
3. the gate: a deliberately worse model (one training step) is exported into the served
   folder with ``--data`` (it must be refused, exit code 3), then the warm model (it must be
   published);
4. a catalogue change: ``index --export --remove`` the products the served model recommends
   most, timed from command to published version; then every model that returns ids
   (exact, ScaNN, similar, search) is asked a sample of requests, counting removed ids
   returned, and ``verify`` checks the new version in graph mode;
5. ``batch`` over day 2's test customers, and the same customers' lists from the served
   model through the local REST server (``agreement_with_served``: the share of customers
   whose top-k is identical).

Writes ``--output`` (JSON) and prints a table.

    python bench/refresh.py --output bench/results/refresh.json [--work DIR]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from benchlib import ROOT, machine, write_json

CONFIG = "configs/online_retail.yaml"
DATA = ROOT / "data" / "online_retail" / "online_retail.csv.gz"
TIMESTAMP = "InvoiceDate"
REMOVED = 20
"""Products the catalogue change removes: those the served model recommends most."""
SAMPLE_REQUESTS = 200
REQUEST_K = 50
REST_ROWS = 32
NDCG = "test.explore.ndcg@10"


SETTINGS: list[str] = []
"""``--set KEY=VALUE`` overrides given to the script, passed to every command that reads the config."""


def config_args() -> list[str]:
    return ["--config", CONFIG, *(arg for setting in SETTINGS for arg in ("--set", setting))]


def tfrec(*args: str) -> int:
    """One ``tfrec`` command in this process; its exit code."""
    from tfrec.app.cli import main

    print(f"\n$ tfrec {' '.join(args)}", flush=True)
    return main(list(args))


def must(*args: str) -> None:
    code = tfrec(*args)
    if code != 0:
        raise SystemExit(f"tfrec {args[0]} failed with exit code {code}")


def write_day_one(work: Path, days_before_end: int) -> tuple[Path, str]:
    """Day 1's interaction file (every row before the cut date) and the cut date."""
    frame = pd.read_csv(DATA, dtype=str, keep_default_na=False)
    last = pd.to_datetime(frame[TIMESTAMP]).max()
    cut = (last - pd.Timedelta(days=days_before_end)).normalize().strftime("%Y-%m-%d %H:%M:%S")
    path = work / "day1" / "online_retail.csv.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[frame[TIMESTAMP] < cut].to_csv(path, index=False)
    return path, cut


def timed_train(work: Path, name: str, data: Path, *extra: str) -> tuple[Path, float]:
    model = work / "day2" / name
    started = time.perf_counter()
    must("train", *config_args(), "--data", str(data), "--output", str(model), *extra)
    return model, time.perf_counter() - started


def test_metrics(config, data: Path, model: Path) -> dict:
    """``tfrec evaluate``'s test metrics of the model, per protocol."""
    must("evaluate", *config_args(), "--data", str(data), "--model", str(model))
    metrics = json.loads((model / "metrics.json").read_text())["test"]
    return {protocol: metrics[protocol]["model"] for protocol in ("all", "explore")}


def flat_test(metrics: dict) -> dict:
    return {f"test.{protocol}.{name}": value for protocol, values in metrics.items()
            for name, value in values.items() if name != "users"}


def versions(export: Path, model: str = "tfrec_retrieve") -> list[int]:
    return sorted(int(v.name) for v in (export / model).iterdir() if v.name.isdigit())


def export_with_gate(work: Path, model: Path, export: Path, data: Path, name: str) -> tuple[int, dict]:
    index = work / "day2" / f"index_{name}"
    must("index", *config_args(), "--model", str(model), "--output", str(index))
    code = tfrec("export", *config_args(), "--model", str(model), "--index", str(index),
                 "--output", str(export), "--data", str(data))
    return code, json.loads((export / "promotion.json").read_text())


def most_recommended(export: Path, histories: list[list[str]], count: int) -> list[str]:
    """The ``count`` products the served exact model puts most often in its top 10 for ``histories``."""
    from serving.saved_model import load_serving_signature

    retrieve = load_serving_signature(export, "tfrec_retrieve")
    seen = collections.Counter()
    for start in range(0, len(histories), REST_ROWS):
        out = retrieve(history=padded(histories[start:start + REST_ROWS]), k=np.int32(10))
        seen.update(i.decode() for i in out["item_ids"].numpy().ravel())
    return [item for item, _ in seen.most_common(count)]


def padded(rows: list[list[str]]):
    import tensorflow as tf

    width = max(len(r) for r in rows)
    return tf.constant([[""] * (width - len(r)) + r for r in rows])


def removed_returned(export: Path, removed: set[str], histories: list[list[str]], items: dict[str, str]) -> dict:
    """How many removed ids each model that returns ids still returns over a sample of requests."""
    import tensorflow as tf

    from serving.saved_model import load_serving_signature

    ids = [i for i in items if i not in removed][:SAMPLE_REQUESTS // 2] + sorted(removed)
    requests = {
        "tfrec_retrieve": [{"history": padded(histories[s:s + REST_ROWS])}
                           for s in range(0, len(histories), REST_ROWS)],
        "tfrec_retrieve_scann": [{"history": padded(histories[s:s + REST_ROWS])}
                                 for s in range(0, len(histories), REST_ROWS)],
        "tfrec_similar": [{"item_id": tf.constant(ids[s:s + REST_ROWS])} for s in range(0, len(ids), REST_ROWS)],
        "tfrec_search": [{"query": tf.constant([items[i] for i in ids[s:s + REST_ROWS]])}
                         for s in range(0, len(ids), REST_ROWS)],
    }
    counts = {}
    for name, calls in requests.items():
        model = load_serving_signature(export, name)
        returned = 0
        for inputs in calls:
            out = model(**inputs, k=np.int32(REQUEST_K))["item_ids"].numpy().ravel()
            returned += sum(i.decode() in removed for i in out)
        counts[name] = {"requests": sum(len(next(iter(c.values()))) for c in calls), "removed_returned": returned}
    return counts


def catalogue_change(export: Path, histories: list[list[str]]) -> dict:
    from serving.items import read_items

    removed = most_recommended(export, histories, REMOVED)
    started = time.perf_counter()
    code = tfrec("index", "--export", str(export), "--remove", ",".join(removed))
    seconds = time.perf_counter() - started
    change = json.loads((export / "removed_items.json").read_text())["changes"][-1]
    per_model = removed_returned(export, set(removed), histories, read_items(export))
    verified = tfrec("verify", "--export", str(export)) == 0
    return {
        "removed": len(removed), "exit_code": code, "version": change["version"],
        "removed_returned": sum(m["removed_returned"] for m in per_model.values()),
        "seconds_to_publish": round(seconds, 2), "stage_seconds": change.get("stage_seconds"),
        "check_seconds": change.get("check_seconds"),
        "graph_mode_verified": code == 0 and verified, "per_model": per_model,
    }


def served_agreement(export: Path, records: dict[str, dict], histories: dict[str, list[str]]) -> dict:
    """The share of customers whose batch top-k equals the served model's, asked through REST."""
    from serving.client import RestClient
    from serving.server import ModelServer

    users = sorted(histories)
    same = 0
    with ModelServer(export, port=0, grpc_port=0) as server, RestClient(server.rest_url) as client:
        for start in range(0, len(users), REST_ROWS):
            rows = users[start:start + REST_ROWS]
            out = client.predict("tfrec_retrieve", {"history": padded(
                [histories[u] for u in rows]).numpy().astype(str).tolist()})
            same += sum(list(out["item_ids"][i]) == records[u]["item_ids"] for i, u in enumerate(rows))
    return {"sampled_users": len(users), "agreement_with_served": same / len(users)}


def batch(work: Path, export: Path, data: Path, max_history: int) -> dict:
    from tfrec.data import load_catalogue, load_eval_split

    output = work / "batch"
    must("batch", *config_args(), "--export", str(export), "--data", str(data), "--output", str(output))
    summary = json.loads((output / "batch_summary.json").read_text())
    records = {}
    for path in sorted(output.glob("recommendations-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            records[record["user_id"]] = record
    split, ids = load_eval_split(data, "test"), load_catalogue(data).ids
    histories = {u: [ids[i] for i in h[-max_history:]] for u, h in zip(split.user_ids, split.histories, strict=True)}
    return {"users": summary["users"], "users_per_second": summary["users_per_second"],
            "users_per_second_overall": summary["users_per_second_overall"],
            "recommend_seconds": summary["recommend_seconds"], "job_seconds": summary["seconds"],
            "model_seconds": summary["model_seconds"], "records": len(records),
            **served_agreement(export, records, histories)}


def day_two(work: Path, config, day1_model: Path, data: Path) -> dict:
    """Cold and warm training of day 2, each timed and evaluated."""
    cold, cold_seconds = timed_train(work, "cold", data)
    cold_metrics = test_metrics(config, data, cold)
    warm, warm_seconds = timed_train(work, "warm", data, "--warm-start", str(day1_model))
    warm_metrics = test_metrics(config, data, warm)
    summaries = {name: json.loads((work / "day2" / name / "train_summary.json").read_text())
                 for name in ("cold", "warm")}
    return {
        "cold": {"train_seconds": round(cold_seconds, 1), "epochs_run": summaries["cold"]["epochs_run"],
                 **flat_test(cold_metrics)},
        "warm": {"train_seconds": round(warm_seconds, 1), "epochs_run": summaries["warm"]["epochs_run"],
                 "warm_start": summaries["warm"]["warm_start"], **flat_test(warm_metrics)},
        "models": {"cold": cold, "warm": warm},
    }


def gate(work: Path, export: Path, data: Path, warm: Path) -> dict:
    worse, _ = timed_train(work, "worse", data, "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1")
    before = versions(export)
    refused_code, refused = export_with_gate(work, worse, export, data, "worse")
    refused_ok = refused_code == 3 and not refused["published"] and versions(export) == before
    published_code, published = export_with_gate(work, warm, export, data, "warm")
    published_ok = published_code == 0 and published["published"] and len(versions(export)) == len(before) + 1
    return {"refused_worse_model": refused_ok, "published_good_model": published_ok,
            "worse": {"exit_code": refused_code, "decision": refused["decision"], "reason": refused["reason"]},
            "good": {"exit_code": published_code, "decision": published["decision"], "reason": published["reason"]}}


def table(report: dict) -> str:
    cold, warm = report["cold"], report["warm"]
    rows = [
        ("train seconds, cold / warm", f"{cold['train_seconds']:.0f} / {warm['train_seconds']:.0f} "
                                       f"({warm['train_seconds'] / cold['train_seconds']:.0%})"),
        ("test explore ndcg@10, cold / warm", f"{cold[NDCG]:.4f} / {warm[NDCG]:.4f} ({warm[NDCG] / cold[NDCG]:.3f})"),
        ("gate refused the worse model", report["gate"]["refused_worse_model"]),
        ("gate published the warm model", report["gate"]["published_good_model"]),
        ("removed / returned", f"{report['catalogue_change']['removed']} / "
                               f"{report['catalogue_change']['removed_returned']}"),
        ("seconds to publish, graph mode verified", f"{report['catalogue_change']['seconds_to_publish']:.1f}, "
                                                    f"{report['catalogue_change']['graph_mode_verified']}"),
        ("batch customers, customers/s", f"{report['batch']['users']:,}, {report['batch']['users_per_second']:,.0f} "
                                         f"(whole job {report['batch']['users_per_second_overall']:,.0f})"),
        ("batch agreement with served", f"{report['batch']['agreement_with_served']:.4f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--days-before-end", type=int, default=30, help="day 1 ends this many days before the data")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every command (e.g. a smaller model for a quick look)")
    args = parser.parse_args()
    SETTINGS.extend(args.overrides)
    output = args.output.resolve()
    os.chdir(ROOT)  # the bundled config's paths are relative to the repository
    from tfrec.config import load_config

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tfrec-refresh-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        started = time.perf_counter()
        day1_file, cut = write_day_one(work, args.days_before_end)
        day1, day2, export = work / "day1", work / "day2", work / "export"
        day1_set = ["--set", f"data.interactions.paths={json.dumps([str(day1_file)])}"]
        must("preprocess", *config_args(), *day1_set, "--output", str(day1 / "data"))
        must("train", *config_args(), *day1_set, "--data", str(day1 / "data"), "--output", str(day1 / "model"))
        must("index", *config_args(), "--model", str(day1 / "model"), "--output", str(day1 / "index"))
        must("export", *config_args(), "--model", str(day1 / "model"), "--index", str(day1 / "index"),
             "--output", str(export))
        must("preprocess", *config_args(), "--output", str(day2 / "data"))
        config = load_config(CONFIG, SETTINGS)
        trained = day_two(work, config, day1 / "model", day2 / "data")
        gated = gate(work, export, day2 / "data", trained["models"]["warm"])
        from tfrec.data import load_catalogue, load_eval_split

        split, ids = load_eval_split(day2 / "data", "test"), load_catalogue(day2 / "data").ids
        sample = np.random.default_rng(0).choice(len(split), min(SAMPLE_REQUESTS, len(split)), replace=False)
        histories = [[ids[i] for i in split.histories[row][-config.serve.max_history:]] for row in sorted(sample)]
        changed = catalogue_change(export, histories)
        batched = batch(work, export, day2 / "data", config.serve.max_history)
        report = {
            "benchmark": "refresh", "config": CONFIG, "overrides": SETTINGS, "cut_date": cut,
            "days": {"day1": f"every interaction before {cut}", "day2": "every interaction"},
            "cold": trained["cold"], "warm": trained["warm"],
            "warm_over_cold": {
                "train_seconds": round(trained["warm"]["train_seconds"] / trained["cold"]["train_seconds"], 3),
                "test.explore.ndcg@10": round(trained["warm"]["test.explore.ndcg@10"]
                                              / trained["cold"]["test.explore.ndcg@10"], 4)},
            "gate": gated, "catalogue_change": changed, "batch": batched,
            "seconds": round(time.perf_counter() - started, 1),
            "date": datetime.date.today().isoformat(),
            "machine": machine(load_before, ("tensorflow", "apache-beam")),
        }
    write_json(output, report)
    print(table(report))


if __name__ == "__main__":
    main()
