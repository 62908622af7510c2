"""ScaNN against exact search: recall@10, queries/s and build time, on two catalogues.

1. The shop's catalogue: the item vectors of a trained model (``--model``, default
   ``runs/online_retail/model`` as written by ``make demo``), queried with its held-out
   test users' query vectors.
2. A synthetic catalogue of ``--synthetic`` vectors (default 1,000,000) of the same
   dimension: unit vectors around 2,000 random centres, the kind of clustered space
   trained embeddings form (noise as large as the centre, so clusters overlap), queried
   with fresh vectors drawn the same way.

Each index is built and tuned by the same code as ``tfrec index`` (parameters derived
from the catalogue size, search widened until recall@10 reaches the target). ScaNN and
exact brute force (TF matmul + top_k) answer the same queries in the same run; their
queries/s are medians of 3 timings, batched and one query at a time, and the ratio
between them is the figure to read (absolute times on shared machines are noisy).
Prints a table and writes ``bench/results/index.json``.

    python bench/index.py [--model runs/online_retail/model] [--synthetic 1000000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from benchlib import machine, write_json

from serving.index import tuned_searcher
from tfrec.config import IndexConfig, load_config
from tfrec.errors import TfrecError
from tfrec.layout import VECTORS_FILE

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("items", "dimensions", "num_leaves", "num_leaves_to_search", "reorder", "build_seconds",
           "recall@10_vs_exact", "scann_batched_qps", "exact_batched_qps", "scann_over_exact_batched",
           "scann_single_qps", "exact_single_qps", "scann_over_exact_single")


def clustered_unit_vectors(n: int, dimensions: int, centres: int, rng: np.random.Generator,
                           spread: float = 1.0) -> np.ndarray:
    """Unit vectors scattered around random unit centres (built in chunks to bound memory)."""
    middle = rng.normal(size=(centres, dimensions)).astype(np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    out = np.empty((n, dimensions), np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        chunk = middle[rng.integers(0, centres, size)] + spread * rng.normal(
            size=(size, dimensions)).astype(np.float32) / np.sqrt(dimensions)
        out[start:start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def measure(name: str, vectors: np.ndarray, queries: np.ndarray, settings: IndexConfig) -> dict:
    print(f"\n{name}: {len(vectors):,} vectors of dimension {vectors.shape[1]}, {len(queries):,} queries")
    started = time.perf_counter()
    _, _, report = tuned_searcher(vectors, queries, settings)
    report["tune_seconds"] = time.perf_counter() - started
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/online_retail.yaml")
    parser.add_argument("--model", type=Path, default=ROOT / "runs" / "online_retail" / "model")
    parser.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic catalogue size (0: skip)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "index.json")
    args = parser.parse_args()
    os.chdir(ROOT)
    settings = load_config(args.config).index
    vectors_file = args.model / VECTORS_FILE
    if not vectors_file.exists():
        raise SystemExit(f"{vectors_file} not found: train a model first (make demo), or pass --model")
    saved = np.load(vectors_file)
    shop_vectors = saved["item_vectors"].astype(np.float32)
    shop_queries = saved["query_vectors"][: args.queries].astype(np.float32)
    load_before = os.getloadavg()

    results = {}
    try:
        results["shop"] = measure(f"shop catalogue ({args.model})", shop_vectors, shop_queries, settings)
        if args.synthetic:
            rng = np.random.default_rng(0)
            dimensions = shop_vectors.shape[1]
            started = time.perf_counter()
            synthetic = clustered_unit_vectors(args.synthetic, dimensions, 2_000, rng)
            queries = clustered_unit_vectors(args.queries, dimensions, 2_000, np.random.default_rng(0))
            queries += 0.05 * rng.normal(size=queries.shape).astype(np.float32)
            queries /= np.linalg.norm(queries, axis=1, keepdims=True)
            print(f"\ngenerated {len(synthetic):,} synthetic vectors in {time.perf_counter() - started:.0f}s")
            results["synthetic"] = measure("synthetic catalogue", synthetic, queries, settings)
    except TfrecError as e:
        raise SystemExit(f"error: {e}") from None

    report = {
        "benchmark": "index",
        "config": args.config,
        "model": str(args.model),
        "catalogues": results,
        "machine": machine(load_before, ("tensorflow", "scann")),
    }
    print()
    print(f"{'':<28}" + "".join(f"{name:>16}" for name in results))
    for column in COLUMNS:
        cells = []
        for r in results.values():
            value = r[column]
            cells.append(f"{value:>16,.3f}" if isinstance(value, float) else f"{value:>16,}")
        print(f"{column:<28}" + "".join(cells))
    write_json(args.output, report)


if __name__ == "__main__":
    main()
