"""Soak: ``tfrec serve`` under valid and hostile requests at once, on 127.0.0.1.

Starts the server over an export in a child process (``serving.server.process``), warms
it up, then runs ``--clients`` threads for ``--seconds``, each sending a seeded mix of
valid requests (REST and gRPC, every model) and hostile ones, one of every class the
server must refuse: a huge history, a batch over the limit, a body over the limit
(declared, never sent), a garbage Content-Length, a gRPC TensorProto declaring millions
of values, JSON nested 30,000 deep, NaN, an unknown id for similar items, inputs with
different batch sizes, ``:classify``, a version label. Beside them, ``--slow-clients``
connections trickle a byte every few seconds and must be dropped.

With ``--swap``, on a copy of the export, versions are published meanwhile (``swaps.py``:
a new version, 20 products removed, restored, a new version again) and every valid answer
is checked against them: ``stale_answers_after_poll``, ``removed_answers_after_poll`` (both
must be 0), ``rss_growth_ratio`` (server memory at the end over after warm-up). Writes
``bench/results/soak_swap.json``.

Reports: valid requests failed (must be 0), p50 / p99 latency of the valid ones, hostile
requests answered 4xx (must be all), slow clients dropped, and the server's resident
memory before, at its peak during the run, and after. Then sends each heavy request of
at most 1 MB alone and records how much it grew the server's peak memory. Bounded in
requests and time; loopback only. Prints a table and writes ``bench/results/soak.json``.

    python bench/soak.py [--export runs/online_retail/export] [--clients 20] [--seconds 60]
    python bench/soak.py --swap [--seconds 60] [--model runs/online_retail/model --index runs/online_retail/index]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from benchlib import ROOT, find_export, machine, write_json
from commands import Commands, model_paths, newest_on_disk
from swaps import GRACE_SECONDS, SCHEDULE, Answers, Swaps, check
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from serving.client import GrpcClient, RestClient, ServingClientError
from serving.export import CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR
from serving.items import read_items
from serving.server.process import ServerProcess
from tfrec.config import ServeConfig
from tfrec.errors import TfrecError

MAX_REQUESTS_PER_CLIENT = 50_000
HOSTILE_SHARE = 0.3
ONE_MB = 1 << 20
MB = 1e6


class Requests:
    """The valid and hostile requests of the mix, each a function of (rng, clients) returning (ok, what)."""

    def __init__(self, server: ServerProcess, ids: list[str], limits: ServeConfig, models: list[str]):
        self.server, self.ids, self.limits, self.models = server, ids, limits, models
        self.url = server.rest_url
        self.answers: Answers | None = None  # with --swap: every valid answer, its version and its ids
        self.valid = [self.retrieve_rest, self.similar_rest, self.search_rest, self.retrieve_grpc,
                      self.candidate_rest]
        if RETRIEVE_SCANN in models:
            self.valid.append(self.scann_rest)
        self.hostile = [self.huge_history, self.over_batch, self.declared_body, self.garbage_length,
                        self.grpc_declared, self.deep_json, self.nan, self.unknown_similar, self.batch_mismatch,
                        self.classify, self.label, self.malformed]

    def history(self, rng, length: int | None = None) -> list[str]:
        size = length or int(rng.integers(3, 30))
        return rng.choice(self.ids, size=min(size, len(self.ids)), replace=False).tolist()

    # -- valid: 200 with the expected shape

    def _predict(self, client, model: str, inputs: dict, rows: int, k: int | None = None) -> tuple[bool, str]:
        sent = time.monotonic()
        try:
            out, version = client.predict_versioned(model, inputs)
        except ServingClientError as e:
            return False, f"{model}: {e}"
        if self.answers is not None:
            self.answers.add(sent, model, version, out.get("item_ids"))
        first = next(iter(out.values()))
        ok = first.shape[0] == rows and (k is None or first.shape[1] == k)
        return ok, f"{model}: shape {first.shape}"

    def retrieve_rest(self, rng, clients) -> tuple[bool, str]:
        return self._predict(clients["rest"], RETRIEVE, {"history": [self.history(rng)], "k": 10}, 1, 10)

    def scann_rest(self, rng, clients) -> tuple[bool, str]:
        return self._predict(clients["rest"], RETRIEVE_SCANN, {"history": [self.history(rng)], "k": 10}, 1, 10)

    def similar_rest(self, rng, clients) -> tuple[bool, str]:
        return self._predict(clients["rest"], SIMILAR, {"item_id": self.history(rng, 2), "k": 5}, 2, 5)

    def search_rest(self, rng, clients) -> tuple[bool, str]:
        return self._predict(clients["rest"], SEARCH, {"query": ["red mug", "garden lamp"], "k": 5}, 2, 5)

    def candidate_rest(self, rng, clients) -> tuple[bool, str]:
        return self._predict(clients["rest"], CANDIDATE, {"text": ["a heart shaped tin"]}, 1)

    def retrieve_grpc(self, rng, clients) -> tuple[bool, str]:
        return self._predict(clients["grpc"], RETRIEVE, {"history": [self.history(rng)], "k": 10}, 1, 10)

    # -- hostile: 4xx (or a gRPC INVALID_ARGUMENT / NOT_FOUND)

    def _post(self, path: str, data: bytes) -> tuple[bool, str]:
        try:
            answer = requests.post(f"{self.url}{path}", data=data, timeout=60)
        except requests.RequestException as e:
            return False, f"{path}: {type(e).__name__}"
        return 400 <= answer.status_code < 500, f"{path}: {answer.status_code}"

    def _raw(self, request: bytes, what: str) -> tuple[bool, str]:
        host, port = self.url.rsplit("/", 1)[-1].split(":")
        try:
            with socket.create_connection((host, int(port)), timeout=60) as connection:
                connection.sendall(request)
                head = connection.recv(64)
        except OSError as e:
            return False, f"{what}: {type(e).__name__}"
        return head.startswith(b"HTTP/1.1 4"), f"{what}: {head[:12]!r}"

    def huge_history(self, rng, clients) -> tuple[bool, str]:
        model = RETRIEVE_SCANN if RETRIEVE_SCANN in self.models else RETRIEVE
        body = json.dumps({"inputs": {"history": [(self.ids * 40)[:100_000]]}}).encode()[:4 * ONE_MB]
        return self._post(f"/v1/models/{model}:predict", body)

    def over_batch(self, rng, clients) -> tuple[bool, str]:
        rows = [self.history(rng, 3)] * (self.limits.max_batch + 1)
        return self._post(f"/v1/models/{RETRIEVE}:predict", json.dumps({"inputs": {"history": rows}}).encode())

    def declared_body(self, rng, clients) -> tuple[bool, str]:
        size = self.limits.max_body_bytes * 10
        head = f"POST /v1/models/{RETRIEVE}:predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n\r\n"
        return self._raw(head.encode() + b"[" * 65536, "declared body")

    def garbage_length(self, rng, clients) -> tuple[bool, str]:
        length = rng.choice(["-1", "abc", "1e9", "+3"])
        head = f"POST /v1/models/{RETRIEVE}:predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: {length}\r\n\r\n"
        return self._raw(head.encode(), "Content-Length")

    def grpc_declared(self, rng, clients) -> tuple[bool, str]:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = RETRIEVE
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"a"],
                                       tensor_shape=tensor_shape_pb2.TensorShapeProto(
                                           dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in (1, 4_000_000)]))
        request.inputs["history"].CopyFrom(proto)
        try:
            clients["grpc"]._call(clients["grpc"].predictions.Predict, request)
        except ServingClientError as e:
            return e.code == "INVALID_ARGUMENT", f"gRPC declared tensor: {e.code}"
        return False, "gRPC declared tensor: answered"

    def deep_json(self, rng, clients) -> tuple[bool, str]:
        return self._post(f"/v1/models/{RETRIEVE}:predict",
                          b'{"inputs": {"history": ' + b"[" * 30_000 + b"]" * 30_000 + b"}}")

    def nan(self, rng, clients) -> tuple[bool, str]:
        body = f'{{"inputs": {{"query": ["mug"], "history": [["{self.ids[0]}"]], "history_weight": NaN}}}}'
        return self._post(f"/v1/models/{SEARCH}:predict", body.encode())

    def unknown_similar(self, rng, clients) -> tuple[bool, str]:
        return self._post(f"/v1/models/{SIMILAR}:predict", b'{"inputs": {"item_id": ["no-such-item"]}}')

    def batch_mismatch(self, rng, clients) -> tuple[bool, str]:
        body = {"inputs": {"query": ["mug", "lamp"], "history": [self.history(rng, 2)]}}
        return self._post(f"/v1/models/{SEARCH}:predict", json.dumps(body).encode())

    def classify(self, rng, clients) -> tuple[bool, str]:
        return self._post(f"/v1/models/{RETRIEVE}:classify", b'{"examples": [{"x": 1}]}')

    def label(self, rng, clients) -> tuple[bool, str]:
        return self._post(f"/v1/models/{RETRIEVE}/labels/stable:predict", b'{"inputs": {"history": [["a"]]}}')

    def malformed(self, rng, clients) -> tuple[bool, str]:
        return self._post(f"/v1/models/{RETRIEVE}:predict", b'{"inputs": {"history": [["a"]]')


class MemoryWatch:
    """Samples the server's resident memory every ``interval`` seconds while running."""

    def __init__(self, server: ServerProcess, interval: float = 0.2):
        self.server, self.interval = server, interval
        self.peak = server.rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.peak = max(self.peak, self.server.rss_bytes())
            except (OSError, TfrecError):
                return

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def reset_peak(server: ServerProcess) -> None:
    """Resets the kernel's peak-RSS mark (VmHWM) of the server (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
    Path(f"/proc/{server.process.pid}/clear_refs").write_text("5")


def slow_client(url: str, stop: threading.Event, every: float) -> dict:
    """One connection trickling a request's headers, a byte every ``every`` seconds, until dropped."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    dropped, held = 0, []
    while not stop.is_set():
        started = time.monotonic()
        with socket.create_connection((host, int(port)), timeout=every) as connection:
            try:
                connection.sendall(b"POST /v1/models/tfrec_retrieve:predict HTTP/1.1\r\n")
                while not stop.is_set():
                    try:
                        if connection.recv(1024) == b"":
                            break
                    except TimeoutError:
                        connection.sendall(b"X")
                else:
                    break
            except OSError:
                pass
        dropped += 1
        held.append(time.monotonic() - started)
    return {"dropped": dropped, "held_s": held}


