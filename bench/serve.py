"""Serving throughput and latency: ``tfrec serve`` with and without batching, on 127.0.0.1.

Starts two servers over an export, each in its own process: one with the default
``serve.batching`` settings (plus ``--batching-set``), one with batching off. Then, for
``tfrec_retrieve`` and ``tfrec_retrieve_scann`` (when exported), over REST and gRPC, with
each number of ``--clients``, runs a load for ``--seconds``: every request carries one
user's history of ``--history`` item ids (``--users`` distinct histories drawn from the
export's ``items.tsv`` with a fixed seed) and ``k``. The cases alternate within each of
``--repeats`` rounds, so that load from other processes falls on all of them alike; the
medians are reported.

The load generators cost the machine little (``bench/loadgen.py``): ``wrk`` with a Lua
script for REST, nghttp2's ``h2load`` sending the first history's request for gRPC (both
installed with apt when missing); ``--grpc-load python`` uses ``grpc.aio`` processes
cycling through every history instead, at three to four times the CPU. Each case reports
the CPU share the load generator and the server used (CPU seconds over wall seconds x
cores), so a reader sees what was left for the server.

``--hostile`` then runs the soak's mix (``bench/soak.py``: 30% hostile requests, one of
every class the server must refuse) against the batching server, and reports each
class's status codes and the valid requests that failed.

Writes ``models.<model>.<rest|grpc>.<batching|no_batching>.clients_<n>`` with
``requests_per_s``, ``p50_ms``, ``p99_ms``, ``errors``, ``requests``,
``load_generator_cpu_share``, ``server_cpu_share`` (and each run).

    python bench/serve.py --export runs/online_retail/export --output bench/results/serve.json [--hostile]
    python bench/serve.py --seconds 3 --repeats 1                       # a smoke run
    python bench/serve.py --sweep max_batch_size=16,32,64 --sweep batch_timeout_micros=0,1000 \
        --output bench/results/serve_batching_sweep.json                 # choosing serve.batching's defaults
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import find_export, machine, write_json
from loadgen import (
    CLIENTS_PER_PROCESS,
    PREDICT_METHOD,
    ensure_h2load,
    ensure_wrk,
    read_requests,
    run_grpc,
    run_h2load,
    run_wrk,
    write_requests,
)

from serving.client import RestClient
from serving.export import RETRIEVE, RETRIEVE_SCANN
from serving.items import read_items
from serving.server.process import ServerProcess
from tfrec.errors import TfrecError

ROOT = Path(__file__).resolve().parents[1]

PROTOCOLS = ("rest", "grpc")
MODES = ("batching", "no_batching")
STARTUP_SECONDS = 300
WARMUP_REQUESTS = 20
SUMMARISED = ("requests_per_s", "p50_ms", "p99_ms", "load_generator_cpu_share", "server_cpu_share")


def user_histories(ids: list[str], count: int, length: int, seed: int) -> list[list[str]]:
    """``count`` histories of ``length`` distinct ids (fewer when the catalogue is smaller)."""
    rng = np.random.default_rng(seed)
    size = min(length, len(ids))
    return [rng.choice(ids, size=size, replace=False).tolist() for _ in range(count)]


def grpc_requests(model: str, histories: list[list[str]], k: int) -> list[bytes]:
    """Serialized ``PredictRequest``s, one history each."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    serialized = []
    for history in histories:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["history"].CopyFrom(tf.make_tensor_proto([history], dtype=tf.string))
        request.inputs["k"].CopyFrom(tf.make_tensor_proto(k, dtype=tf.int32))
        serialized.append(request.SerializeToString())
    return serialized


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_up(server: ServerProcess, models: list[str], histories: list[list[str]], k: int) -> None:
    """A few requests to each model, one and several histories each, before any clock runs."""
    with RestClient(server.rest_url, timeout=120) as client:
        for model in models:
            for i in range(WARMUP_REQUESTS):
                client.predict(model, {"history": histories[i:i + 1 + i % 4], "k": k})


