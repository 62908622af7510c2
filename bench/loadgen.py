"""Load generators for bench/serve.py that cost the server's machine little CPU per request.

- REST: Debian's ``wrk`` (C, an event loop per thread) with ``wrk_predict.lua``, which builds
  TF Serving's REST predict bodies and counts status codes. Installed with apt when missing.
- gRPC: nghttp2's ``h2load`` (C, HTTP/2), sending one serialized request as a gRPC frame
  (installed with apt, package ``nghttp2-client``, when missing). It reads no gRPC status: an
  answer that failed carries no message, so the errors are the answers fewer than the bytes
  received make (every answer to the one request is the same size, measured before).
- gRPC, second mode: ``python bench/loadgen.py grpc ...`` in separate processes, each driving
  its clients as ``grpc.aio`` tasks that send requests serialized once in advance and do not
  parse the answers (only their status). It cycles through many histories, but costs the
  machine three to four times the CPU of ``h2load``. This module imports nothing heavy, so
  that those processes start fast and stay small.

Each run reports requests, errors, status codes and latency percentiles, and the CPU
seconds the load generator itself used (from the kernel's accounting of its processes),
so that a reader sees how much of the machine was left for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk_predict.lua"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
WRK_TIMEOUT_SECONDS = 10
CLIENTS_PER_PROCESS = 10
"""gRPC clients per load process. One process of 20 costs less CPU per request (about 0.21-0.27 ms against
0.35 ms for two of 10), but on a busy machine a single-threaded process gets one thread's share of the
cores and holds the load back; two keep up."""
_MARKER = "WRK_JSON "


def ensure_tool(command: str, package: str) -> str:
    """The path of ``command``, with Debian's ``package`` installed by apt (as root) when it is missing."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0:
        sys.exit(f"bench/serve.py needs {command}: sudo apt-get install -y {package}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
    return shutil.which(command) or sys.exit(f"bench/serve.py: apt installed {package} but {command} is not on PATH")


def ensure_wrk() -> str:
    return ensure_tool("wrk", "wrk")


def ensure_h2load() -> str:
    return ensure_tool("h2load", "nghttp2-client")


def _wait_with_cpu(process: subprocess.Popen, timeout: float) -> float:
    """Waits for ``process``; returns the CPU seconds it used (user + system), from ``wait4``."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            process.kill()
        time.sleep(0.05)


def run_wrk(url: str, path: str, ids_file: Path, clients: int, seconds: float, history: int, k: int,
            users: int, seed: int) -> dict:
    """``clients`` keep-alive connections sending predict requests for ``seconds``."""
    threads = max(1, min(clients, 2))
    command = [ensure_wrk(), "-t", str(threads), "-c", str(clients), "-d", f"{seconds:g}s",
               "--timeout", f"{WRK_TIMEOUT_SECONDS}s", "-s", str(WRK_SCRIPT), url,
               "--", str(ids_file), path, str(history), str(k), str(users), str(seed)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cpu = _wait_with_cpu(process, seconds + 60)
    output = process.stdout.read()
    lines = [line for line in output.splitlines() if line.startswith(_MARKER)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output[-2000:]}")
    result = json.loads(lines[-1][len(_MARKER):])
    return {
        "requests": result["requests"],
        "errors": result["not_2xx"] + result["socket_errors"] + result["timeouts"],
        "status_codes": result["status_codes"],
        "p50_ms": round(result["p50_ms"], 2),
        "p99_ms": round(result["p99_ms"], 2),
        "requests_per_s": round(result["requests"] / result["duration_s"], 1),
        "load_generator_cpu_s": round(cpu, 2),
        "seconds": result["duration_s"],
    }


# ------------------------------------------------------------------ gRPC


def grpc_frame(message: bytes) -> bytes:
    """A gRPC message on the wire: not compressed (0), its length (4 bytes, big-endian), the bytes."""
    return b"\0" + struct.pack(">I", len(message)) + message


def run_h2load(target: str, request: bytes, answer_bytes: int, clients: int, seconds: float) -> dict:
    """``clients`` HTTP/2 connections, one call in flight on each, sending ``request`` for ``seconds``.
    ``answer_bytes``: the size of the message answering ``request``."""
    with tempfile.TemporaryDirectory(prefix="tfrec-h2load-") as folder:
        body, log = Path(folder) / "request.grpc", Path(folder) / "requests.tsv"
        body.write_bytes(grpc_frame(request))
        command = [ensure_h2load(), "-c", str(clients), "-t", str(max(1, min(clients, 2))), "-m", "1",
                   "-D", f"{seconds:g}", "-H", "content-type: application/grpc", "-H", "te: trailers",
                   "-d", str(body), "--log-file", str(log), f"http://{target}{PREDICT_METHOD}"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        cpu = _wait_with_cpu(process, seconds + 60)
        output = process.stdout.read()
        counts = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                           r"(\d+) errored, (\d+) timeout", output)
        data = re.search(r"traffic: .*\((\d+)\) data", output)
        if process.returncode != 0 or not counts or not data:
            raise RuntimeError(f"h2load failed ({process.returncode}):\n{output[-2000:]}")
        rows = [line.split("\t") for line in log.read_text().splitlines()]
    done, succeeded, failed, errored, timeouts = (int(x) for x in counts.groups()[1:])
    answered = int(data.group(1)) // (answer_bytes + 5)  # each answer is one frame of the same size
    latencies = sorted(int(row[2]) / 1000 for row in rows)
    began = min(int(row[0]) for row in rows) / 1e6 if rows else 0.0
    ended = max(int(row[0]) + int(row[2]) for row in rows) / 1e6 if rows else 0.0
    return {
        "requests": done,
        "errors": failed + errored + timeouts + max(0, succeeded - answered),
        "status_codes": {"OK": min(answered, succeeded), "not OK": max(0, succeeded - answered),
                         "failed": failed + errored + timeouts},
        "p50_ms": round(_percentile(latencies, 50), 2) if latencies else None,
        "p99_ms": round(_percentile(latencies, 99), 2) if latencies else None,
        "requests_per_s": round(done / (ended - began), 1) if ended > began else None,
        "load_generator_cpu_s": round(cpu, 2),
        "seconds": round(ended - began, 3),
    }


def write_requests(path: Path, requests: list[bytes]) -> None:
    """Serialized requests, each after its 4-byte length."""
    path.write_bytes(b"".join(struct.pack("<I", len(r)) + r for r in requests))


def read_requests(path: Path) -> list[bytes]:
    data, requests, at = path.read_bytes(), [], 0
    while at < len(data):
        (size,) = struct.unpack_from("<I", data, at)
        requests.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return requests


def run_grpc(target: str, requests_file: Path, clients: int, seconds: float,
             clients_per_process: int = CLIENTS_PER_PROCESS) -> dict:
    """``clients`` gRPC clients in ``ceil(clients / clients_per_process)`` processes, for ``seconds``."""
    processes, first = [], 0
    while first < clients:
        count = min(clients_per_process, clients - first)
        # Files, not pipes: a process's answer (every latency) outgrows a pipe's buffer, which nobody reads
        # before the process ends.
        output, errors = tempfile.TemporaryFile(mode="w+"), tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        processes.append((subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "grpc", "--target", target, "--requests",
             str(requests_file), "--clients", str(count), "--first", str(first), "--seconds", str(seconds)],
            stdout=output, stderr=errors, text=True), output, errors))
        first += count
    results, cpu = [], 0.0
    for process, output, errors in processes:
        cpu += _wait_with_cpu(process, seconds + 120)
        with output, errors:
            output.seek(0)
            errors.seek(0)
            if process.returncode != 0:
                raise RuntimeError(f"gRPC load process failed ({process.returncode}):\n{errors.read()[-2000:]}")
            results.append(json.loads(output.read().strip().splitlines()[-1]))
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    codes: dict[str, int] = {}
    for r in results:
        for code, count in r["status_codes"].items():
            codes[code] = codes.get(code, 0) + count
    elapsed = max(r["ended"] for r in results) - min(r["began"] for r in results)
    return {
        "requests": len(latencies),
        "errors": sum(count for code, count in codes.items() if code != "OK"),
        "status_codes": codes,
        "p50_ms": round(_percentile(latencies, 50), 2) if latencies else None,
        "p99_ms": round(_percentile(latencies, 99), 2) if latencies else None,
        "requests_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else None,
        "load_generator_cpu_s": round(cpu, 2),
        "seconds": round(elapsed, 3),
    }


def _percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile of sorted values, interpolated as NumPy's default."""
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


async def _grpc_clients(target: str, requests: list[bytes], clients: int, first: int, seconds: float) -> dict:
    import grpc

    latencies: list[float] = []
    codes: dict[str, int] = {}

    async def one_client(index: int) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            predict = channel.unary_unary(PREDICT_METHOD)  # bytes in, bytes out: nothing (de)serialized here
            at = index * 7919
            await predict(requests[at % len(requests)], timeout=60)  # connect before the clock starts
            ready.append(index)
            await start.wait()
            while time.monotonic() < deadline:
                at += 1
                sent = time.perf_counter()
                try:
                    await predict(requests[at % len(requests)], timeout=60)
                    code = "OK"
                except grpc.aio.AioRpcError as e:
                    code = e.code().name
                latencies.append((time.perf_counter() - sent) * 1000)
                codes[code] = codes.get(code, 0) + 1

    start, ready = asyncio.Event(), []
    deadline = float("inf")
    tasks = [asyncio.create_task(one_client(first + i)) for i in range(clients)]
    for _ in range(1200):  # every channel connected and warm (at most a minute)
        if len(ready) == clients:
            break
        await asyncio.sleep(0.05)
    began = time.time()
    deadline = time.monotonic() + seconds
    start.set()
    await asyncio.gather(*tasks)
    return {"latencies_ms": latencies, "status_codes": codes, "began": began, "ended": time.time()}


def main() -> None:
    parser = argparse.ArgumentParser(description="gRPC load process of bench/serve.py")
    parser.add_argument("mode", choices=["grpc"])
    parser.add_argument("--target", required=True)
    parser.add_argument("--requests", type=Path, required=True, help="serialized PredictRequests (write_requests)")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--first", type=int, default=0, help="number of this process's first client")
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    result = asyncio.run(_grpc_clients(args.target, read_requests(args.requests), args.clients, args.first,
                                       args.seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