def status_of(what: str) -> str:
    """The status a hostile request's description ends with: an HTTP code, a gRPC code, or what failed."""
    found = re.search(r"HTTP/1\.1 (\d{3})", what)
    return found.group(1) if found else what.rsplit(": ", 1)[-1]


def run_mix(mix: Requests, clients: int, seconds: float, seed: int,
            keep_going: Callable[[], bool] = lambda: False) -> dict:
    """``clients`` threads sending the mix for ``seconds`` (longer while ``keep_going()``)."""

    def one_client(index: int) -> dict:
        rng = np.random.default_rng(seed + index)
        valid_ms, valid_failed, hostile = [], [], {}
        with RestClient(mix.url, timeout=60) as rest, GrpcClient(mix.server.grpc_target, timeout=60) as grpc_client:
            clients_ = {"rest": rest, "grpc": grpc_client}
            deadline = time.monotonic() + seconds
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= deadline and not keep_going():
                    break
                if rng.random() < HOSTILE_SHARE:
                    request = mix.hostile[int(rng.integers(len(mix.hostile)))]
                    ok, what = request(rng, clients_)
                    counts = hostile.setdefault(request.__name__, {"sent": 0, "answered_4xx": 0, "other": [],
                                                                   "codes": {}})
                    counts["sent"] += 1
                    counts["answered_4xx"] += ok
                    code = status_of(what)
                    counts["codes"][code] = counts["codes"].get(code, 0) + 1
                    if not ok:
                        counts["other"].append(what)
                    continue
                request = mix.valid[int(rng.integers(len(mix.valid)))]
                sent = time.perf_counter()
                ok, what = request(rng, clients_)
                valid_ms.append((time.perf_counter() - sent) * 1000)
                if not ok:
                    valid_failed.append(what)
        return {"valid_ms": valid_ms, "valid_failed": valid_failed, "hostile": hostile}

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    latencies = np.array([x for r in results for x in r["valid_ms"]])
    hostile: dict[str, dict] = {}
    for r in results:
        for name, counts in r["hostile"].items():
            total = hostile.setdefault(name, {"sent": 0, "answered_4xx": 0, "other": [], "codes": {}})
            for code, count in counts["codes"].items():
                total["codes"][code] = total["codes"].get(code, 0) + count
            total["sent"] += counts["sent"]
            total["answered_4xx"] += counts["answered_4xx"]
            total["other"] = (total["other"] + counts["other"])[:3]
    failed = [f for r in results for f in r["valid_failed"]]
    return {
        "valid_requests": int(latencies.size),
        "valid_failed": len(failed),
        "valid_failed_examples": sorted(set(failed))[:5],
        "valid_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
        "valid_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
        "hostile_requests": sum(h["sent"] for h in hostile.values()),
        "hostile_answered_4xx": sum(h["answered_4xx"] for h in hostile.values()),
        "hostile_by_class": hostile,
    }


