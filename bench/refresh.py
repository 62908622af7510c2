"""Two days of a shop, run as a scheduler would: warm start, promotion gate, catalogue change
and the batch job, each ``tfrec`` command in its own process, judged by its exit code.

Day 1 is every interaction before a cut date, the shop's ``days_before_end`` days before its
last one; day 2 is all of them. For each shop (``--shop``, default: all of ``SHOPS``):

1. day 1: ``preprocess``, ``train``, ``index``, ``export`` (version 1 of the served folder),
   which a ``tfrec serve`` polls from then on;
2. day 2: ``preprocess``; then ``--repeats`` rounds of ``train`` from scratch (cold) and
   ``train --warm-start`` day 1's model, once per warm variant (``WARM_VARIANTS``), each a
   process of its own, timed, in an order that rotates every round (so no case always pays
   the first process's warm-up). Training is deterministic: the rounds differ in time only;
3. the warm variant is chosen on the **validation** split (explore NDCG@10 of the served
   score); the test split is read once, for cold and the chosen variant: their explore NDCG@10
   and the paired-bootstrap interval of warm minus cold over customers;
4. the gate: a deliberately worse model (one training step) exported with ``--data`` must be
   refused (exit code 3); the warm model must be published;
5. a catalogue change seen as users see it: the products the served model recommends most are
   asked for through the running server (the control: the version in service returns them),
   then ``index --export --remove`` removes them; once the server's poll serves the new version
   of every model, the same requests go to every model that returns ids, counting removed ids
   and empty slots; ``verify`` checks the version in graph mode;
6. ``batch`` over day 2's test customers, compared with the served lists.

Writes ``--output`` (JSON, one entry per shop under ``shops``; a run of some shops keeps the other
shops' entries of an existing file) and prints a table per shop. ``--work DIR`` keeps the runs'
folders, and a second run with the same ``DIR`` reuses the steps that finished.

    python bench/refresh.py --output bench/results/refresh.json [--shop online_retail] [--repeats 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from benchlib import ROOT, machine, write_json


@dataclasses.dataclass(frozen=True)
class Shop:
    config: str
    interactions: str
    timestamp: str
    unit: str | None
    """``pandas.to_datetime``'s unit for numeric timestamps; ``None`` for date strings."""
    days_before_end: int


SHOPS = {
    "online_retail": Shop("configs/online_retail.yaml", "data/online_retail/online_retail.csv.gz",
                          "InvoiceDate", None, 30),
    "amazon_toys": Shop("configs/amazon_toys.yaml", "data/amazon_toys/interactions.csv.gz", "Timestamp", "s", 28),
}
WARM_VARIANTS = {
    "new windows, 1 epoch": ("--set", "train.warm_start_windows=new", "--set", "train.warm_start_epochs=1"),
    "new windows, 2 epochs": ("--set", "train.warm_start_windows=new", "--set", "train.warm_start_epochs=2"),
    "all windows, 1 epoch": ("--set", "train.warm_start_windows=all", "--set", "train.warm_start_epochs=1"),
}
"""The warm runs compared on validation (``train.warm_start_windows`` and ``train.warm_start_epochs``)."""
DEFAULT_VARIANT = "new windows, 2 epochs"
"""The code's defaults: the variant every shop's validation chose."""
REMOVED = 20
"""Products the catalogue change removes: those the served model recommends most."""
SAMPLE_REQUESTS = 200
REQUEST_K = 50
REST_ROWS = 32
ID_MODELS = ("tfrec_retrieve", "tfrec_retrieve_scann", "tfrec_similar", "tfrec_search")
POLL_SECONDS = 1.0
METRIC = "ndcg@10"