def run_case(server: ServerProcess, model: str, protocol: str, clients: int, args: argparse.Namespace,
             files: dict) -> dict:
    h2load = protocol == "grpc" and args.grpc_load == "h2load"
    if h2load:  # measured before the server's CPU clock starts: one call, not part of the load
        request = read_requests(files[model])[0]
        answer_bytes = answer_size(server, request)
    before = cpu_seconds(server.process.pid)
    if protocol == "rest":
        result = run_wrk(server.rest_url, f"/v1/models/{model}:predict", files["ids"], clients, args.seconds,
                         args.history, args.k, args.users, args.seed)
    elif h2load:
        result = run_h2load(server.grpc_target, request, answer_bytes, clients, args.seconds)
    else:
        result = run_grpc(server.grpc_target, files[model], clients, args.seconds, args.grpc_clients_per_process)
    used = cpu_seconds(server.process.pid) - before
    capacity = result["seconds"] * (os.cpu_count() or 1)
    result["load_generator_cpu_share"] = round(result["load_generator_cpu_s"] / capacity, 3)
    result["server_cpu_share"] = round(used / capacity, 3)
    return result


def answer_size(server: ServerProcess, request: bytes) -> int:
    """The bytes of the message answering ``request`` over gRPC (``h2load`` counts answers by them)."""
    import grpc

    with grpc.insecure_channel(server.grpc_target) as channel:
        return len(channel.unary_unary(PREDICT_METHOD)(request, timeout=60))


