"""``soak.py --swap``: versions published under load, and every answer checked against them.

While the clients run, ``Swaps`` runs the commands a scheduler would (``commands.py``): a
new version (``tfrec export``), removing products (``tfrec index --remove``), restoring
them, and a new version again, with a pause between them. ``Answers`` records each valid
answer: when it was sent, the model, the version that gave it (``X-Model-Version`` /
``model_spec.version``) and the item ids it holds. ``check`` then counts, for answers sent
later than a publish's end plus the poll interval plus ``GRACE_SECONDS``:

- ``stale_answers_after_poll``: answers from an older version than the newest published;
- ``removed_answers_after_poll``: answers, while the products are removed, holding one of
  them or an empty (padded) id slot.

``removed_answers_before_removal`` is the control: the same products in the answers of the
version before the removal (the products are the ones the warm-up answers held most),
showing the check could fail.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from commands import Commands, newest_on_disk

GRACE_SECONDS = 2.0
"""How long after the poll interval a new version may take to answer every request."""
SCHEDULE = ("export", "remove", "restore", "export")


class Answers:
    """Every valid answer of the run: ``(sent, model, version, ids)``, from many client threads."""

    def __init__(self):
        self.rows: list[tuple[float, str, int | None, list[str] | None]] = []
        self._lock = threading.Lock()

    def add(self, sent: float, model: str, version: int | None, ids: np.ndarray | None) -> None:
        row = (sent, model, version, None if ids is None else np.asarray(ids).reshape(-1).tolist())
        with self._lock:
            self.rows.append(row)

    def most_returned(self, count: int) -> list[str]:
        """The ``count`` ids the answers held most often."""
        held = Counter(i for _, _, _, ids in self.rows if ids for i in ids if i)
        return [i for i, _ in held.most_common(count)]


class Swaps:
    """Runs ``schedule`` (default ``SCHEDULE``) in a thread, ``pause`` seconds apart, recording when each
    command ended.

    Args:
        commands: the commands (on the served export's copy).
        export: the export folder served.
        pause: seconds between the end of one command and the start of the next.
        log: an open file for the commands' output.
        schedule: the commands' names, in order (``Commands``).
    """

    def __init__(self, commands: Commands, export: Path, pause: float, log, schedule: tuple[str, ...] = SCHEDULE):
        self.commands, self.export, self.pause, self.log, self.schedule = commands, export, pause, log, schedule
        self.published: list[dict] = []
        self.done = threading.Event()
        self.finished_at = float("inf")
        self._thread = threading.Thread(target=self._run, name="swaps", daemon=True)

    def start(self) -> Swaps:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for name in self.schedule:
                time.sleep(self.pause)
                started = time.monotonic()
                code, seconds = self.commands.run(name, self.log)
                self.published.append({"command": name, "exit": code, "started": started,
                                       "ended": time.monotonic(), "seconds": round(seconds, 1),
                                       "version": newest_on_disk(self.export)})
        finally:
            self.finished_at = time.monotonic()
            self.done.set()

    def over_since(self, seconds: float) -> bool:
        """Whether the last command ended ``seconds`` ago or more."""
        return self.done.is_set() and time.monotonic() >= self.finished_at + seconds

    def join(self) -> None:
        self._thread.join()


def check(answers: Answers, published: list[dict], first_version: int, removed: list[str],
          poll_seconds: float, started: float) -> dict:
    """The counts above, from the answers and the publishes (times from ``time.monotonic``; reported in
    seconds from ``started``)."""
    settle = poll_seconds + GRACE_SECONDS
    removed_set = set(removed)
    ok = [p for p in published if p["exit"] == 0]
    removal = next((p for p in ok if p["command"] == "remove"), None)
    restore = next((p for p in ok if p["command"] == "restore"), None)
    stale, held_removed, empty, before = [], [], 0, 0
    for sent, model, version, ids in answers.rows:
        due = max([p["version"] for p in ok if p["ended"] + settle <= sent], default=first_version)
        if version is None or version < due:
            stale.append(f"{model} v{version} at {sent - started:.1f}s, v{due} due")
        if not ids:
            continue
        empty += "" in ids
        if removal is not None and sent < removal["ended"] and version is not None and version < removal["version"]:
            before += bool(removed_set.intersection(ids))  # the version before the removal: the control
        in_removal = removal is not None and removal["ended"] + settle <= sent and (
            restore is None or sent < restore["started"])
        if in_removal and (removed_set.intersection(ids) or "" in ids):
            held_removed.append(f"{model} v{version}")
    return {
        "swaps": len(ok),
        "publishes": [p | {"started": round(p["started"] - started, 1), "ended": round(p["ended"] - started, 1)}
                      for p in published],
        "answers_checked": len(answers.rows),
        "stale_answers_after_poll": len(stale),
        "stale_examples": stale[:5],
        "removed_answers_after_poll": len(held_removed),
        "removed_examples": held_removed[:5],
        "empty_slot_answers": empty,
        "removed_answers_before_removal": before,
    }
