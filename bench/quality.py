"""Quality benchmark: train a config, evaluate it beside every baseline, report the headline table.

Preprocesses the config's data once (or reads ``--data``), then for each of ``--seeds``
seeds trains from scratch (``train.seed`` = 1, 2, ...) and evaluates the model and every
configured baseline on the same split in the same run. Prints, for validation and test and
for both protocols (``all``, ``explore``), Recall@10, NDCG@10, Recall@20 and NDCG@20 of the
model (mean ± std over seeds) and of each baseline, the model-over-baseline ratios, and the
training wall time of each run (text encoding included). Writes the figures to JSON.

    python bench/quality.py --config configs/amazon_toys.yaml --seeds 3
    python bench/quality.py --config configs/online_retail.yaml --set train.epochs=4
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
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
PROTOCOLS = ("all", "explore")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict], split: str) -> dict:
    """``{protocol: {scorer: {metric: {"mean", "std", "values"}}}}`` over the runs of one split."""
    out = {}
    for protocol in PROTOCOLS:
        out[protocol] = {}
        for scorer in runs[0][split][protocol]:
            out[protocol][scorer] = {}
            for metric in METRICS:
                values = [r[split][protocol][scorer][metric] for r in runs]
                mean, std = _mean_std(values)
                out[protocol][scorer][metric] = {"mean": round(mean, 5), "std": round(std, 5),
                                                 "values": [round(v, 5) for v in values]}
    return out


def format_split(summary: dict, split: str, seeds: int) -> str:
    lines = [f"{split} ({seeds} seed(s); model: mean ± std; baselines: mean)"]
    header = f"{'protocol':<9}{'scorer':<19}" + "".join(f"{m:>18}" for m in METRICS)
    lines += [header, "-" * len(header)]
    for protocol in PROTOCOLS:
        model = summary[protocol]["model"]
        best = {m: max(v[m]["mean"] for k, v in summary[protocol].items() if k != "model") for m in METRICS}
        for scorer, values in summary[protocol].items():
            if scorer == "model":
                cells = "".join(f"{values[m]['mean']:>11.4f} ±{values[m]['std']:.4f}" for m in METRICS)
            else:
                cells = "".join(f"{values[m]['mean']:>18.4f}" for m in METRICS)
            lines.append(f"{protocol:<9}{scorer:<19}{cells}")
        ratios = "".join(f"{(model[m]['mean'] / best[m] if best[m] else float('nan')):>17.3f}x" for m in METRICS)
        lines.append(f"{protocol:<9}{'model/best':<19}{ratios}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--config", required=True, help="a tfrec YAML config (paths relative to the repository)")
    parser.add_argument("--seeds", "--runs", dest="seeds", type=int, default=1,
                        help="training runs from scratch with seeds 1..N (default 1)")
    parser.add_argument("--data", type=Path, default=None, help="an existing `tfrec preprocess` output of the config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as in the CLI (repeatable)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file (default bench/results/quality_<config name>.json)")
    args = parser.parse_args()
    os.chdir(ROOT)  # the bundled configs' paths are relative to the repository
    base = load_config(args.config, args.overrides)
    output = args.output or ROOT / "bench" / "results" / f"quality_{base.name}.json"

    with tempfile.TemporaryDirectory(prefix="tfrec-bench-quality-") as scratch:
        data = args.data or Path(scratch) / "data"
        if args.data is None:
            run_preprocess(base, data)
        runs = []
        load_before = os.getloadavg()
        for seed in range(1, args.seeds + 1):
            config = load_config(args.config, [*args.overrides, f"train.seed={seed}"])
            model_dir = Path(scratch) / f"model-{seed}"
            started = time.perf_counter()
            summary = train(config, data, model_dir, resume=False)
            wall = time.perf_counter() - started
            metrics = evaluate(config, data, model_dir)
            runs.append({"seed": seed, "train_wall_s": round(wall, 1), "epochs": summary["epochs_run"],
                         "best_epoch": summary["best_epoch"], "valid": metrics["valid"], "test": metrics["test"]})
            print(f"seed {seed}: trained in {wall:.0f} s "
                  f"({summary['epochs_run']} epochs, best {summary['best_epoch']}), "
                  f"test explore recall@10 {metrics['test']['explore']['model']['recall@10']:.4f} "
                  f"ndcg@10 {metrics['test']['explore']['model']['ndcg@10']:.4f}")

    walls = [r["train_wall_s"] for r in runs]
    report = {
        "benchmark": "quality",
        "config": args.config,
        "overrides": args.overrides,
        "seeds": args.seeds,
        "train_wall_s": {"median": statistics.median(walls), "values": walls},
        "epochs": [r["epochs"] for r in runs],
        "best_epochs": [r["best_epoch"] for r in runs],
        "valid": summarize(runs, "valid"),
        "test": summarize(runs, "test"),
        "users": {"valid": runs[0]["valid"]["users"], "test": runs[0]["test"]["users"],
                  "test_repeat_share": runs[0]["test"]["repeat_share"]},
        "machine": machine(load_before, ("tensorflow", "keras")),
    }
    print()
    for split in ("valid", "test"):
        print(format_split(report[split], split, args.seeds) + "\n")
    print(f"training wall time: median {report['train_wall_s']['median']:.0f} s over {len(walls)} run(s) {walls}")
    write_json(output, report)


if __name__ == "__main__":
    main()