def summarise(runs: list[dict]) -> dict:
    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    codes: dict[str, int] = {}
    for run in runs:
        for code, count in run["status_codes"].items():
            codes[str(code)] = codes.get(str(code), 0) + count
    return {"requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "status_codes": codes, **{key: median(key) for key in SUMMARISED}, "runs": runs}


def prepare_files(folder: Path, export: Path, models: list[str], histories: list[list[str]], k: int) -> dict:
    ids = list(read_items(export))
    (folder / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    files = {"ids": folder / "ids.txt"}
    for model in models:
        files[model] = folder / f"{model}.requests"
        write_requests(files[model], grpc_requests(model, histories, k))
    return files


def served_folder(folder: Path, export: Path, models: list[str]) -> Path:
    """An export folder holding only ``models`` (links to the export's), so that the servers load no more."""
    served = folder / "export"
    served.mkdir()
    for model in models:
        (served / model).symlink_to((export / model).resolve(), target_is_directory=True)
    return served


def measure(servers: dict[str, ServerProcess], models: list[str], args: argparse.Namespace, files: dict) -> dict:
    cases = [(model, protocol, mode, clients) for model in models for protocol in PROTOCOLS for clients in args.clients
             for mode in MODES]
    runs: dict[tuple, list[dict]] = {case: [] for case in cases}
    for repeat in range(args.repeats):
        for case in cases:
            model, protocol, mode, clients = case
            result = run_case(servers[mode], model, protocol, clients, args, files)
            runs[case].append(result)
            print(f"run {repeat + 1}/{args.repeats} {model:<21} {protocol:<4} {mode:<11} {clients:>3} clients "
                  f"{result['requests']:>7} requests {result['errors']} errors  p50 {result['p50_ms']} ms  "
                  f"p99 {result['p99_ms']} ms  {result['requests_per_s']} /s  load generator "
                  f"{result['load_generator_cpu_share']:.0%}, server {result['server_cpu_share']:.0%} of the CPUs",
                  flush=True)
    results: dict = {}
    for (model, protocol, mode, clients), case_runs in runs.items():
        results.setdefault(model, {}).setdefault(protocol, {}).setdefault(mode, {})[f"clients_{clients}"] = \
            summarise(case_runs)
    return results


def hostile(server: ServerProcess, export: Path, models: list[str], args: argparse.Namespace) -> dict:
    """The soak's mix (30% hostile) against the batching server."""
    from soak import Requests, run_mix

    from serving.export import CANDIDATE, SEARCH, SIMILAR
    from tfrec.config import ServeConfig

    served = [m for m in (*models, SIMILAR, SEARCH, CANDIDATE) if (export / m).is_dir()]
    mix = Requests(server, list(read_items(export)), ServeConfig(), served)
    run_mix(mix, 2, 5.0, args.seed + 10_000)  # as the soak: every model's first calls before the clock
    result = run_mix(mix, max(args.clients), args.hostile_seconds, args.seed)
    print(f"hostile mix: {result['valid_requests']:,} valid requests, {result['valid_failed']} failed; "
          f"{result['hostile_requests']:,} hostile, {result['hostile_answered_4xx']:,} answered 4xx")
    for name, counts in sorted(result["hostile_by_class"].items()):
        print(f"  {name:<18} {counts['sent']:>6,} sent  status codes {counts['codes']}")
    return result


def sweep(export: Path, models: list[str], args: argparse.Namespace, files: dict, histories: list[list[str]]) -> dict:
    """Every combination of the ``--sweep`` values, each on its own batching server, against batching off:
    the first model over REST and gRPC, one and the most clients. ``best``: the combination whose
    slower protocol is fastest at the most clients, among those keeping p99 within ``--p99-ms`` there
    and the one-client p50 within ``--lone-ms`` of batching off's."""
    grid = [dict(zip([k for k, _ in args.sweep], values))
            for values in itertools.product(*[v.split(",") for _, v in args.sweep])]
    model, most = models[0], max(args.clients)
    cases = [(protocol, clients) for protocol in PROTOCOLS for clients in sorted({1, most})]
    trials = [("no_batching", {"batching.enabled": "false"}),
              *((f"{i}", {f"batching.{k}": v for k, v in combo.items()}) for i, combo in enumerate(grid))]
    results = {}
    for name, settings in trials:
        with ServerProcess(export, settings) as server:
            server.wait_until_serving(model, timeout=STARTUP_SECONDS)
            warm_up(server, [model], histories, args.k)
            runs = {case: [run_case(server, model, *case, args, files) for _ in range(args.repeats)]
                    for case in cases}
        results[name] = {"settings": settings, **{f"{p}_clients_{c}": summarise(r) for (p, c), r in runs.items()}}
        print(f"sweep {name}: {settings}: " + ", ".join(f"{key} {r['requests_per_s']}/s p50 {r['p50_ms']} p99 "
                                                         f"{r['p99_ms']}" for key, r in results[name].items()
                                                         if key != "settings"), flush=True)
    lone = {p: results["no_batching"][f"{p}_clients_1"]["p50_ms"] for p in PROTOCOLS}
    fits = [name for name in results if name != "no_batching" and all(
        results[name][f"{p}_clients_{most}"]["p99_ms"] <= args.p99_ms
        and results[name][f"{p}_clients_1"]["p50_ms"] <= lone[p] + args.lone_ms for p in PROTOCOLS)]
    best = max(fits, key=lambda n: min(results[n][f"{p}_clients_{most}"]["requests_per_s"] for p in PROTOCOLS),
               default=None)
    return {"model": model, "trials": results, "best": results[best]["settings"] if best else None}


def print_table(results: dict, args: argparse.Namespace) -> None:
    print(f"\n{args.seconds:g} s per run, median of {args.repeats} runs, histories of {args.history} ids, k={args.k}")
    print(f"{'model':<22}{'protocol':<9}{'batching':<13}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'errors':>8}{'loadgen CPU':>13}{'server CPU':>12}")
    for model, by_protocol in results.items():
        for protocol, by_mode in by_protocol.items():
            for mode, by_clients in by_mode.items():
                for clients, r in by_clients.items():
                    print(f"{model:<22}{protocol:<9}{mode:<13}{clients.split('_')[1]:>8}{r['requests_per_s']:>9}"
                          f"{r['p50_ms']:>9}{r['p99_ms']:>9}{r['errors']:>8}{r['load_generator_cpu_share']:>13.0%}"
                          f"{r['server_cpu_share']:>12.0%}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=Path("runs/online_retail/export"))
    parser.add_argument("--models", type=lambda t: t.split(","), default=[RETRIEVE, RETRIEVE_SCANN],
                        help=f"comma-separated models to load (default {RETRIEVE},{RETRIEVE_SCANN}, when exported)")
    parser.add_argument("--clients", type=lambda t: [int(c) for c in t.split(",")], default=[1, 20],
                        help="comma-separated numbers of concurrent clients (default 1,20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of load per run (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported (default 3)")
    parser.add_argument("--history", type=int, default=20, help="item ids per request's history (default 20)")
    parser.add_argument("--users", type=int, default=1000, help="distinct histories to cycle through")
    parser.add_argument("-k", type=int, default=10, help="results per request (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grpc-load", choices=("h2load", "python"), default="h2load",
                        help="gRPC load generator: h2load (C, the first history's request) or grpc.aio processes "
                             "(every history, more CPU); default h2load")
    parser.add_argument("--grpc-clients-per-process", type=int, default=CLIENTS_PER_PROCESS,
                        help=f"gRPC clients per load process (default {CLIENTS_PER_PROCESS})")
    parser.add_argument("--batching-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a serve.batching setting for the batching server, e.g. batch_timeout_micros=500")
    parser.add_argument("--hostile", action="store_true", help="also run the soak's hostile mix with batching on")
    parser.add_argument("--hostile-seconds", type=float, default=30.0, help="seconds of the hostile mix")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                        type=lambda t: tuple(t.split("=", 1)),
                        help="instead of the cases: try each combination of these serve.batching values "
                             "(e.g. --sweep max_batch_size=16,32,64 --sweep batch_timeout_micros=0,1000)")
    parser.add_argument("--p99-ms", type=float, default=50.0, help="--sweep: the p99 a setting must keep")
    parser.add_argument("--lone-ms", type=float, default=2.0,
                        help="--sweep: how much slower than batching off a lone request's p50 may be")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        export = find_export(args.export)
    except TfrecError as e:
        sys.exit(f"bench/serve.py: {e}")
    ensure_wrk()
    if args.grpc_load == "h2load":
        ensure_h2load()
    models = [m for m in args.models if (export / m).is_dir()]
    histories = user_histories(list(read_items(export)), args.users, args.history, args.seed)
    tuned = dict(setting.split("=", 1) for setting in args.batching_set)
    settings = {"batching": {f"batching.{key}": value for key, value in tuned.items()},
                "no_batching": {"batching.enabled": "false"}}
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tfrec-bench-serve-") as folder:
        files = prepare_files(Path(folder), export, models, histories, args.k)
        if args.sweep:
            found = sweep(served_folder(Path(folder), export, models), models, args, files, histories)
            print(f"best batching settings: {found['best']}")
            write_json(args.output, {"benchmark": "serve_batching_sweep", "export": str(export),
                                     "clients": args.clients, "seconds_per_run": args.seconds,
                                     "repeats": args.repeats, "p99_ms": args.p99_ms, "lone_ms": args.lone_ms,
                                     **found, "machine": machine(load_before, ("tensorflow", "grpcio"))})
            return
        served = export if args.hostile else served_folder(Path(folder), export, models)  # the mix asks every model
        servers = {mode: ServerProcess(served, settings[mode]) for mode in MODES}
        try:
            for server in servers.values():
                server.wait_until_serving(*models, timeout=STARTUP_SECONDS)
                warm_up(server, models, histories, args.k)
            results = measure(servers, models, args, files)
            hostile_result = hostile(servers["batching"], export, models, args) if args.hostile else None
        finally:
            for server in servers.values():
                server.close()
    report = {
        "benchmark": "serve",
        "export": str(export),
        "server": "tfrec serve (own process, 127.0.0.1), one with serve.batching, one with batching off",
        "batching_settings": tuned or "defaults",
        "load_generators": {"rest": "wrk (bench/wrk_predict.lua)",
                            "grpc": "h2load, the first history's request" if args.grpc_load == "h2load" else
                                    f"grpc.aio processes (bench/loadgen.py), {args.grpc_clients_per_process} "
                                    f"clients each"},
        "clients": args.clients,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "history_length": args.history,
        "k": args.k,
        "seed": args.seed,
        "models": results,
        **({"hostile": hostile_result} if hostile_result is not None else {}),
        "wall_seconds": round(time.monotonic() - started, 1),
        "machine": machine(load_before, ("tensorflow", "grpcio")),
    }
    print_table(results, args)
    write_json(args.output, report)


if __name__ == "__main__":
    main()