def heavy_requests(mix: Requests) -> dict[str, tuple[str, bytes]]:
    """The heaviest requests of at most 1 MB, per class: (path, body)."""
    limits, ids = mix.limits, mix.ids
    rng = np.random.default_rng(1)

    def fill(model: str, length: int, batch: int) -> tuple[str, bytes]:
        rows = [rng.choice(ids, size=length).tolist() for _ in range(batch)]
        body = json.dumps({"inputs": {"history": rows}}).encode()
        while len(body) > ONE_MB:  # fewer rows until it fits
            rows = rows[:-1]
            body = json.dumps({"inputs": {"history": rows}}).encode()
        return f"/v1/models/{model}:predict", body

    heavy = {f"{RETRIEVE}, full batch of longest histories": fill(RETRIEVE, limits.max_history, limits.max_batch)}
    if RETRIEVE_SCANN in mix.models:
        heavy[f"{RETRIEVE_SCANN}, full batch of longest histories"] = fill(RETRIEVE_SCANN, limits.max_history,
                                                                             limits.max_batch)
        heavy[f"{RETRIEVE_SCANN}, one history of 100,000 ids (refused)"] = (
            f"/v1/models/{RETRIEVE_SCANN}:predict",
            json.dumps({"inputs": {"history": [(ids * 40)[:100_000]]}}).encode()[:ONE_MB])
    texts = [" ".join(rng.choice(["red", "mug", "lamp", "heart", "tin"], size=200)) for _ in range(limits.max_batch)]
    heavy[f"{SEARCH}, full batch of 200-word queries"] = (
        f"/v1/models/{SEARCH}:predict", json.dumps({"inputs": {"query": texts}}).encode()[:ONE_MB])
    heavy["JSON nested 500,000 deep (refused)"] = (f"/v1/models/{RETRIEVE}:predict", b"[" * 500_000 + b"]" * 500_000)
    return heavy


