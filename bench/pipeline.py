"""Pipeline throughput: rows/s of the preprocessing job on the bundled Online Retail file.

Compares the in-memory DirectRunner with the multi-processing DirectRunner (2 workers),
the median of several runs each. Runs alternate between the two modes so that load from
other processes on a shared machine falls on both alike. Prints a table and writes
``bench/results/pipeline.json``.

    python bench/pipeline.py [--config configs/online_retail.yaml] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import machine, write_json

from pipelines.preprocess import run_preprocess
from tfrec.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "in_memory": [],
    "multi_processing_2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def timed_run(config, beam_args: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-") as output:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            stats = run_preprocess(config, output, beam_args)
        return time.perf_counter() - start, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/online_retail.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    os.chdir(ROOT)  # the bundled config's paths are relative to the repository
    config = load_config(args.config)

    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for mode, beam_args in MODES.items():
            elapsed, stats = timed_run(config, beam_args)
            seconds[mode].append(elapsed)
            print(f"run {repeat + 1}/{args.repeats} {mode:<20} {elapsed:7.1f} s")
    rows = stats["rows_read"]

    results = {
        mode: {"runs_s": [round(s, 2) for s in runs], "median_s": round(statistics.median(runs), 2),
               "rows_per_s": round(rows / statistics.median(runs))}
        for mode, runs in seconds.items()
    }
    report = {
        "benchmark": "pipeline",
        "config": args.config,
        "rows_read": rows,
        "rows_kept": stats["rows_kept"],
        "examples": stats["examples"],
        "repeats": args.repeats,
        "modes": results,
        "multi_over_in_memory_speed": round(
            results["multi_processing_2"]["rows_per_s"] / results["in_memory"]["rows_per_s"], 2),
        "machine": machine(load_before, ("apache-beam",)),
    }

    print(f"\n{rows:,} rows read, median of {args.repeats} runs")
    print(f"{'mode':<22}{'median s':>10}{'rows/s':>12}   runs (s)")
    for mode, r in results.items():
        print(f"{mode:<22}{r['median_s']:>10.1f}{r['rows_per_s']:>12,}   {r['runs_s']}")
    print(f"multi-processing / in-memory throughput: {report['multi_over_in_memory_speed']}x")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
