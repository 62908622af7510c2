"""Training throughput and quality: default training on the bundled Online Retail data.

Preprocesses the bundled file once (or reads ``--data``), then trains the model with the
default configuration ``--runs`` times from scratch, each in a fresh folder, and
evaluates each run beside every baseline. Prints a table and writes
``bench/results/train.json``: wall time of each run (text encoding included), training
examples/s (median over epochs), and the test metrics of the model and the best
baseline under both protocols, with the model-over-baseline ratios measured in the same
run.

    python bench/train.py [--config configs/online_retail.yaml] [--runs 1] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_json

from pipelines.preprocess import run_preprocess
from tfrec.config import load_config
from tfrec.evaluation.comparison import evaluate
from tfrec.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
HEADLINE = ("recall@20", "ndcg@10")


def best_baselines(split: dict, protocol: str) -> dict[str, tuple[str, float]]:
    """For each headline metric, the best baseline and its value."""
    scorers = {name: values for name, values in split[protocol].items() if name != "model"}
    return {m: max(((name, v[m]) for name, v in scorers.items()), key=lambda x: x[1]) for m in HEADLINE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/online_retail.yaml")
    parser.add_argument("--runs", type=int, default=1, help="training runs from scratch (default 1)")
    parser.add_argument("--data", type=Path, default=None, help="an existing `tfrec preprocess` output")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "train.json")
    args = parser.parse_args()
    os.chdir(ROOT)  # the bundled config's paths are relative to the repository
    config = load_config(args.config, args.overrides)

    with tempfile.TemporaryDirectory(prefix="tfrec-bench-train-") as scratch:
        data = args.data or Path(scratch) / "data"
        if args.data is None:
            run_preprocess(config, data)
        runs = []
        load_before = os.getloadavg()
        for run in range(args.runs):
            model_dir = Path(scratch) / f"model-{run}"
            started = time.perf_counter()
            summary = train(config, data, model_dir, resume=False)
            wall = time.perf_counter() - started
            metrics = evaluate(config, data, model_dir)
            runs.append({"wall_s": round(wall, 1), "epochs": summary["epochs_run"],
                         "best_epoch": summary["best_epoch"],
                         "examples_per_s": round(summary["examples_per_second"]), "test": metrics["test"],
                         "valid": metrics["valid"]})
            print(f"run {run + 1}/{args.runs}: {wall:.0f} s, {summary['epochs_run']} epochs, "
                  f"{summary['examples_per_second']:,.0f} examples/s")

    comparison = {}
    for protocol in ("all", "explore"):
        comparison[protocol] = {}
        for metric in HEADLINE:
            model = statistics.median(r["test"][protocol]["model"][metric] for r in runs)
            name, best = best_baselines(runs[0]["test"], protocol)[metric]
            comparison[protocol][metric] = {"model": round(model, 4), "best_baseline": name,
                                            "best_baseline_value": round(best, 4),
                                            "model_over_best_baseline": round(model / best, 3) if best else None}
    report = {
        "benchmark": "train",
        "config": args.config,
        "overrides": args.overrides,
        "runs": [{k: v for k, v in r.items() if k not in ("test", "valid")} for r in runs],
        "median_wall_s": statistics.median(r["wall_s"] for r in runs),
        "median_examples_per_s": statistics.median(r["examples_per_s"] for r in runs),
        "test": comparison,
        "test_metrics_run_1": runs[0]["test"],
        "machine": machine(load_before, ("tensorflow", "keras")),
    }

    print(f"\nDefault training, {args.runs} run(s): median wall time {report['median_wall_s']:.0f} s "
          f"(budget 900 s), median {report['median_examples_per_s']:,} examples/s")
    print(f"{'protocol':<10}{'metric':<12}{'model':>9}{'best baseline':>22}{'value':>9}{'ratio':>8}")
    for protocol, metrics in comparison.items():
        for metric, c in metrics.items():
            print(f"{protocol:<10}{metric:<12}{c['model']:>9.4f}{c['best_baseline']:>22}"
                  f"{c['best_baseline_value']:>9.4f}{c['model_over_best_baseline']:>8.3f}")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