def measure_heavy(server: ServerProcess, mix: Requests) -> list[dict]:
    rows = []
    for what, (path, body) in heavy_requests(mix).items():
        before = server.rss_bytes()
        reset_peak(server)
        answer = requests.post(f"{mix.url}{path}", data=body, timeout=300)
        rows.append({"request": what, "bytes": len(body), "status": answer.status_code,
                     "rss_before_mb": round(before / MB, 1), "peak_growth_mb": round((server.peak_rss_bytes()
                                                                                      - before) / MB, 1)})
    return rows


def run_swaps(args, source: Path, limits: ServeConfig, models: list[str]) -> dict:
    """``--swap``: the mix on a copy of the export while ``swaps.Swaps`` publishes versions into it; the
    answers checked against the versions (``swaps.check``) and the server's memory."""
    work = Path(tempfile.mkdtemp(prefix="tfrec-swap-"))
    export = work / "export"
    shutil.copytree(source, export)
    model, index = model_paths(args.model, args.index)
    settle = args.poll_seconds + GRACE_SECONDS
    try:
        with ServerProcess(export, poll_seconds=args.poll_seconds) as server, open(work / "commands.log", "w") as log:
            server.wait_until_serving(*models)
            mix = Requests(server, list(read_items(export)), limits, models)
            mix.answers = Answers()
            warm = run_mix(mix, 2, 5.0, args.seed + 10_000)  # traces every model's functions once
            if warm["valid_failed"]:
                sys.exit(f"bench/soak.py: warm-up failed: {warm['valid_failed_examples']}")
            removed = mix.answers.most_returned(args.remove_count)  # the products answers hold most
            mix.answers, first_version = Answers(), newest_on_disk(export)
            commands = Commands(export, model, index, args.config or model / "config.yaml", removed)
            swaps = Swaps(commands, export, settle + 1.0, log, tuple(args.schedule.split(",")))
            rss_before = server.rss_bytes()
            with MemoryWatch(server) as watch:
                started = time.monotonic()
                swaps.start()
                result = run_mix(mix, args.clients, args.seconds, args.seed,
                                 keep_going=lambda: not swaps.over_since(settle + 3.0))
                elapsed = time.monotonic() - started
            swaps.join()
            time.sleep(2.0)
            rss_after = server.rss_bytes()
            checked = check(mix.answers, swaps.published, first_version, removed, args.poll_seconds, started)
            log_tail = server.output()[-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"benchmark": "soak --swap", "export": str(source), "commands": commands.described(),
            "poll_seconds": args.poll_seconds, "grace_seconds": GRACE_SECONDS, "clients": args.clients,
            "seconds": round(elapsed, 1), "schedule": args.schedule, "removed": removed,
            "first_version": first_version,
            **{k: v for k, v in result.items() if k != "hostile_by_class"}, **checked,
            "rss_before_mb": round(rss_before / MB, 1), "rss_peak_mb": round(watch.peak / MB, 1),
            "rss_after_mb": round(rss_after / MB, 1), "rss_growth_ratio": round(rss_after / rss_before, 3),
            "server_log_tail": log_tail}


