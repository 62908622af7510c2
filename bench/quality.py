"""Quality benchmark: train each config, evaluate it beside every baseline, print one table per shop.

For each ``--config`` (a shop): preprocesses its data once (or reads ``--data`` with a single
config), then for each of ``--seeds`` seeds trains from scratch (``train.seed`` = 1, 2, ...)
and evaluates the model on the same split. The baselines do not depend on the model's seed:
they are fitted and ranked once per shop, in the first seed's evaluation, on the same users.
Prints, for validation and test and for both protocols (``all``, ``explore``), Recall@10,
NDCG@10, Recall@20 and NDCG@20 of the model (mean ± std over seeds) and of each baseline,
the model-over-best-baseline ratios (the best baseline of each column, ``text_recent`` among
them, whose decay is chosen on validation), the settings the code derived from the shop's data,
the next-item Recall@10 of ``tfrec_similar`` ranked from each test user's last item (at equal
text weight and at the fitted one, and the one validation kept), and the training wall time of
each run (the first seed's includes encoding the catalogue's text, which the later seeds reuse).
Writes one JSON per shop.

    python bench/quality.py --config configs/amazon_toys.yaml --config configs/amazon_clothing.yaml --seeds 3
    python bench/quality.py --config configs/online_retail.yaml --set train.epochs=4
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_json

from pipelines.preprocess import run_preprocess
from tfrec.config import Config, load_config
from tfrec.data import load_catalogue, load_eval_split, sample_users
from tfrec.evaluation.comparison import evaluate
from tfrec.evaluation.ranking import evaluate_split, model_scorer
from tfrec.layout import TEXT_CACHE_DIR
from tfrec.models import load_model
from tfrec.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@10", "ndcg@10", "recall@20", "ndcg@20")
PROTOCOLS = ("all", "explore")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[dict], split: str) -> dict:
    """``{protocol: {scorer: {metric: {"mean", "std", "values"}}}}`` over the runs of one split.

    The model is summarised over every run; a baseline over the runs that ranked it (the first).
    """
    out = {}
    for protocol in PROTOCOLS:
        out[protocol] = {}
        for scorer in runs[0][split][protocol]:
            ranked = [r for r in runs if scorer in r[split][protocol]]
            out[protocol][scorer] = {}
            for metric in METRICS:
                values = [r[split][protocol][scorer][metric] for r in ranked]
                mean, std = _mean_std(values)
                out[protocol][scorer][metric] = {"mean": round(mean, 5), "std": round(std, 5),
                                                 "values": [round(v, 5) for v in values]}
    return out


def format_split(summary: dict, split: str, seeds: int) -> str:
    lines = [f"{split} ({seeds} seed(s); model: mean ± std; baselines: ranked once)"]
    header = f"{'protocol':<9}{'scorer':<19}" + "".join(f"{m:>18}" for m in METRICS)
    lines += [header, "-" * len(header)]
    for protocol in PROTOCOLS:
        model = summary[protocol]["model"]
        baselines = {k: v for k, v in summary[protocol].items() if k != "model"}
        for scorer, values in summary[protocol].items():
            if scorer == "model":
                cells = "".join(f"{values[m]['mean']:>11.4f} ±{values[m]['std']:.4f}" for m in METRICS)
            else:
                cells = "".join(f"{values[m]['mean']:>18.4f}" for m in METRICS)
            lines.append(f"{protocol:<9}{scorer:<19}{cells}")
        if baselines:
            best = {m: max(v[m]["mean"] for v in baselines.values()) for m in METRICS}
            ratios = "".join(f"{(model[m]['mean'] / best[m] if best[m] else float('nan')):>17.3f}x"
                             for m in METRICS)
            lines.append(f"{protocol:<9}{'model/best':<19}{ratios}")
    return "\n".join(lines)


def without_baselines(config: Config) -> Config:
    """``config`` with no baselines: the later seeds rank the model alone."""
    return config.model_copy(update={"eval": config.eval.model_copy(update={"baselines": []})})


def without_text_term(config: Config, data: Path, model_dir: Path) -> dict | None:
    """Test ``explore`` metrics of the trained part alone (text weight 0), for a model with a text term."""
    model = load_model(model_dir)
    if not model.user_tower.text_dim:
        return None
    model.user_tower.text_weight.assign(0.0)
    catalogue = load_catalogue(data, config.data.items.categorical_fields)
    test = sample_users(load_eval_split(data, "test"), config.eval.max_users, config.train.seed)
    result = evaluate_split({"model": model_scorer(model, model.item_vectors())}, test, len(catalogue),
                            catalogue.cold_start, config.eval.ks, config.eval.batch_size,
                            score_budget=config.eval.score_budget)
    return {metric: result.metrics["explore"]["model"][metric] for metric in METRICS}


def run_seed(config: Config, data: Path, model_dir: Path, seed: int) -> dict:
    """Trains and evaluates one seed; returns its figures."""
    started = time.perf_counter()
    summary = train(config, data, model_dir, resume=False)
    wall = time.perf_counter() - started
    metrics = evaluate(config, data, model_dir)
    explore = metrics["test"]["explore"]["model"]
    alone = without_text_term(config, data, model_dir)
    print(f"seed {seed}: trained in {wall:.0f} s ({summary['epochs_run']} epochs, best {summary['best_epoch']}), "
          f"text weight {summary.get('text_weight')} decay {summary.get('text_decay')}, "
          f"test explore recall@10 {explore['recall@10']:.4f} ndcg@10 {explore['ndcg@10']:.4f}"
          + (f" (text weight 0: {alone['recall@10']:.4f} / {alone['ndcg@10']:.4f})" if alone else ""), flush=True)
    return {"seed": seed, "train_wall_s": round(wall, 1), "epochs": summary["epochs_run"],
            "best_epoch": summary["best_epoch"], "derived": summary.get("derived", {}),
            "text_weight": summary.get("text_weight"), "text_decay": summary.get("text_decay"),
            "text_weight_validation": summary.get("text_weight_validation"),
            "test_explore_without_text_term": alone, "valid": metrics["valid"], "test": metrics["test"],
            "shop": summary.get("shop"), "similar_items": metrics["similar_items"],
            "text_recent": metrics.get("text_recent")}


def bench_shop(config_path: str, overrides: list[str], seeds: int, data: Path | None, scratch: Path) -> dict:
    """Every seed of one shop, and its report."""
    base = load_config(config_path, overrides)
    print(f"== {base.name} ({config_path})", flush=True)
    if data is None:
        data = scratch / base.name / "data"
        run_preprocess(base, data)
    runs, load_before = [], os.getloadavg()
    for seed in range(1, seeds + 1):
        config = load_config(config_path, [*overrides, f"train.seed={seed}"])
        config = config if seed == 1 else without_baselines(config)
        model_dir = scratch / base.name / f"model-{seed}"
        if seed > 1:  # the catalogue's text vectors do not change with the seed: encoded once
            shutil.copytree(scratch / base.name / "model-1" / TEXT_CACHE_DIR, model_dir / TEXT_CACHE_DIR)
        runs.append(run_seed(config, data, model_dir, seed))
    walls = [r["train_wall_s"] for r in runs]
    return {
        "benchmark": "quality",
        "config": config_path,
        "overrides": overrides,
        "seeds": seeds,
        "derived": runs[0]["derived"],
        "shop": runs[0]["shop"],
        "text_recent": runs[0]["text_recent"],
        "similar_items": similar_summary(runs),
        "text_weights": [r["text_weight"] for r in runs],
        "text_decays": [r["text_decay"] for r in runs],
        "text_weight_validation": [r["text_weight_validation"] for r in runs],
        "test_explore_without_text_term": _without_text_summary(runs),
        "train_wall_s": {"median": statistics.median(walls), "values": walls},
        "epochs": [r["epochs"] for r in runs],
        "best_epochs": [r["best_epoch"] for r in runs],
        "valid": summarize(runs, "valid"),
        "test": summarize(runs, "test"),
        "users": {"valid": runs[0]["valid"]["users"], "test": runs[0]["test"]["users"],
                  "test_repeat_share": runs[0]["test"]["repeat_share"]},
        "machine": machine(load_before, ("tensorflow", "keras")),
    }


def similar_summary(runs: list[dict]) -> dict:
    """``tfrec_similar``'s next-item Recall@10 (test, ``explore``, from each user's last item): mean ±
    std over seeds of each candidate text weight and of the one each seed kept on validation."""
    def stat(values: list[float]) -> dict:
        mean, std = _mean_std(values)
        return {"mean": round(mean, 5), "std": round(std, 5), "values": [round(v, 5) for v in values]}

    records = [r["similar_items"] for r in runs]
    return {
        "metric": "test explore recall@10 of the next group, ranked from the user's last history item",
        "chosen": [r["chosen"] for r in records], "text_weights": [r["text_weight"] for r in records],
        "kept": stat([r["test"][r["chosen"]]["recall@10"] for r in records]),
        "candidates": {name: stat([r["test"][name]["recall@10"] for r in records])
                       for name in records[0]["candidates"]},
    }


def _without_text_summary(runs: list[dict]) -> dict | None:
    """Mean ± std over seeds of the trained part alone (text weight 0), when the model has a text term."""
    alone = [r["test_explore_without_text_term"] for r in runs if r["test_explore_without_text_term"]]
    if not alone:
        return None
    return {m: dict(zip(("mean", "std"), (round(x, 5) for x in _mean_std([a[m] for a in alone]))))
            for m in METRICS}


def print_report(name: str, report: dict) -> None:
    print(f"\n#### {name}")
    if report["derived"]:
        print("settings derived from the data: " + ", ".join(f"{k}={v}" for k, v in report["derived"].items()))
    for split in ("valid", "test"):
        print(format_split(report[split], split, report["seeds"]) + "\n")
    shop = report["shop"]
    if shop:
        print(f"shop: {shop['kind']} (training targets: {shop['train_basket_size']} items per group, "
              f"{shop['train_repeat_share']:.1%} bought before)")
    if report["text_recent"]:
        print(f"text_recent: decay {report['text_recent']['decay']:g}, chosen on {report['text_recent']['chosen_by']}")
    similar = report["similar_items"]
    print("tfrec_similar, next-item recall@10 (test explore, from the last item): "
          + ", ".join(f"{name} {v['mean']:.4f} ±{v['std']:.4f}" for name, v in similar["candidates"].items())
          + f"; kept on validation {similar['chosen']} (w {similar['text_weights']}): {similar['kept']['mean']:.4f}")
    alone = report["test_explore_without_text_term"]
    if alone:
        print(f"text weights fitted on validation: {report['text_weights']}, decays {report['text_decays']}; "
              "test explore of the trained part "
              "alone (text weight 0): " + ", ".join(f"{m} {v['mean']:.4f} ±{v['std']:.4f}" for m, v in alone.items()))
    walls = report["train_wall_s"]
    print(f"training wall time: median {walls['median']:.0f} s over {len(walls['values'])} run(s) {walls['values']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--config", action="append", required=True, dest="configs",
                        help="a tfrec YAML config (paths relative to the repository); repeat for several shops")
    parser.add_argument("--seeds", "--runs", dest="seeds", type=int, default=1,
                        help="training runs from scratch with seeds 1..N (default 1)")
    parser.add_argument("--data", type=Path, default=None,
                        help="an existing `tfrec preprocess` output of the config (one --config only)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as in the CLI (repeatable; applies to every config)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file (one --config only; default bench/results/quality_<config name>.json)")
    args = parser.parse_args()
    if len(args.configs) > 1 and (args.data or args.output):
        parser.error("--data and --output take one --config")
    os.chdir(ROOT)  # the bundled configs' paths are relative to the repository
    reports = {}
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-quality-") as scratch:
        for config_path in args.configs:
            name = load_config(config_path, args.overrides).name
            reports[name] = bench_shop(config_path, args.overrides, args.seeds, args.data, Path(scratch))
            write_json(args.output or ROOT / "bench" / "results" / f"quality_{name}.json", reports[name])
    for name, report in reports.items():
        print_report(name, report)


if __name__ == "__main__":
    main()
