"""What the confidence intervals and segments cost: evaluation with and without them.

On a finished run folder (``tfrec run``'s ``data/`` and ``model/``), ranks the test split
with the model and every baseline ``--runs`` times each way, in alternation:

- ``plain``: the evaluation as it is without intervals (no per-user values, no segments);
- ``full``: per-user values and the target segments kept, then the paired bootstrap
  (``eval.bootstrap_resamples`` resamples) and the segment analysis.

Prints the medians and writes ``bench/results/bootstrap.json`` with every timing, the
bootstrap's own share of the full evaluation, and the machine's load.

    python bench/bootstrap.py --run runs/online_retail [--config configs/online_retail.yaml] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from benchlib import machine, write_json

from tfrec.config import load_config
from tfrec.data import load_catalogue, load_eval_split
from tfrec.evaluation.comparison import make_baselines, zero_shot_text_vectors
from tfrec.evaluation.ranking import evaluate_split, model_scorer
from tfrec.evaluation.segments import analyse_split, target_segments
from tfrec.models.two_tower import load_model

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a run folder of `tfrec run`")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "online_retail.yaml")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    config = load_config(args.config)
    data_dir, model_dir = args.run / "data", args.run / "model"
    catalogue = load_catalogue(data_dir, config.data.items.categorical_fields)
    valid, test = load_eval_split(data_dir, "valid"), load_eval_split(data_dir, "test")
    text_vectors = zero_shot_text_vectors(config, catalogue, model_dir / "text_cache")
    model = load_model(model_dir)
    scorers = {"model": model_scorer(model, model.item_vectors())}
    scorers.update({b.name: b.scores for b in make_baselines(config, catalogue, valid, text_vectors)})
    common = dict(ks=config.eval.ks, batch_size=config.eval.batch_size, item_vectors=text_vectors)
    timings = {"plain": [], "full_ranking": [], "bootstrap": [], "full": []}
    for _ in range(args.runs):
        started = time.perf_counter()
        evaluate_split(scorers, test, len(catalogue), catalogue.cold_start, **common)
        timings["plain"].append(time.perf_counter() - started)
        started = time.perf_counter()
        result = evaluate_split(scorers, test, len(catalogue), catalogue.cold_start, **common,
                                target_segments=target_segments(catalogue.counts), keep_per_user=True)
        ranked = time.perf_counter()
        analyse_split(result.per_user, test, config.eval.bootstrap_resamples, config.train.seed,
                      config.eval.min_segment_users)
        done = time.perf_counter()
        timings["full_ranking"].append(ranked - started)
        timings["bootstrap"].append(done - ranked)
        timings["full"].append(done - started)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    report = {
        "test_users": len(test), "items": len(catalogue), "scorers": len(scorers),
        "resamples": config.eval.bootstrap_resamples, "runs": args.runs, "seconds": timings,
        "median_seconds": medians,
        "bootstrap_share_of_full": medians["bootstrap"] / medians["full"],
        "full_over_plain": medians["full"] / medians["plain"],
        "machine": machine(load),
    }
    print(f"test split: {len(test):,} users, {len(catalogue):,} items, {len(scorers)} scorers, "
          f"{config.eval.bootstrap_resamples} resamples, median of {args.runs} runs")
    for key in ("plain", "full_ranking", "bootstrap", "full"):
        print(f"  {key:<13} {medians[key]:8.2f} s")
    print(f"  bootstrap / full evaluation: {report['bootstrap_share_of_full']:.1%}; "
          f"full / plain: {report['full_over_plain']:.2f}x")
    write_json(ROOT / "bench" / "results" / "bootstrap.json", report)


if __name__ == "__main__":
    main()
