"""``tfrec verify``: does each exported model serve where its users deploy it?

For every model of an export folder (its newest version, or the version given), a fresh
process that imports only TensorFlow (plus TF-Text or ScaNN when a graph needs their ops;
one process for all the models, each in a graph of its own) loads the SavedModel twice:
through the TF1 session loader, the graph-mode path of TF Serving, ``saved_model_cli run``
and the C, C++, Java and Go APIs; and through ``tf.saved_model.load``. It sends each the
same requests, one with only the main input and one with every option, and reports per
model:

- loads in graph mode;
- answers with defaults (only the main input fed, in graph mode);
- same results as eager (identical ids, scores within ``SCORE_TOLERANCE``);
- the ops beyond core TensorFlow the saved graph needs, read from the graph;
- the oldest stock TF Serving that can serve it, or that it needs ScaNN's ops.

``tfrec export`` runs the same check on each new version before it is moved into place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serving.saved_model import DEFAULT_SIGNATURE, newest_version, read_saved_model, serving_meta_graph
from tfrec import fileio
from tfrec.errors import TfrecError
from tfrec.layout import MODEL_CARD_FILE

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("verify_child.py")
SCORE_TOLERANCE = 1e-5
LINKED_BY_TF_SERVING = {"tensorflow_text": "2.20.0"}
"""Op modules whose ops stock TF Serving links, with the first release that has every op
this project's models use (TF-Text's ``RoundRobinTrim`` came with 2.20.0)."""
CHILD_TIMEOUT_SECONDS = 600


@dataclass
class ModelCheck:
    """What ``tfrec verify`` found for one model."""

    name: str
    path: str
    loads_in_graph_mode: bool = False
    answers_with_defaults: bool = False
    same_as_eager: bool = False
    custom_ops: dict[str, str | None] = field(default_factory=dict)
    tf_serving: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.loads_in_graph_mode and self.answers_with_defaults and self.same_as_eager and not self.problems


def sample_requests(signature_def, item_ids: list[str], texts: list[str], num_categorical: int,
                    category: str = "") -> list[dict]:
    """Two requests for a signature: its required inputs alone, then with every optional input.

    Values come from the catalogue (``item_ids``, ``texts``); an option gets a value that
    changes the answer where it can (a smaller ``k``, an excluded id, the history excluded).
    """
    batch = 2
    ids = (list(item_ids) * 4)[:6] or ["unknown"]
    texts = (list(texts) * 2)[:batch] or ["an item"]
    values = {
        "history": [ids[:4], [""] * 2 + ids[4:6]],
        "item_id": ids[:batch],
        "text": texts,
        "query": texts,
        "k": 3,
        "exclude_history": True,
        "exclude_ids": ids[:1],
        "category": category,
        "categories": [[""] * num_categorical for _ in range(batch)],
        "history_weight": 0.25,
    }
    required = {key: values[key] for key in signature_def.inputs if key not in signature_def.defaults}
    every = {key: values[key] for key in signature_def.inputs}
    unknown = set(every) - set(values)
    if unknown:
        raise TfrecError(f"no sample value for input(s) {sorted(unknown)}")
    return [required, every]


def run_child(version_dir: str | Path, requests: list[dict]) -> dict:
    """Runs ``verify_child.py`` on one version in a fresh interpreter; returns its answer."""
    return run_children({version_dir: requests})[0]


def run_children(jobs: dict[str | Path, list[dict]]) -> list[dict]:
    """Runs ``verify_child.py`` on several versions (folder -> requests) in one fresh
    interpreter; returns their answers, in order."""
    payload = {"models": [{"path": str(path), "requests": requests} for path, requests in jobs.items()]}
    done = subprocess.run([sys.executable, str(CHILD)], input=json.dumps(payload),
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise TfrecError(f"{', '.join(map(str, jobs))}: the checking process failed (exit {done.returncode}): {tail}")
    return json.loads(lines[-1])["models"]


def same_answers(graph: dict, eager: dict) -> str | None:
    """``None`` when two answers agree (ids identical, numbers within tolerance), else what differs."""
    if set(graph) != set(eager):
        return f"outputs differ: {sorted(graph)} vs {sorted(eager)}"
    for key in graph:
        a, b = np.asarray(graph[key]), np.asarray(eager[key])
        if a.shape != b.shape:
            return f"{key}: shape {a.shape} vs {b.shape}"
        if a.dtype.kind in "fc":
            if not np.allclose(a, b, rtol=0, atol=SCORE_TOLERANCE):
                return f"{key}: largest difference {np.max(np.abs(a - b)):.2e}"
        elif not np.array_equal(a, b):
            return f"{key}: values differ"
    return None


def tf_serving_requirement(version_dir: str | Path, custom_ops: dict[str, str | None]) -> str:
    """The oldest stock TF Serving that serves this SavedModel, or what it needs instead."""
    written_by = serving_meta_graph(read_saved_model(version_dir)).meta_info_def.tensorflow_version
    modules = set(custom_ops.values())
    unknown = sorted(op for op, module in custom_ops.items() if module is None)
    if unknown:
        return f"needs ops no known module registers: {', '.join(unknown)}"
    if modules - set(LINKED_BY_TF_SERVING):
        return "needs a TF Serving built with ScaNN's ops (stock TF Serving lacks them; tfrec serve has them)"
    minimum = max([written_by, *(LINKED_BY_TF_SERVING[m] for m in modules)], key=_version_key)
    return f">= {minimum}"


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-")[0].split(".")[:3] if part.isdigit())


def check_version(name: str, version_dir: str | Path, item_ids: list[str], texts: list[str],
                  num_categorical: int = 0, category: str = "") -> ModelCheck:
    """Checks one version folder of model ``name`` (see the module docstring)."""
    return check_versions({name: version_dir}, item_ids, texts, num_categorical, category)[0]


def check_versions(versions: dict[str, str | Path], item_ids: list[str], texts: list[str], num_categorical: int = 0,
                   category: str = "", probes: dict[str, list[dict]] | None = None,
                   never_returned: Collection[str] = ()) -> list[ModelCheck]:
    """Checks version folders (model name -> folder) in one fresh process: for each, what
    :func:`check_version` finds, at the cost of one interpreter start for all of them.

    Args:
        probes: more requests per model name, sent after the two sample requests.
        never_returned: item ids no output of any request may hold (in graph mode or eagerly).
    """
    requests = {}
    for name, version_dir in versions.items():
        signature_def = serving_meta_graph(read_saved_model(version_dir)).signature_def[DEFAULT_SIGNATURE]
        requests[name] = [*sample_requests(signature_def, item_ids, texts, num_categorical, category),
                          *(probes or {}).get(name, [])]
    with contextlib.ExitStack() as stack:  # the fresh process may not see this one's filesystems
        local = {stack.enter_context(fileio.local_copy(path)): requests[name] for name, path in versions.items()}
        answers = run_children(local)
    checks = []
    for (name, version_dir), answer in zip(versions.items(), answers):
        check = _judge(ModelCheck(name, str(version_dir)), version_dir, answer)
        check.problems.extend(_returned(answer, set(never_returned)))
        checks.append(check)
    return checks


def _returned(answer: dict, forbidden: set[str]) -> list[str]:
    """A problem for each request whose outputs hold a ``forbidden`` id."""
    if not forbidden:
        return []
    problems = []
    for mode in ("graph", "eager"):
        for i, outputs in enumerate(answer.get(mode) or []):
            found = sorted({value for output in outputs.values() for value in _strings(output)} & forbidden)
            if found:
                problems.append(f"{mode} mode, request {i}: returned removed item(s) {found[:5]}")
    return problems


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _judge(check: ModelCheck, version_dir: str | Path, answer: dict) -> ModelCheck:
    """Fills ``check`` from the checking process's ``answer`` for one model."""
    check.custom_ops = answer["ops"]
    check.tf_serving = tf_serving_requirement(version_dir, check.custom_ops)
    if answer["modules"]:
        check.problems.append(f"loading imported {answer['modules']}")
    if "graph_load_error" in answer:
        check.problems.append(f"graph-mode load: {answer['graph_load_error']}")
        return check
    check.loads_in_graph_mode = True
    graph, eager = answer["graph"], answer.get("eager")
    kinds = ("defaults", "every option")
    errors = [f"request {i} ({kinds[i] if i < len(kinds) else 'probe'}): {a['error']}"
              for i, a in enumerate(graph) if "error" in a]
    check.problems.extend(f"graph mode {e}" for e in errors)
    check.answers_with_defaults = "error" not in graph[0]
    if eager is None:
        check.problems.append(f"eager load: {answer.get('eager_load_error')}")
        return check
    differences = [same_answers(g, e) if "error" not in g and "error" not in e else
                   (e.get("error") or "graph mode failed") for g, e in zip(graph, eager)]
    check.same_as_eager = not any(differences)
    check.problems.extend(f"graph vs eager, request {i}: {d}" for i, d in enumerate(differences) if d)
    return check


