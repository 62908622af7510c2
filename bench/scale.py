"""The cost curve: every stage's wall time and peak memory at 10^5, 10^6 and 10^7 interactions.

For each size a synthetic shop (``synthetic_shop.py``: power-law popularity, baskets,
item-to-item transitions, titles from a vocabulary) of N interactions and N/10 items is
written, with a config holding only what that shop needs (written next to the data).
Then each stage runs as its own child process through the CLI, as a user runs it:
``preprocess`` (the Beam job, DirectRunner), ``train``, ``evaluate``, ``index`` and
``export``. Per stage and size it records the wall time, the peak resident memory, and
the growth of both per 10x of data (the ratio to the size before; 10 is linear).

Peak memory, two ways:

- ``peak_rss``: ``ru_maxrss`` from ``os.wait4`` on the stage's process. Linux folds into
  it the largest peak of the descendants the stage waited for, so it is the peak of the
  largest single process of the stage (Beam's worker processes, TensorFlow's threads
  included), not a sum over processes.
- ``peak_tree_rss``: the sum of the resident memory of the stage's whole process tree,
  sampled every ``SAMPLE_SECONDS`` from /proc: what the machine must hold at once when
  a stage has several processes (a short peak between two samples can be missed).

What the bench bounds, and why (printed with the table and written in the JSON):

- **Text encoder: ``scratch``, at every size.** The default frozen MiniLM encodes each
  title once; its titles/s on this machine is measured first (``text_encoder_probe``):
  at about 250 titles/s (2 cores, sequence length 8) the 10^6 titles of the largest shop
  would take over an hour, beyond this bench's budget. The scratch encoder trains with
  the towers and encodes the catalogue in minutes; using it at every size keeps the
  growth factors comparable. Without MiniLM, the ``text_zero_shot`` baseline (which
  would encode the catalogue with it) is left out, and with it ``ils@10``.
- **Training: ``EPOCHS`` epochs** at every size, full passes up to 10^6 interactions;
  at 10^7 each epoch stops after ``--max-steps`` steps (200 in the recorded run), and
  ``train.validation_users`` users are measured per epoch. examples/s is reported at every
  size.
- **Evaluation: ``eval.max_users``** users per split (a fixed random sample, with
  bootstrap intervals): ``EVAL_USERS`` up to 10^6, ``--large-eval-users`` at 10^7 (500 in
  the recorded run), so evaluation grows with the catalogue only; compare its time per
  user measured.
- **Index**: the ScaNN tuner as configured, with ``index.num_leaves`` pinned at 10^7 when
  ``--index-leaves`` is given (1000, about sqrt(10^6), in the recorded run: one tree is
  built instead of three).

Sizes can be run apart and gathered in one report (``--merge``); ``--markdown`` prints
the report as the table of docs/results.md (Cost at scale).

    python bench/scale.py [--sizes 1e5 1e6 1e7] [--out bench/results/scale.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from benchlib import ROOT, machine, write_json

STAGES = ("generate", "preprocess", "train", "evaluate", "index", "export")
EPOCHS = 2
MAX_STEPS = 400
VALIDATION_USERS = 1000
EVAL_USERS = 2000
TITLE_TOKENS = 12
SAMPLE_SECONDS = 0.5
ITEMS_PER_INTERACTION = 0.1


def shop_config(data: Path, name: str, extra: dict) -> dict:
    """The config of a synthetic shop: its data section, plus what the bench bounds."""
    config = {
        "name": name,
        "data": {
            "interactions": {
                "paths": [str(data / "interactions-*.csv")],
                "columns": {"user_id": "user_id", "item_id": "item_id", "timestamp": "timestamp",
                            "group_id": "basket_id", "quantity": "quantity"},
                "timestamp_format": "unix",
            },
            "catalogue": {"paths": [str(data / "catalogue.csv")], "item_id": "item_id"},
            "items": {"text_fields": ["title"], "categorical_fields": ["department"]},
        },
        "model": {"text_encoder": {"kind": "scratch", "sequence_length": TITLE_TOKENS}},
        "train": {"epochs": EPOCHS, "validation_users": VALIDATION_USERS},
        "eval": {"max_users": EVAL_USERS, "baselines": ["most_popular", "repeat", "item_cooccurrence", "als"]},
    }
    for key, value in extra.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def _tree_rss_kib(root: int) -> int:
    """Resident memory (KiB) of ``root`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, ValueError, IndexError):
            continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def run_stage(command: list[str], log_path: Path) -> dict:
    """Runs one stage as a child process; its wall time, peak RSS and exit status."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    with open(log_path, "w") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        peak_tree, done = [0], threading.Event()

        def sample():
            while not done.wait(SAMPLE_SECONDS):
                peak_tree[0] = max(peak_tree[0], _tree_rss_kib(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "peak_tree_rss_mb": round(peak_tree[0] / 1024, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "returncode": child.returncode, "log": str(log_path)}


def text_encoder_probe(titles: list[str]) -> dict:
    """Titles/s of the default pretrained encoder (MiniLM), at two sequence lengths, in a child."""
    code = (
        "import json, sys, time\n"
        "from tfrec.config import TextEncoderConfig\n"
        "from tfrec.models.text import pretrained_pipeline\n"
        "titles = json.loads(sys.stdin.read())\n"
        "out = {}\n"
        "for length in (8, 32):\n"
        "    p = pretrained_pipeline(TextEncoderConfig(sequence_length=length))\n"
        "    p.encode(titles[:256], verbose=False)\n"
        "    t = time.perf_counter(); p.encode(titles, verbose=False)\n"
        "    out[length] = len(titles) / (time.perf_counter() - t)\n"
        "print('PROBE', json.dumps(out))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(titles), capture_output=True,
                          text=True, env=env, cwd=ROOT)
    line = next((x for x in done.stdout.splitlines() if x.startswith("PROBE ")), None)
    if line is None:
        return {"error": done.stderr[-2000:]}
    rates = {int(k): v for k, v in json.loads(line[6:]).items()}
    return {"titles": len(titles), "titles_per_second": {f"sequence_length_{k}": round(v, 1) for k, v in rates.items()},
            "minutes_for_1e6_titles": {f"sequence_length_{k}": round(1e6 / v / 60, 1) for k, v in rates.items()}}


def run_size(size: int, folder: Path, beam_args: list[str], extra: dict, after_stage=None,
             stages: tuple[str, ...] = STAGES, earlier: dict | None = None) -> dict:
    """The ``stages`` on a shop of ``size`` interactions (the later ones read what the earlier
    ones left in ``folder``); ``after_stage(result)`` is called after each. With ``earlier``
    (this size's result from a run before) the other stages' figures are kept from it."""
    items = int(size * ITEMS_PER_INTERACTION)
    data, prepared, model, index, export = (folder / n for n in ("shop", "data", "model", "index", "export"))
    config_path = folder / "config.yaml"
    cli = [sys.executable, "-m", "tfrec.app.cli"]
    commands = {
        "generate": [sys.executable, str(ROOT / "bench" / "synthetic_shop.py"), str(data),
                     "--interactions", str(size), "--items", str(items)],
        "preprocess": [*cli, "preprocess", "--config", str(config_path), "--output", str(prepared), *beam_args],
        "train": [*cli, "train", "--config", str(config_path), "--data", str(prepared), "--output", str(model),
                  "--fresh"],
        "evaluate": [*cli, "evaluate", "--config", str(config_path), "--data", str(prepared), "--model", str(model)],
        "index": [*cli, "index", "--config", str(config_path), "--model", str(model), "--output", str(index)],
        "export": [*cli, "export", "--config", str(config_path), "--model", str(model), "--index", str(index),
                   "--output", str(export), "--version", "1"],
    }
    folder.mkdir(parents=True, exist_ok=True)
    config = shop_config(data, f"synthetic_{size:.0e}".replace("+", ""), extra)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    result = {"interactions_asked": size, "items": items, "config": config,
              "stages": dict((earlier or {}).get("stages", {}))}
    for stage in stages:
        print(f"  {stage:<11}", end="", flush=True)
        figures = run_stage(commands[stage], folder / f"{stage}.log")
        result["stages"][stage] = figures
        print(f"{figures['seconds']:8.1f} s  {figures['peak_rss_mb']:8.0f} MB  "
              f"(tree {figures['peak_tree_rss_mb']:.0f} MB)"
              f"{'' if figures['returncode'] == 0 else '  FAILED, see ' + figures['log']}", flush=True)
        if after_stage:
            after_stage(result)
        if figures["returncode"] != 0:
            break
    result |= _facts(data, prepared, model)
    return result


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _facts(data: Path, prepared: Path, model: Path) -> dict:
    """What the stages report about the data and the training."""
    shop, stats = _read(data / "shop.json"), _read(prepared / "stats.json")
    summary = _read(model / "train_summary.json")
    history = _read(model / "history.json")
    metrics = _read(model / "metrics.json")
    out = {"shop": shop, "rows_kept": stats.get("rows_kept"), "examples": stats.get("examples")}
    if summary:
        out["train"] = {"examples_per_second": summary.get("examples_per_second"),
                        "epochs_run": summary.get("epochs_run"), "examples_trained": summary.get("examples_this_run"),
                        "steps_per_epoch": round(summary["examples_this_run"] / max(1, len(history)) /
                                                 config_batch(model)) if history else None}
    if metrics:
        test = metrics.get("test", {})
        out["evaluate"] = {"users": test.get("users"), "users_total": test.get("users_total"),
                           "test_recall@20": {s: v.get("recall@20") for s, v in test.get("all", {}).items()},
                           "test_recall@20_ci": {s: v.get("recall@20")
                                                 for s, v in test.get("ci", {}).get("all", {}).items()}}
    return out


def config_batch(model: Path) -> int:
    try:
        return int(yaml.safe_load((model / "config.yaml").read_text())["train"]["batch_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return 128


def growth(results: list[dict]) -> None:
    """Adds each stage's time and RSS ratio to the size before, per 10x of data."""
    for before, after in zip(results, results[1:]):
        tenfolds = math.log10(after["interactions_asked"] / before["interactions_asked"])
        for stage, figures in after["stages"].items():
            prior = before["stages"].get(stage)
            if not prior or prior["returncode"] or figures["returncode"]:
                continue
            for key in ("seconds", "cpu_seconds", "peak_rss_mb", "peak_tree_rss_mb"):
                if prior[key] > 0:
                    figures[f"{key}_growth_per_10x"] = round((figures[key] / prior[key]) ** (1 / tenfolds), 2)


def table(results: list[dict]) -> str:
    lines = [f"{'stage':<11}{'interactions':>13}{'items':>9}{'time s':>9}{'x/10x':>7}{'peak RSS MB':>13}{'x/10x':>7}"
             f"{'tree MB':>9}"]
    lines.append("-" * len(lines[0]))
    for stage in STAGES:
        for r in results:
            f = r["stages"].get(stage)
            if not f:
                continue
            lines.append(f"{stage:<11}{r['interactions_asked']:>13.0e}{r['items']:>9.0e}{f['seconds']:>9.1f}"
                         f"{f.get('seconds_growth_per_10x', float('nan')):>7.2f}{f['peak_rss_mb']:>13.0f}"
                         f"{f.get('peak_rss_mb_growth_per_10x', float('nan')):>7.2f}{f['peak_tree_rss_mb']:>9.0f}"
                         f"{'' if f['returncode'] == 0 else '  FAILED'}")
    lines.append("")
    for r in results:
        t = r.get("train", {})
        lines.append(f"training at {r['interactions_asked']:.0e}: {t.get('examples_per_second') or float('nan'):,.0f} "
                     f"examples/s, {t.get('epochs_run')} epoch(s) of {t.get('steps_per_epoch')} steps")
    return "\n".join(lines)


def save(out: Path, report: dict, results: list[dict], result: dict, meta: dict, size_load, load_before=None,
         done: bool = False) -> None:
    """Writes the report with ``result`` among the sizes done before (after every stage, so a long run
    leaves its figures as it goes)."""
    result |= {**meta, "machine": machine(size_load), "complete": done,
               "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    merged = sorted([*results, result], key=lambda r: r["interactions_asked"])
    growth(merged)
    report["sizes"] = merged
    if load_before is not None:
        report["machine"] = machine(load_before)
    write_json(out, report)


def markdown(results: list[dict]) -> str:
    """The table of docs/results.md: per stage, time and peak RSS at each size, and their growth per 10x."""
    sizes = [f"{r['interactions_asked']:.0e}".replace("e+0", "e") for r in results]
    head = ("| stage | " + " | ".join(f"{s}: wall (CPU) s, peak RSS (tree) GB" for s in sizes)
            + " | wall x per 10x | CPU x per 10x | RSS x per 10x |")
    lines = [head, "|---" * (len(sizes) + 4) + "|"]
    for stage in STAGES:
        cells, time_growth, cpu_growth, rss_growth = [], [], [], []
        for r in results:
            f = r["stages"].get(stage)
            if not f:
                cells.append("")
                continue
            failed = "" if f["returncode"] == 0 else " FAILED"
            cells.append(f"{f['seconds']:,.0f} ({f['cpu_seconds']:,.0f}), {f['peak_rss_mb'] / 1024:.1f} "
                         f"({f['peak_tree_rss_mb'] / 1024:.1f}){failed}")
            if "seconds_growth_per_10x" in f:
                time_growth.append(f"{f['seconds_growth_per_10x']:.1f}")
                cpu_growth.append(f"{f.get('cpu_seconds_growth_per_10x', float('nan')):.1f}")
                rss_growth.append(f"{f['peak_rss_mb_growth_per_10x']:.1f}")
        lines.append(f"| {stage} | " + " | ".join(cells)
                     + f" | {', '.join(time_growth)} | {', '.join(cpu_growth)} | {', '.join(rss_growth)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e5, 1e6, 1e7], help="interactions per shop")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep every size's folders here")
    parser.add_argument("--beam", nargs="*", default=[], help="Beam flags for preprocess, e.g. "
                        "--beam=--direct_running_mode=multi_processing")
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS, help="most training steps per epoch")
    parser.add_argument("--index-leaves", type=int, default=None,
                        help="pin index.num_leaves at sizes of 10^7 interactions and more")
    parser.add_argument("--large-eval-users", type=int, default=None,
                        help="eval.max_users at sizes of 10^7 interactions and more (default: as every size)")
    parser.add_argument("--markdown", action="store_true", help="print the table of --out as Markdown and stop")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="run only these stages, on the folders --keep holds from a run before (with --merge "
                             "the other stages' figures are kept)")
    parser.add_argument("--no-probe", action="store_true", help="skip measuring the pretrained encoder")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sizes already in --out that this run does not measure (sizes run apart)")
    args = parser.parse_args()

    if args.markdown:
        sizes = json.loads(args.out.read_text(encoding="utf-8"))["sizes"]
        growth(sizes)
        print(markdown(sizes))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="tfrec-scale-"))
    load_before = os.getloadavg()
    report = {"benchmark": "scale", "sizes": [], "bounded": {
        "text_encoder": f"scratch at every size (sequence length {TITLE_TOKENS}); no text_zero_shot baseline "
                        "and no ils@10 (they need the pretrained encoder's vectors of every item)",
        "train": f"{EPOCHS} epochs, of at most {args.max_steps} steps at 1e7 and more; {VALIDATION_USERS} "
                 "validation users per epoch",
        "evaluate": f"eval.max_users={EVAL_USERS} per split" + (
            f", {args.large_eval_users} at 1e7 and more" if args.large_eval_users else ""),
        "index": (f"index.num_leaves={args.index_leaves} at 1e7 and more" if args.index_leaves
                  else "tuned as configured"),
        "preprocess": " ".join(args.beam) or "local FnApiRunner, in one process",
    }}
    results, replaced = [], {}
    if args.merge and args.out.exists():
        earlier = json.loads(args.out.read_text(encoding="utf-8"))
        replaced = {r["interactions_asked"]: r for r in earlier.get("sizes", [])}
        results = [r for r in earlier.get("sizes", []) if r["interactions_asked"] not in {int(s) for s in args.sizes}]
        if "text_encoder_probe" in earlier:
            report["text_encoder_probe"] = earlier["text_encoder_probe"]
    for size in sorted(int(s) for s in args.sizes):
        size_load = os.getloadavg()
        print(f"\n== {size:.0e} interactions, {size * ITEMS_PER_INTERACTION:.0e} items ({root / str(size)})",
              flush=True)
        extra = {"train.steps_per_epoch": None}
        if size >= 1e7:
            extra["train.steps_per_epoch"] = args.max_steps
            if args.index_leaves:
                extra["index.num_leaves"] = args.index_leaves
            if args.large_eval_users:
                extra["eval.max_users"] = args.large_eval_users
        extra = {k: v for k, v in extra.items() if v is not None}
        meta = {"bounds": extra, "beam_args": args.beam}
        result = run_size(size, root / str(size), args.beam, extra,
                          after_stage=lambda r, m=meta, done=list(results), load=size_load: save(
                              args.out, report, done, r, m, load),
                          stages=tuple(s for s in STAGES if s in args.stages), earlier=replaced.get(size))
        save(args.out, report, results, result, meta, size_load, load_before, done=True)
        if size == min(int(s) for s in args.sizes) and not args.no_probe:
            titles = (root / str(size) / "shop" / "catalogue.csv").read_text(encoding="utf-8").splitlines()[1:1001]
            report["text_encoder_probe"] = text_encoder_probe([t.split(",")[1] for t in titles])
            print(f"  pretrained encoder: {report['text_encoder_probe']}", flush=True)
            write_json(args.out, report)
        results = report["sizes"]
    print("\n" + table(results))
    print("\nbounded: " + json.dumps(report["bounded"], indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
