"""The item graph's ablation: the same shop and seeds trained without and with ``model.graph``.

Preprocesses the shop once, then runs the quality benchmark (``quality.py``'s ``bench_shop``:
train, evaluate beside every baseline) for each ``--variant`` of ``model.graph.propagate``
(``none``, ``text``, ``ids``) over seeds 1..N. Writes each variant's full report as
``graph_<shop>_<variant>[_<tag>].json`` and a summary, ``graph_<shop>[_<tag>].json``: per variant and seed the
validation figures (what a setting is chosen on), the differences to ``none`` on the same seeds,
and the training wall times. The test figures stay in the variants' reports.

    python bench/graph.py --config configs/online_retail.yaml --seeds 2
    python bench/graph.py --config configs/amazon_toys.yaml --seeds 2 --variant none --variant text
    python bench/graph.py --config configs/online_retail.yaml --variant text --set model.graph.hops=1 --tag hops1
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from benchlib import write_json
from quality import METRICS, PROTOCOLS, bench_shop

from pipelines.preprocess import run_preprocess
from tfrec.config import load_config
from tfrec.layout import TEXT_CACHE_DIR

ROOT = Path(__file__).resolve().parents[1]


def validation_figures(report: dict) -> dict:
    """``{protocol: {metric: [value per seed]}}`` of the model on validation."""
    return {p: {m: report["valid"][p]["model"][m]["values"] for m in METRICS} for p in PROTOCOLS}


def summary(reports: dict[str, dict], settings: list[str]) -> dict:
    """Per variant: validation values per seed, their mean, and the mean difference to ``none``."""
    out = {"benchmark": "graph", "settings": settings, "variants": {}}
    base = validation_figures(reports["none"]) if "none" in reports else None
    for variant, report in reports.items():
        figures = validation_figures(report)
        means = {p: {m: round(statistics.fmean(v), 5) for m, v in ms.items()} for p, ms in figures.items()}
        entry = {"valid": figures, "valid_mean": means,
                 "train_wall_s": report["train_wall_s"], "epochs": report["epochs"]}
        if base is not None and variant != "none":
            entry["valid_mean_difference_to_none"] = {
                p: {m: round(statistics.fmean(a - b for a, b in zip(v, base[p][m])), 5) for m, v in ms.items()}
                for p, ms in figures.items()}
        out["variants"][variant] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--config", required=True, help="a tfrec YAML config (paths relative to the repository)")
    parser.add_argument("--seeds", type=int, default=2, help="training runs with seeds 1..N per variant (default 2)")
    parser.add_argument("--variant", dest="variants", action="append", choices=("none", "text", "ids"),
                        help="model.graph.propagate values to run (repeatable; default off, text, ids)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every variant (e.g. model.graph.hops=1)")
    parser.add_argument("--tag", default="", help="added to the JSON names (a run with other --set overrides)")
    parser.add_argument("--data", type=Path, default=None, help="an existing `tfrec preprocess` output of the config")
    args = parser.parse_args()
    os.chdir(ROOT)  # the bundled configs' paths are relative to the repository
    variants = args.variants or ["none", "text", "ids"]
    name = load_config(args.config, args.overrides).name
    suffix = f"_{args.tag}" if args.tag else ""
    reports = {}
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-graph-") as scratch:
        data = args.data
        if data is None:
            data = Path(scratch) / "data"
            run_preprocess(load_config(args.config, args.overrides), data)
        for i, variant in enumerate(variants):
            overrides = [*args.overrides, f"model.graph.propagate={variant}"]
            if i:  # the catalogue's text vectors are the same for every variant: encoded once
                shutil.copytree(Path(scratch) / variants[0] / name / "model-1" / TEXT_CACHE_DIR,
                                Path(scratch) / variant / name / "model-1" / TEXT_CACHE_DIR)
            reports[variant] = bench_shop(args.config, overrides, args.seeds, data, Path(scratch) / variant)
            write_json(ROOT / "bench" / "results" / f"graph_{name}_{variant}{suffix}.json", reports[variant])
            result = summary(reports, args.overrides)
            write_json(ROOT / "bench" / "results" / f"graph_{name}{suffix}.json", result)
            print(f"{variant}: validation " + ", ".join(
                f"{p} {m} {v:.4f}" for p, ms in result["variants"][variant]["valid_mean"].items()
                for m, v in ms.items() if m in ("recall@20", "ndcg@10")), flush=True)


if __name__ == "__main__":
    main()
