"""Serving latency and throughput: ``tfrec serve`` under a bounded load on 127.0.0.1.

Starts the local model server over an export in its own process (so the load
generator does not share its Python interpreter), then, for ``tfrec_retrieve`` and
``tfrec_retrieve_scann`` (when exported), over REST and over gRPC, runs a number of
concurrent clients for a fixed time, each request carrying one user's history of item
ids drawn from the export's ``items.tsv`` with a fixed seed. Every load is bounded in
time and in requests per client. Reports requests, errors, p50 / p99 latency per request
and requests/s: the median of several runs, which alternate between the cases so that
load from other processes falls on all of them alike. Prints a table and writes
``bench/results/serve.json``.

    python bench/serve.py [--export runs/online_retail/export] [--clients 20] [--seconds 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from benchlib import find_export, machine, write_json

from serving.client import GrpcClient, RestClient, ServingClientError
from serving.export import RETRIEVE, RETRIEVE_SCANN
from serving.items import read_items
from serving.server.process import ServerProcess
from tfrec.errors import TfrecError

ROOT = Path(__file__).resolve().parents[1]

PROTOCOLS = ("rest", "grpc")
MAX_REQUESTS_PER_CLIENT = 100_000
WARMUP_REQUESTS = 10
STARTUP_SECONDS = 300


def user_histories(ids: list[str], count: int, length: int, seed: int) -> list[list[str]]:
    """``count`` histories of ``length`` distinct ids (fewer when the catalogue is smaller)."""
    rng = np.random.default_rng(seed)
    size = min(length, len(ids))
    return [rng.choice(ids, size=size, replace=False).tolist() for _ in range(count)]


def make_client(protocol: str, server: ServerProcess) -> RestClient | GrpcClient:
    return RestClient(server.rest_url) if protocol == "rest" else GrpcClient(server.grpc_target)


def run_load(server: ServerProcess, model: str, protocol: str, histories: list[list[str]], clients: int,
             seconds: float, k: int) -> dict:
    """``clients`` threads, each with its own connection, sending one history per request until time is up."""
    start_gate = threading.Barrier(clients, timeout=STARTUP_SECONDS)

    def one_client(index: int) -> tuple[list[float], list[str], float, float]:
        latencies, errors = [], []
        with make_client(protocol, server) as client:
            try:  # connect and warm up before the clock starts
                for i in range(WARMUP_REQUESTS):
                    client.predict(model, {"history": [histories[(index + i) % len(histories)]], "k": k})
            except ServingClientError as e:
                errors.append(f"warm-up: {e}")
            start_gate.wait()
            began = time.perf_counter()
            deadline = time.monotonic() + seconds
            for i in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    break
                history = histories[(index * 7919 + i) % len(histories)]
                sent = time.perf_counter()
                try:
                    ids = client.predict(model, {"history": [history], "k": k})["item_ids"]
                    if ids.shape != (1, k):
                        errors.append(f"answer of shape {ids.shape}, not (1, {k})")
                except ServingClientError as e:
                    errors.append(str(e))
                latencies.append(time.perf_counter() - sent)
            return latencies, errors, began, time.perf_counter()

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    elapsed = max(r[3] for r in results) - min(r[2] for r in results)
    latencies = np.array([x for r in results for x in r[0]]) * 1000
    errors = [e for r in results for e in r[1]]
    return {
        "requests": int(latencies.size),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
        "requests_per_s": round(latencies.size / elapsed, 1) if elapsed > 0 else None,
    }


def summarise(runs: list[dict]) -> dict:
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 2) if values else None

    return {
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "requests_per_s": median("requests_per_s"),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=Path("runs/online_retail/export"))
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per run (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    parser.add_argument("--history", type=int, default=20, help="item ids per request's history (default 20)")
    parser.add_argument("--users", type=int, default=1000, help="distinct histories to cycle through")
    parser.add_argument("-k", type=int, default=10, help="results per request (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = parser.parse_args()
    try:
        export = find_export(args.export)
    except TfrecError as e:
        sys.exit(f"bench/serve.py: {e}")
    models = [m for m in (RETRIEVE, RETRIEVE_SCANN) if (export / m).is_dir()]
    histories = user_histories(list(read_items(export)), args.users, args.history, args.seed)
    cases = [(model, protocol) for model in models for protocol in PROTOCOLS]

    load_before = os.getloadavg()
    server = ServerProcess(export)
    runs: dict[tuple[str, str], list[dict]] = {case: [] for case in cases}
    try:
        server.wait_until_serving(*models, timeout=STARTUP_SECONDS)
        for repeat in range(args.repeats):
            for model, protocol in cases:
                result = run_load(server, model, protocol, histories, args.clients, args.seconds, args.k)
                runs[(model, protocol)].append(result)
                print(f"run {repeat + 1}/{args.repeats} {model:<22} {protocol:<5} {result['requests']:>7} requests "
                      f"{result['errors']} errors  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
                      f"{result['requests_per_s']} /s", flush=True)
    finally:
        server.close()

    results = {model: {protocol: summarise(runs[(model, protocol)]) for protocol in PROTOCOLS} for model in models}
    report = {
        "benchmark": "serve",
        "export": str(export),
        "server": "tfrec serve (own process, 127.0.0.1)",
        "clients": args.clients,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "history_length": args.history,
        "k": args.k,
        "seed": args.seed,
        "models": results,
        "machine": machine(load_before, ("tensorflow", "grpcio")),
    }

    print(f"\n{args.clients} concurrent clients, {args.seconds:g} s per run, median of {args.repeats} runs, "
          f"histories of {args.history} ids, k={args.k}")
    print(f"{'model':<22}{'protocol':<10}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
    for model, by_protocol in results.items():
        for protocol, r in by_protocol.items():
            print(f"{model:<22}{protocol:<10}{r['requests']:>10,}{r['errors']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}"
                  f"{r['requests_per_s']:>9}")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
