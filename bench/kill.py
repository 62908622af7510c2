"""Killed mid-write: ``tfrec export`` and ``tfrec index --remove/--restore`` killed with SIGKILL at
random moments while ``tfrec serve`` polls the export folder.

Works on a copy of ``--export`` (never on the original). Times one clean run of each
command first, then ``--kills`` times: starts the next command (a new export version, or
removing ``--remove-count`` products, or restoring them), kills it with SIGKILL at a
seeded random moment within its clean run's time, and checks what the server serves
from ``2 x --poll-seconds + 1`` s later, once every model serves the same version (loading
takes each model a moment; at most ``--publish-timeout`` s): every model answers a request
and that version is a whole one (each model's folder of it is a complete SavedModel).
A run that ends before its moment is not counted as a kill; runs go on until ``--kills``
kills (at most twice as many runs). Then runs the same command again to its end (the next run): it must exit 0,
leave no temporary folder or journal behind, and the server must serve its version for
every model within ``--publish-timeout`` s.

Writes ``kills``, ``served_incomplete`` (must be 0), ``next_run_failed`` (must be 0) and one
record per kill.

    python bench/kill.py --output bench/results/kill.json [--kills 20] [--export runs/online_retail/export]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import ROOT, find_export, machine, write_json
from commands import Commands, model_paths, newest_on_disk

from serving.client import RestClient, ServingClientError
from serving.export import CANDIDATE, QUERY, RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR
from serving.items import read_items
from serving.publishing import JOURNAL_FILE
from serving.saved_model import is_version_dir
from serving.server.process import ServerProcess
from tfrec.fileio import TEMP_MARK


def request_for(model: str, item: str) -> dict:
    """A small valid request to each exported model."""
    return {RETRIEVE: {"history": [[item]], "k": 5}, RETRIEVE_SCANN: {"history": [[item]]},
            SIMILAR: {"item_id": [item], "k": 5}, SEARCH: {"query": ["red heart"], "k": 5},
            CANDIDATE: {"text": ["red heart"]}, QUERY: {"history": [[item]]}}[model]


def served_state(url: str, export: Path, item: str) -> dict:
    """What the server serves now: each model's version, whether each answered, and whether the versions
    make one whole version on disk."""
    models = sorted(p.name for p in export.iterdir() if p.is_dir() and not p.name.startswith("."))
    versions, failed = {}, []
    with RestClient(url, timeout=60) as client:
        for model in models:
            try:
                available = [s for s in client.status(model) if s["state"] == "AVAILABLE"]
                versions[model] = int(available[0]["version"]) if available else None
                client.predict(model, request_for(model, item))
            except ServingClientError as e:
                failed.append(f"{model}: {e}")
    served = set(versions.values())
    version = served.pop() if len(served) == 1 else None
    whole = version is not None and all(is_version_dir(str(export / m / str(version))) for m in models)
    return {"versions": versions, "failed": failed, "version": version,
            "complete": not failed and whole}


def leftovers(export: Path) -> list[str]:
    """Temporary folders and the publishing journal a finished run must not leave."""
    found = [str(p.relative_to(export)) for folder in (export, *export.iterdir()) if folder.is_dir()
             for p in folder.iterdir() if TEMP_MARK in p.name]
    return found + ([JOURNAL_FILE] if (export / JOURNAL_FILE).exists() else [])


def settled(url: str, export: Path, item: str, timeout: float, version: int | None = None) -> dict:
    """The served state once every model serves one whole version (``version``, if given), or when
    ``timeout`` runs out: loading a version takes each model a moment, so versions differ for a while."""
    deadline = time.monotonic() + timeout
    while True:
        state = served_state(url, export, item)
        if state["complete"] and version in (None, state["version"]) or time.monotonic() > deadline:
            return state
        time.sleep(0.5)


def kill_once(commands: Commands, name: str, at: float, server: ServerProcess, export: Path, item: str,
              args, log) -> dict:
    """One kill of command ``name`` ``at`` seconds after its start, the checks after it, and the next run."""
    before = newest_on_disk(export)
    process = commands.start(name, log)
    try:
        process.wait(timeout=at)
        killed = False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed = True
    time.sleep(2 * args.poll_seconds + 1)
    after_kill = settled(server.rest_url, export, item, args.publish_timeout)
    code, seconds = commands.run(name, log)
    newest = newest_on_disk(export)
    after_next = settled(server.rest_url, export, item, args.publish_timeout, newest)
    left = leftovers(export)
    next_ok = code == 0 and after_next["complete"] and after_next["version"] == newest and not left
    return {"command": name, "kill_at_s": round(at, 2), "killed": killed, "newest_before": before,
            "served_after_kill": after_kill["versions"], "failed_after_kill": after_kill["failed"][:3],
            "served_complete": after_kill["complete"], "next_run_exit": code, "next_run_s": round(seconds, 1),
            "next_run_version": newest, "served_after_next_run": after_next["versions"],
            "leftovers_after_next_run": left, "next_run_ok": next_ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", type=Path, default=Path("runs/online_retail/export"),
                        help="an export to copy (the copy is changed, never this folder)")
    parser.add_argument("--model", type=Path, default=Path("runs/online_retail/model"))
    parser.add_argument("--index", type=Path, default=Path("runs/online_retail/index"))
    parser.add_argument("--config", type=Path, default=None, help="default: MODEL/config.yaml")
    parser.add_argument("--kills", type=int, default=20, help="kills in all (default 20)")
    parser.add_argument("--remove-count", type=int, default=20, help="products removed and restored (default 20)")
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument("--publish-timeout", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="folder for the export's copy (default: a temp)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "kill.json")
    args = parser.parse_args()
    source = find_export(args.export)
    model, index = model_paths(args.model, args.index)
    config = args.config or model / "config.yaml"
    work = Path(tempfile.mkdtemp(prefix="tfrec-kill-", dir=args.work))
    export = work / "export"
    shutil.copytree(source, export)
    ids = list(read_items(export))
    rng = np.random.default_rng(args.seed)
    removed = rng.choice(ids, size=args.remove_count, replace=False).tolist()
    item = next(i for i in ids if i not in set(removed))
    commands = Commands(export, model, index, config, removed)
    load_before = os.getloadavg()
    records, clean = [], {}
    log_path = work / "commands.log"
    with open(log_path, "w") as log, ServerProcess(export, grpc=False, poll_seconds=args.poll_seconds) as server:
        server.wait_until_serving(RETRIEVE)
        for name in ("export", "remove", "restore"):  # the clean runs: how long each takes
            code, clean[name] = commands.run(name, log)
            if code != 0:
                sys.exit(f"bench/kill.py: the clean `{name}` run failed ({code}); see {log_path}")
        cycle = ["export", "remove", "restore"]
        while sum(r["killed"] for r in records) < args.kills and len(records) < 2 * args.kills:
            name = cycle[len(records) % len(cycle)]
            at = float(rng.uniform(0.05, 1.0)) * clean[name]
            record = kill_once(commands, name, at, server, export, item, args, log)
            records.append(record)
            print(f"{len(records):>3} {name:<8} at {at:6.1f}s ({'killed' if record['killed'] else 'ended first'}): "
                  f"served {'whole' if record['served_complete'] else 'INCOMPLETE'} "
                  f"{record['served_after_kill']}; next run exit {record['next_run_exit']}, "
                  f"{'ok' if record['next_run_ok'] else 'FAILED'}", flush=True)
        server_log = server.output()[-3000:]
    report = {
        "benchmark": "kill",
        "export": str(source),
        "commands": commands.described(),
        "clean_run_seconds": {name: round(s, 1) for name, s in clean.items()},
        "poll_seconds": args.poll_seconds,
        "seed": args.seed,
        "kills": sum(r["killed"] for r in records),
        "runs_started": len(records),
        "served_incomplete": sum(not r["served_complete"] for r in records),
        "next_run_failed": sum(not r["next_run_ok"] for r in records),
        "records": records,
        "server_log_tail": server_log,
        "machine": machine(load_before),
    }
    print(f"kills {report['kills']} of {len(records)} runs; served incomplete {report['served_incomplete']}; "
          f"next run failed {report['next_run_failed']}")
    write_json(args.output, report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