def print_swaps(report: dict) -> None:
    print(f"\n{report['clients']} clients for {report['seconds']:.0f} s while publishing: "
          + ", ".join(f"{p['command']} v{p['version']} (exit {p['exit']}, ended {p['ended']} s)"
                      for p in report["publishes"]))
    print(f"valid:   {report['valid_requests']:,} requests, {report['valid_failed']} failed "
          f"{report['valid_failed_examples'][:2]}, p50 {report['valid_p50_ms']} ms, p99 {report['valid_p99_ms']} ms")
    print(f"swaps {report['swaps']}; answers checked {report['answers_checked']:,}: stale after poll "
          f"{report['stale_answers_after_poll']} {report['stale_examples'][:2]}, removed after poll "
          f"{report['removed_answers_after_poll']} {report['removed_examples'][:2]}, empty slots "
          f"{report['empty_slot_answers']}; control: answers holding them before removal "
          f"{report['removed_answers_before_removal']}")
    print(f"RSS:     after warm-up {report['rss_before_mb']} MB, peak {report['rss_peak_mb']} MB, end "
          f"{report['rss_after_mb']} MB ({report['rss_growth_ratio']}x)")


def add_swap_arguments(parser: argparse.ArgumentParser) -> None:
    swap = parser.add_argument_group("--swap: versions published under load (on a copy of --export)")
    swap.add_argument("--swap", action="store_true",
                      help="publish a new version, remove products, restore them, publish again, while loaded")
    swap.add_argument("--model", type=Path, default=Path("runs/online_retail/model"))
    swap.add_argument("--index", type=Path, default=Path("runs/online_retail/index"))
    swap.add_argument("--config", type=Path, default=None, help="default: MODEL/config.yaml")
    swap.add_argument("--remove-count", type=int, default=20, help="products removed and restored (default 20)")
    swap.add_argument("--poll-seconds", type=float, default=ServeConfig().poll_seconds)
    swap.add_argument("--schedule", default=",".join(SCHEDULE),
                      help=f"the commands run, in order (default {','.join(SCHEDULE)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=Path("runs/online_retail/export"))
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load (default 60)")
    parser.add_argument("--slow-clients", type=int, default=8, help="connections trickling bytes (default 8)")
    parser.add_argument("--slow-every", type=float, default=5.0, help="seconds between their bytes (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None,
                        help="default: bench/results/soak.json (with --swap: soak_swap.json)")
    add_swap_arguments(parser)
    args = parser.parse_args()
    args.output = args.output or ROOT / "bench" / "results" / ("soak_swap.json" if args.swap else "soak.json")
    try:
        export = find_export(args.export)
    except TfrecError as e:
        sys.exit(f"bench/soak.py: {e}")
    limits = ServeConfig()
    models = [m for m in (RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH, CANDIDATE) if (export / m).is_dir()]
    load_before = os.getloadavg()
    if args.swap:
        report = run_swaps(args, export, limits, models) | {"machine": machine(load_before, ("tensorflow", "grpcio"))}
        print_swaps(report)
        write_json(args.output, report)
        return
    with ServerProcess(export) as server:
        server.wait_until_serving(*models)
        mix = Requests(server, list(read_items(export)), limits, models)
        warm = run_mix(mix, 2, 5.0, args.seed + 10_000)  # traces every model's functions once
        if warm["valid_failed"]:
            sys.exit(f"bench/soak.py: warm-up failed: {warm['valid_failed_examples']}")
        rss_before = server.rss_bytes()
        stop = threading.Event()
        with MemoryWatch(server) as watch, ThreadPoolExecutor(args.slow_clients + 1) as slow_pool:
            slow = [slow_pool.submit(slow_client, mix.url, stop, args.slow_every) for _ in range(args.slow_clients)]
            started = time.monotonic()
            result = run_mix(mix, args.clients, args.seconds, args.seed)
            elapsed = time.monotonic() - started
            stop.set()
            slow_results = [f.result() for f in slow]
        time.sleep(2.0)
        rss_after = server.rss_bytes()
        heavy = measure_heavy(server, mix)
        log_tail = server.output()[-2000:]
    held = [h for r in slow_results for h in r["held_s"]]  # connections the server dropped
    report = {
        "benchmark": "soak",
        "export": str(export),
        "server": "tfrec serve (own process, 127.0.0.1, default serve settings)",
        "limits": limits.model_dump(),
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "hostile_share": HOSTILE_SHARE,
        **{k: v for k, v in result.items()},
        "slow_clients": args.slow_clients,
        "slow_connections_dropped": len(held),
        "slow_connection_held_max_s": round(max(held), 1) if held else None,
        "rss_before_mb": round(rss_before / MB, 1),
        "rss_peak_mb": round(watch.peak / MB, 1),
        "rss_after_mb": round(rss_after / MB, 1),
        "rss_after_over_before": round(rss_after / rss_before, 3),
        "heavy_requests": heavy,
        "server_log_tail": log_tail,
        "machine": machine(load_before, ("tensorflow", "grpcio")),
    }
    print(f"\n{args.clients} clients for {elapsed:.0f} s ({HOSTILE_SHARE:.0%} hostile), {args.slow_clients} slow "
          f"connections, export {export}")
    print(f"valid:   {result['valid_requests']:,} requests, {result['valid_failed']} failed, "
          f"p50 {result['valid_p50_ms']} ms, p99 {result['valid_p99_ms']} ms")
    print(f"hostile: {result['hostile_requests']:,} requests, {result['hostile_answered_4xx']:,} answered 4xx")
    for name, counts in sorted(result["hostile_by_class"].items()):
        print(f"  {name:<18} {counts['sent']:>6,} sent {counts['answered_4xx']:>6,} 4xx  {counts['other'][:1]}")
    print(f"slow:    {len(held)} connections dropped, held at most {report['slow_connection_held_max_s']} s")
    print(f"RSS:     before {report['rss_before_mb']} MB, peak {report['rss_peak_mb']} MB, after "
          f"{report['rss_after_mb']} MB ({report['rss_after_over_before']}x)")
    print(f"{'heavy request (at most 1 MB)':<58}{'bytes':>10}{'status':>8}{'peak growth MB':>16}")
    for row in heavy:
        print(f"{row['request']:<58}{row['bytes']:>10,}{row['status']:>8}{row['peak_growth_mb']:>16}")
    write_json(args.output, report)


if __name__ == "__main__":
    main()
