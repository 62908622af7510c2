"""Killed mid-write: `tfrec export` and `tfrec index --remove` killed with SIGKILL while a server polls
the export folder. The server keeps serving one whole version, and the next run publishes cleanly.

A run killed between renaming two models' folders leaves a version that some models have and
others lack, under the publishing journal: the first test builds exactly that state (the
folders of a real next version, some of them moved into place) and checks that the server
does not serve it and the next run rolls it back. The second kills the real commands at
seeded moments while they write (``bench/kill.py`` kills them at random moments of their
whole run, 20 times and more).
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from serving.catalogue_changes import change_catalogue
from serving.client import RestClient
from serving.export import CANDIDATE, QUERY, RETRIEVE, RETRIEVE_SCANN, SEARCH, SIMILAR
from serving.items import read_items
from serving.publishing import JOURNAL_FILE
from serving.saved_model import is_version_dir
from serving.server import ANY_PORT, ModelServer
from tests.conftest import ROOT
from tfrec.fileio import TEMP_MARK, write_json

ALL_MODELS = (QUERY, CANDIDATE, RETRIEVE, RETRIEVE_SCANN, SIMILAR, SEARCH)
POLL = 0.2
SEED = 33


def request_for(model: str, item: str) -> dict:
    return {RETRIEVE: {"history": [[item]], "k": 5}, RETRIEVE_SCANN: {"history": [[item]]},
            SIMILAR: {"item_id": [item], "k": 5}, SEARCH: {"query": ["heart"], "k": 5},
            CANDIDATE: {"text": ["heart"]}, QUERY: {"history": [[item]]}}[model]


def served(server, item: str) -> dict[str, int]:
    """The version each model answers from; every model must answer."""
    with RestClient(server.rest_url, timeout=60) as client:
        return {model: client.predict_versioned(model, request_for(model, item))[1] for model in ALL_MODELS}


def settled(server, item: str, timeout: float = 120.0) -> dict[str, int]:
    """What the server serves once every model serves one version, twice in a row (else after ``timeout``,
    a guard, not a measure)."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        now = served(server, item)
        if now == last and len(set(now.values())) == 1:
            return now
        last = now
        time.sleep(max(POLL * 5, 1.0))
    return last


def assert_whole(export, versions: dict[str, int]) -> None:
    (version,) = set(versions.values())
    assert all(is_version_dir(str(export / model / str(version))) for model in ALL_MODELS), versions


def leftovers(export) -> list[str]:
    found = [p.name for folder in (export, *export.iterdir()) if folder.is_dir() for p in folder.iterdir()
             if TEMP_MARK in p.name]
    return found + ([JOURNAL_FILE] if (export / JOURNAL_FILE).exists() else [])


def tfrec(*args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "tfrec.app.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def export(export_dir, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(export_dir, out)
    return out


def test_a_version_whose_publishing_was_killed_is_not_served_and_the_next_run_rolls_it_back(export, tmp_path):
    ids = list(read_items(export))
    removed, item = ids[:3], ids[10]
    finished = tmp_path / "finished"  # the same change run to its end elsewhere: the folders the killed run had
    shutil.copytree(export, finished)
    assert change_catalogue(finished, remove=removed)["version"] == 2
    for model in (RETRIEVE, SIMILAR):  # renamed into place before the kill; the other four were not
        shutil.copytree(finished / model / "2", export / model / "2")
    write_json(export / JOURNAL_FILE, {"version": 2, "targets": {m: str(export / m / "2") for m in ALL_MODELS}})
    (export / QUERY / f".2{TEMP_MARK}killed").mkdir()  # a staging folder the kill left

    with ModelServer(export, port=ANY_PORT, grpc_port=0, poll_seconds=POLL, log=lambda _: None) as server:
        time.sleep(POLL * 5)
        before = settled(server, item)
        assert before == {model: 1 for model in ALL_MODELS}  # the partial version 2 stays unserved
        loaded = {name: servable.loaded for name, servable in server.registry.serving().items()}

        result = change_catalogue(export, remove=removed)  # the next run
        assert result["version"] == 2 and result["removed"] == sorted(removed)
        assert leftovers(export) == []
        after = settled(server, item)
        assert after == {model: 2 for model in ALL_MODELS}
        assert_whole(export, after)
        now = server.registry.serving()  # the models that return no ids are the same files: not loaded again
        assert now[QUERY].loaded is loaded[QUERY] and now[CANDIDATE].loaded is loaded[CANDIDATE]
        assert now[RETRIEVE].loaded is not loaded[RETRIEVE] and now[SEARCH].loaded is not loaded[SEARCH]
        with RestClient(server.rest_url) as client:
            answer = client.predict(RETRIEVE, {"history": [ids[:5]], "k": len(ids) - len(removed)})["item_ids"][0]
        assert not set(removed) & set(answer) and "" not in answer


def staging(export) -> bool:
    """Whether a run is writing a version now: a hidden temporary folder beside a model's versions."""
    return any(TEMP_MARK in p.name for model in export.iterdir() if model.is_dir() for p in model.iterdir())


def kill_while_staging(command: list, export, delay: float) -> bool:
    """Starts ``command``, kills it with SIGKILL ``delay`` seconds after it starts writing a version;
    whether it was still running then."""
    process = tfrec(*command)
    while process.poll() is None and not staging(export):
        time.sleep(0.01)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def run(command: list) -> None:
    process = tfrec(*command)
    _, errors = process.communicate(timeout=900)
    assert process.returncode == 0, errors[-3000:]


def test_commands_killed_while_writing_leave_a_whole_version_served_and_the_next_run_publishes(
        export, trained_model_dir, index_dir):
    ids = list(read_items(export))
    item = ids[10]
    commands = {
        "remove": ["index", "--export", export, "--remove", ",".join(ids[:4]), "-q"],
        "export": ["export", "--config", trained_model_dir / "config.yaml", "--model", trained_model_dir,
                   "--index", index_dir, "--output", export, "--force", "-q"],
    }
    delays = np.random.default_rng(SEED).uniform(0.0, 2.0, size=len(commands))  # seeded moments in the write
    with ModelServer(export, port=ANY_PORT, grpc_port=0, poll_seconds=POLL, log=lambda _: None) as server:
        for (name, command), delay in zip(commands.items(), delays):
            before = settled(server, item)
            assert kill_while_staging(command, export, delay), f"{name} ended before it was killed"
            time.sleep(POLL * 5)
            after_kill = settled(server, item)
            assert after_kill == before  # the version in service keeps answering, whole
            assert_whole(export, after_kill)
            run(command)  # the next run
            assert leftovers(export) == []
            newest = max(int(v.name) for v in (export / RETRIEVE).iterdir() if v.name.isdigit())
            after = settled(server, item)
            assert after == {model: newest for model in ALL_MODELS}
            assert_whole(export, after)