def verify_export(export_dir: str | Path, version: int | None = None) -> list[ModelCheck]:
    """Checks every model of an export folder in TF Serving's graph-mode loader, in a fresh process.

    Args:
        export_dir: the export folder.
        version: the version to check; ``None``: each model's newest.

    Returns:
        One ``ModelCheck`` per model.
    """
    from serving.items import read_items

    export_dir = os.fspath(export_dir)
    models = [name for name in fileio.listdir(export_dir)
              if not name.startswith(".") and any(v.isdigit() for v in fileio.listdir(fileio.join(export_dir, name)))]
    if not models:
        raise TfrecError(f"{export_dir}: no exported models (expected {export_dir}/<name>/<version>/)")
    items = read_items(export_dir)
    item_ids, texts = list(items)[:6], list(items.values())[:2]
    card = fileio.read_json(fileio.join(export_dir, MODEL_CARD_FILE), default={})
    num_categorical = len(card.get("categorical_fields") or [])
    versions = {}
    for model in models:
        folder = fileio.join(export_dir, model)
        path = fileio.join(folder, str(version)) if version is not None else newest_version(folder)
        if not fileio.isdir(path):
            raise TfrecError(f"{model} has no version {version}")
        log.info("checking %s", path)
        versions[model] = path
    return check_versions(versions, item_ids, texts, num_categorical)


def format_checks(checks: list[ModelCheck]) -> str:
    """A table for people: one row per model, then the problems found."""
    def yes(flag: bool) -> str:
        return "yes" if flag else "NO"

    rows = [("model", "graph-mode load", "answers with defaults", "same as eager", "ops beyond core TF",
             "stock TF Serving")]
    for c in checks:
        ops = ", ".join(f"{op} ({module or '?'})" for op, module in sorted(c.custom_ops.items())) or "none"
        rows.append((c.name, yes(c.loads_in_graph_mode), yes(c.answers_with_defaults), yes(c.same_as_eager), ops,
                     c.tf_serving))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    for c in checks:
        lines.extend(f"{c.name}: {p}" for p in c.problems)
    return "\n".join(lines)


def checks_as_json(checks: list[ModelCheck]) -> list[dict]:
    return [{**asdict(c), "ok": c.ok} for c in checks]