def tfrec(*args: str) -> int:
    """One ``tfrec`` command in a process of its own, as a scheduler runs it; its exit code."""
    print(f"\n$ tfrec {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "tfrec.app.cli", *args], cwd=ROOT, check=False).returncode


def must(*args: str) -> None:
    code = tfrec(*args)
    if code != 0:
        raise SystemExit(f"tfrec {args[0]} failed with exit code {code}")


DONE = {"preprocess": "stats.json", "train": "train_summary.json", "index": "index_report.json"}
"""The file each command writes last: a folder holding it is a finished step."""


def once(output: Path, *args: str) -> None:
    """``must(*args)`` unless an earlier, interrupted run of the bench finished it (``DONE``)."""
    if not (output / DONE[args[0]]).exists():
        must(*args)


def timed_train(output: Path, *args: str) -> float:
    """``tfrec train ... --output output``'s seconds; an earlier run's, kept beside it, when it finished."""
    record = output.with_name(output.name + ".seconds")
    if record.exists() and (output / DONE["train"]).exists():
        return float(record.read_text())
    started = time.perf_counter()
    must("train", *args, "--output", str(output))
    seconds = time.perf_counter() - started
    record.write_text(f"{seconds:.1f}")
    return seconds


def write_day_one(shop: Shop, work: Path) -> tuple[Path, str]:
    """Day 1's interaction file (every row before the cut date) and the cut date."""
    frame = pd.read_csv(ROOT / shop.interactions, dtype=str, keep_default_na=False)
    when = pd.to_datetime(frame[shop.timestamp].astype(int) if shop.unit else frame[shop.timestamp], unit=shop.unit)
    cut = (when.max() - pd.Timedelta(days=shop.days_before_end)).normalize()
    path = work / "day1" / Path(shop.interactions).name
    path.parent.mkdir(parents=True, exist_ok=True)
    frame[when < cut].to_csv(path, index=False)
    return path, cut.strftime("%Y-%m-%d")


def train_rounds(config: list[str], data: Path, day1_model: Path, work: Path, repeats: int) -> dict:
    """Every case (cold and each warm variant) ``repeats`` times, in an order rotating per round;
    returns ``{case: {"seconds": [...], "model": the first round's folder}}``."""
    cases = {"cold": (), **{f"warm, {name}": ("--warm-start", str(day1_model), *extra)
                            for name, extra in WARM_VARIANTS.items()}}
    names = list(cases)
    runs = {name: {"seconds": [], "model": None} for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            folder = work / "day2" / f"{name.replace(', ', '_').replace(' ', '_')}_{r}"
            runs[name]["seconds"].append(round(timed_train(folder, *config, "--data", str(data), *cases[name]), 1))
            runs[name]["model"] = runs[name]["model"] or folder
    return runs


def measured(data: Path, models: dict[str, Path], split: str, keep_per_user: bool = False):
    """Every model's served score on ``split`` (its ``evaluate_split`` result)."""
    from tfrec.data import load_catalogue, load_eval_split
    from tfrec.evaluation.ranking import evaluate_split, model_scorer
    from tfrec.models import load_model

    catalogue, rows = load_catalogue(data), load_eval_split(data, split)
    scorers = {}
    for name, folder in models.items():
        model = load_model(folder)
        scorers[name] = model_scorer(model, model.item_vectors())
    return evaluate_split(scorers, rows, len(catalogue), catalogue.cold_start, keep_per_user=keep_per_user)


def warm_against_cold(data: Path, runs: dict) -> dict:
    """The warm variant chosen on validation, and warm against cold on test (read once)."""
    from tfrec.evaluation.bootstrap import PairedBootstrap

    warm = {name: runs[f"warm, {name}"]["model"] for name in WARM_VARIANTS}
    valid = measured(data, warm, "valid").metrics["explore"]
    chosen = max(WARM_VARIANTS, key=lambda name: valid[name][METRIC])
    test = measured(data, {"cold": runs["cold"]["model"], "warm": warm[chosen]}, "test", keep_per_user=True)
    explore = test.metrics["explore"]
    (users, cold), (_, warm_values) = (test.per_user["explore"][name] for name in ("cold", "warm"))
    boot = PairedBootstrap(int(test.metrics["users"]), seed=0)
    samples = {name: boot.means(users, values[METRIC][:, None])[:, 0]
               for name, values in (("cold", cold), ("warm", warm_values))}
    difference = boot.difference(explore["warm"][METRIC] - explore["cold"][METRIC], samples["warm"], samples["cold"])
    return {"chosen_variant": chosen, "chosen_on": "valid", "default_variant": DEFAULT_VARIANT,
            "valid_explore_ndcg10": {name: round(valid[name][METRIC], 4) for name in WARM_VARIANTS},
            "cold": round(explore["cold"][METRIC], 4), "warm": round(explore["warm"][METRIC], 4),
            "interval": [round(x, 4) for x in difference["ci"]]}


def versions(export: Path, model: str = "tfrec_retrieve") -> list[int]:
    return sorted(int(v.name) for v in (export / model).iterdir() if v.name.isdigit())


def export_with_gate(config: list[str], work: Path, model: Path, export: Path, data: Path) -> tuple[int, dict]:
    index = work / "day2" / f"index_{model.name}"
    must("index", *config, "--model", str(model), "--output", str(index))
    code = tfrec("export", *config, "--model", str(model), "--index", str(index),
                 "--output", str(export), "--data", str(data))
    return code, json.loads((export / "promotion.json").read_text())


def gate(config: list[str], work: Path, export: Path, data: Path, warm: Path) -> dict:
    worse = work / "day2" / "worse"
    once(worse, "train", *config, "--data", str(data), "--output", str(worse),
         "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1")
    before = versions(export)
    refused_code, refused = export_with_gate(config, work, worse, export, data)
    refused_ok = refused_code == 3 and not refused["published"] and versions(export) == before
    published_code, published = export_with_gate(config, work, warm, export, data)
    published_ok = published_code == 0 and published["published"] and len(versions(export)) == len(before) + 1
    return {"refused_worse_model": refused_ok, "published_good_model": published_ok,
            "worse": {"exit_code": refused_code, "decision": refused["decision"], "reason": refused["reason"]},
            "good": {"exit_code": published_code, "decision": published["decision"], "reason": published["reason"]}}


def wait_for_version(client, version: int, timeout: float = 300.0) -> None:
    """Returns once the server serves ``version`` of every model that returns ids."""
    deadline = time.monotonic() + timeout
    while any(int(client.status(m)[0]["version"]) != version for m in ID_MODELS):
        if time.monotonic() > deadline:
            raise SystemExit(f"the server did not serve version {version} within {timeout:g}s")
        time.sleep(0.1)


def requests_by_model(histories: list[list[str]], items: dict[str, str], removed: list[str]) -> dict:
    """The requests every model that returns ids is asked: histories, or products (removed ones too)."""
    ids = [i for i in items if i not in set(removed)][:SAMPLE_REQUESTS // 2] + sorted(removed)
    chunks = [histories[s:s + REST_ROWS] for s in range(0, len(histories), REST_ROWS)]
    products = [ids[s:s + REST_ROWS] for s in range(0, len(ids), REST_ROWS)]
    history_requests = [{"history": padded(rows)} for rows in chunks]
    return {"tfrec_retrieve": history_requests, "tfrec_retrieve_scann": history_requests,
            "tfrec_similar": [{"item_id": rows} for rows in products],
            "tfrec_search": [{"query": [items[i] for i in rows]} for rows in products]}


def padded(rows: list[list[str]]) -> list[list[str]]:
    width = max(len(r) for r in rows)
    return [[""] * (width - len(r)) + r for r in rows]


def answers(client, requests: dict) -> dict[str, list[str]]:
    """Every id each model answers to its requests, empty slots included."""
    return {name: [str(i) for inputs in calls
                   for i in np.asarray(client.predict(name, {**inputs, "k": REQUEST_K})["item_ids"]).ravel()]
            for name, calls in requests.items()}


def most_recommended(client, histories: list[list[str]]) -> list[str]:
    """The ``REMOVED`` products the served exact model puts most often in its top 10."""
    seen = collections.Counter()
    for start in range(0, len(histories), REST_ROWS):
        out = client.predict("tfrec_retrieve", {"history": padded(histories[start:start + REST_ROWS]), "k": 10})
        seen.update(str(i) for i in np.asarray(out["item_ids"]).ravel() if i)
    return [item for item, _ in seen.most_common(REMOVED)]


def catalogue_change(export: Path, server, histories: list[list[str]]) -> dict:
    """Removes the most recommended products and asks the server, before (the control) and after."""
    from serving.client import RestClient
    from serving.items import read_items

    with RestClient(server.rest_url) as client:
        wait_for_version(client, max(versions(export)))
        removed = most_recommended(client, histories)
        requests = requests_by_model(histories, read_items(export), removed)
        control = answers(client, requests)
        started = time.perf_counter()
        code = tfrec("index", "--export", str(export), "--remove", ",".join(removed))
        version = json.loads((export / "removed_items.json").read_text())["changes"][-1]["version"]
        wait_for_version(client, version)
        seconds = time.perf_counter() - started
        after = answers(client, requests)
    gone = set(removed)
    per_model = {name: {"answers": len(after[name]), "removed_returned": sum(i in gone for i in after[name]),
                        "empty_slots": sum(not i for i in after[name]),
                        "control_returned": sum(i in gone for i in control[name])} for name in ID_MODELS}
    verified = tfrec("verify", "--export", str(export)) == 0
    return {"removed": len(removed), "exit_code": code, "version": version, "through_server": True,
            **{key: sum(m[key] for m in per_model.values())
               for key in ("removed_returned", "empty_slots", "control_returned")},
            "seconds_to_publish": round(seconds, 2), "graph_mode_verified": code == 0 and verified,
            "per_model": per_model}


def batch(config: list[str], work: Path, export: Path, data: Path, server, max_history: int) -> dict:
    """``tfrec batch`` over the test customers, and the share whose list the server gives too."""
    from serving.client import RestClient
    from tfrec.data import load_catalogue, load_eval_split

    output = work / "batch"
    shutil.rmtree(output, ignore_errors=True)
    must("batch", *config, "--export", str(export), "--data", str(data), "--output", str(output))
    summary = json.loads((output / "batch_summary.json").read_text())
    records = {}
    for path in sorted(output.glob("recommendations-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            records[record["user_id"]] = record["item_ids"]
    split, ids = load_eval_split(data, "test"), load_catalogue(data).ids
    users = sorted(split.user_ids.astype(str).tolist())[:2000]
    histories = dict(zip(split.user_ids.astype(str).tolist(), split.histories, strict=True))
    same = 0
    with RestClient(server.rest_url) as client:
        for start in range(0, len(users), REST_ROWS):
            rows = users[start:start + REST_ROWS]
            out = client.predict("tfrec_retrieve", {"history": padded(
                [[ids[i] for i in histories[u][-max_history:]] for u in rows])})
            same += sum([str(i) for i in out["item_ids"][n]] == records.get(u) for n, u in enumerate(rows))
    return {"users": summary["users"], "users_per_second": summary["users_per_second"],
            "job_seconds": summary["seconds"], "sampled_users": len(users),
            "agreement_with_served": same / max(len(users), 1)}


def sample_histories(data: Path, max_history: int) -> list[list[str]]:
    from tfrec.data import load_catalogue, load_eval_split

    split, ids = load_eval_split(data, "test"), load_catalogue(data).ids
    sample = np.random.default_rng(0).choice(len(split), min(SAMPLE_REQUESTS, len(split)), replace=False)
    return [[ids[i] for i in split.histories[row][-max_history:]] for row in sorted(sample)]


def run_shop(name: str, shop: Shop, work: Path, repeats: int, overrides: list[str]) -> dict:
    from serving.server.process import ServerProcess
    from tfrec.config import load_config

    config = ["--config", shop.config, *(arg for value in overrides for arg in ("--set", value))]
    day1_file, cut = write_day_one(shop, work)
    day1, day2, export = work / "day1", work / "day2", work / "export"
    day1_set = ["--set", f"data.interactions.paths={json.dumps([str(day1_file)])}"]
    once(day1 / "data", "preprocess", *config, *day1_set, "--output", str(day1 / "data"))
    once(day1 / "model", "train", *config, *day1_set, "--data", str(day1 / "data"), "--output", str(day1 / "model"))
    once(day1 / "index", "index", *config, "--model", str(day1 / "model"), "--output", str(day1 / "index"))
    shutil.rmtree(export, ignore_errors=True)  # the served folder starts at day 1's version every run
    must("export", *config, "--model", str(day1 / "model"), "--index", str(day1 / "index"), "--output", str(export))
    once(day2 / "data", "preprocess", *config, "--output", str(day2 / "data"))
    runs = train_rounds(config, day2 / "data", day1 / "model", work, repeats)
    compared = warm_against_cold(day2 / "data", runs)
    max_history = load_config(ROOT / shop.config, overrides).serve.max_history
    with ServerProcess(export, grpc=False, poll_seconds=POLL_SECONDS) as server:
        server.wait_until_serving(*ID_MODELS)
        gated = gate(config, work, export, day2 / "data", runs[f"warm, {compared['chosen_variant']}"]["model"])
        changed = catalogue_change(export, server, sample_histories(day2 / "data", max_history))
        batched = batch(config, work, export, day2 / "data", server, max_history)
    seconds = {case: run["seconds"] for case, run in runs.items()}
    warm_case = f"warm, {compared['chosen_variant']}"
    return {
        "config": shop.config, "overrides": overrides, "cut_date": cut, "repeats": repeats,
        "days": {"day1": f"every interaction before {cut}", "day2": "every interaction"},
        "cold": {"train_seconds": float(np.median(seconds["cold"])), "test.explore.ndcg@10": compared["cold"]},
        "warm": {"train_seconds": float(np.median(seconds[warm_case])), "test.explore.ndcg@10": compared["warm"],
                 "variant": compared["chosen_variant"]},
        "train_seconds_per_round": seconds,
        "warm_minus_cold_ndcg10_interval": compared["interval"],
        "chosen_on": compared["chosen_on"], "warm_variants_valid_explore_ndcg10": compared["valid_explore_ndcg10"],
        "default_variant": compared["default_variant"],
        "gate": gated, "catalogue_change": changed, "batch": batched,
    }


def table(name: str, report: dict) -> str:
    cold, warm, change = report["cold"], report["warm"], report["catalogue_change"]
    low, high = report["warm_minus_cold_ndcg10_interval"]
    rows = [
        ("train seconds, cold / warm (median)", f"{cold['train_seconds']:.0f} / {warm['train_seconds']:.0f} "
                                                f"({warm['train_seconds'] / cold['train_seconds']:.0%})"),
        ("warm variant, chosen on validation", f"{warm['variant']} {report['warm_variants_valid_explore_ndcg10']}"),
        ("test explore ndcg@10, cold / warm", f"{cold[f'test.explore.{METRIC}']:.4f} / "
                                              f"{warm[f'test.explore.{METRIC}']:.4f} [{low:+.4f}, {high:+.4f}]"),
        ("gate refused the worse model / published warm", f"{report['gate']['refused_worse_model']} / "
                                                          f"{report['gate']['published_good_model']}"),
        ("removed / returned / empty slots / control", f"{change['removed']} / {change['removed_returned']} / "
                                                       f"{change['empty_slots']} / {change['control_returned']}"),
        ("seconds to publish (served), graph mode verified", f"{change['seconds_to_publish']:.1f}, "
                                                             f"{change['graph_mode_verified']}"),
        ("batch customers, agreement with served", f"{report['batch']['users']:,}, "
                                                   f"{report['batch']['agreement_with_served']:.4f}"),
    ]
    width = max(len(label) for label, _ in rows)
    return f"== {name}\n" + "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--shop", action="append", choices=sorted(SHOPS), help="a shop to run (default: every one)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of cold and warm training (timing medians)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every command (e.g. a smaller model for a quick look)")
    args = parser.parse_args()
    output = args.output.resolve()
    load_before = os.getloadavg()
    started = time.perf_counter()
    shops = {}
    with tempfile.TemporaryDirectory(prefix="tfrec-refresh-") as scratch:
        for name in args.shop or SHOPS:
            work = (args.work or Path(scratch)).resolve() / name
            shops[name] = run_shop(name, SHOPS[name], work, args.repeats, args.overrides)
            print(table(name, shops[name]), flush=True)
    runs = {name: {"seconds": round(time.perf_counter() - started, 1), "date": datetime.date.today().isoformat(),
                   "machine": machine(load_before, ("tensorflow", "apache-beam"))} for name in shops}
    if output.exists():  # ``--shop`` replaces its own entries and keeps the other shops'
        earlier = json.loads(output.read_text())
        shops, runs = {**earlier.get("shops", {}), **shops}, {**earlier.get("runs", {}), **runs}
    write_json(output, {"benchmark": "refresh", "shops": shops, "runs": runs})
    for name, report in shops.items():
        print(table(name, report))


if __name__ == "__main__":
    main()
