"""Server-side batching: concurrent requests to one signature run as one call of the model.

Both front ends answer through ``Service.predict``, which hands each checked request to
``Batcher.run``. Requests to the same signature whose inputs can be merged (``merge_key``:
the same options, the same width of every per-example input but ``history``) join one
batch; the batch runs as one call and each request gets its own rows back:

- histories of different lengths are left-padded with ``""`` (the models read padding as
  no item), so a short history answers as it does alone;
- ``k`` may differ: the batch runs at the largest and each answer keeps its own first ``k``
  columns (``top_k`` lists are sorted, so a shorter list is the longer one's head);
- a batch the model refuses (its own InvalidArgument, say a ``k`` above a ScaNN index's)
  runs again one request at a time, so a bad request fails alone with its own error.

The settings are TF Serving's ``BatchingParameters`` (``BatchingConfig``). There are no
batch threads of their own: a request that arrives while fewer than ``num_batch_threads``
batches run, and joins a batch that has no leader yet, leads: its own thread runs the
oldest batch of its queue (at once when ``batch_timeout_micros`` is 0, so a lone request
does not wait). Requests that arrive while the batches run wait in the queue and are
merged, and a leader that is done hands the lead to the oldest waiting batch. A merged
call may differ from a lone one in a score's last float bits (the matrices have another
shape), and so in the order of two items only where their scores tie to that precision.
Each queue holds at most ``max_enqueued_batches`` batches; a request beyond them is answered
UNAVAILABLE (503). A request whose deadline passes while it waits leaves the queue with
DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Hashable, Mapping

import numpy as np

from serving.server.checks import HISTORY_INPUT, K_INPUT, Signature
from serving.server.status import DEADLINE_EXCEEDED, UNAVAILABLE, ServingError
from tfrec.config import BatchingConfig

PADDING_ID = b""
"""What pads a history on the left: an empty id, which every model ignores."""


class _Task:
    """One request in a queue: its arrays, rows and ``k``, and, once run, its outputs or error."""

    __slots__ = ("arrays", "rows", "k", "deadline", "event", "outputs", "error", "lead", "batch")

    def __init__(self, arrays: Mapping[str, np.ndarray], rows: int, k: int | None, deadline: float | None):
        self.arrays, self.rows, self.k, self.deadline = arrays, rows, k, deadline
        self.event = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.lead = False
        self.batch: _Merge | None = None

    def finish(self, outputs: dict[str, np.ndarray] | None = None, error: BaseException | None = None) -> None:
        self.outputs, self.error = outputs, error
        self.event.set()

    @property
    def done(self) -> bool:
        return self.outputs is not None or self.error is not None


class _Merge:
    """Requests that will run as one call."""

    __slots__ = ("key", "signature", "tasks", "rows", "opened", "led")

    def __init__(self, key: Hashable, signature: Signature):
        self.key, self.signature = key, signature
        self.tasks: list[_Task] = []
        self.rows = 0
        self.opened = time.monotonic()
        self.led = False  # one of its requests leads: it will run without a hand-on


def merge_key(signature: Signature, arrays: Mapping[str, np.ndarray]) -> Hashable:
    """What requests must share to be merged: the signature, each per-example input's dtype and
    width (any history length), and the value of every other input but ``k``."""
    parts: list = [id(signature)]
    for name in sorted(signature.inputs):
        array = arrays.get(name)
        if name == K_INPUT and signature.inputs[name].default is not None:
            continue  # each request keeps its own k
        if array is None:
            parts.append((name, None))
        elif signature.per_example(name):
            width = array.shape[2:] if name == HISTORY_INPUT else array.shape[1:]
            parts.append((name, array.dtype.str, array.ndim, width, array.size == 0))
        else:
            parts.append((name, array.dtype.str, array.shape, array.tobytes() if array.dtype != object
                          else tuple(array.reshape(-1).tolist())))
    return tuple(parts)


def _k_of(signature: Signature, arrays: Mapping[str, np.ndarray]) -> int | None:
    if K_INPUT not in signature.inputs:
        return None
    value = arrays.get(K_INPUT, signature.inputs[K_INPUT].default)
    return int(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) == 1 else None


def merge(signature: Signature, tasks: list[_Task], size: int) -> dict[str, np.ndarray]:
    """One batch of ``size`` rows from ``tasks`` (same ``merge_key``): histories left-padded,
    ``k`` the largest, rows past the tasks' filled with copies of the first row."""
    first = tasks[0].arrays
    merged = {}
    ks = {t.k for t in tasks}
    if len(ks) > 1 or K_INPUT in first:
        spec = signature.inputs[K_INPUT]
        merged[K_INPUT] = np.asarray(max(ks), dtype=spec.dtype.as_numpy_dtype)
    for name, array in first.items():
        if name == K_INPUT:
            continue
        if not signature.per_example(name) or array.size == 0:
            merged[name] = array
        else:
            parts = [t.arrays[name] for t in tasks]
            if name == HISTORY_INPUT and array.ndim >= 2:
                width = max(p.shape[1] for p in parts)
                parts = [_pad_left(p, width) for p in parts]
            rows = sum(p.shape[0] for p in parts)
            if size > rows:
                parts.append(np.repeat(parts[0][:1], size - rows, axis=0))
            merged[name] = np.concatenate(parts, axis=0)
    return merged


def _pad_left(history: np.ndarray, width: int) -> np.ndarray:
    if history.shape[1] == width:
        return history
    padded = np.full((history.shape[0], width, *history.shape[2:]), PADDING_ID, dtype=history.dtype)
    padded[:, width - history.shape[1]:] = history
    return padded


def split(signature: Signature, tasks: list[_Task], outputs: Mapping[str, np.ndarray]) -> list[dict] | None:
    """Each task's rows (and first ``k`` columns) of a batch's ``outputs``; ``None`` when an output
    has no row per example, so the batch cannot be split."""
    total = sum(t.rows for t in tasks)
    if any(a.ndim == 0 or a.shape[0] < total for a in outputs.values()):
        return None
    sliced = signature.top_k_outputs
    answers, start = [], 0
    for task in tasks:
        end = start + task.rows
        answer = {}
        for name, array in outputs.items():
            rows = array[start:end]
            if name in sliced and task.k is not None:
                rows = rows[:, :max(task.k, 0)]
            answer[name] = np.ascontiguousarray(rows)
        answers.append(answer)
        start = end
    return answers


class Batcher:
    """Merges concurrent requests into batches and runs them (see the module's docstring).

    Args:
        settings: the ``serve.batching`` settings.

    Example:

    >>> from tfrec.config import BatchingConfig
    >>> Batcher(BatchingConfig(max_batch_size=8)).settings.max_batch_size
    8
    """

    def __init__(self, settings: BatchingConfig):
        self.settings = settings
        self._lock = threading.Condition()
        self._queues: dict[Hashable, deque[_Merge]] = {}
        self._running = 0
        self._allowed = sorted(settings.allowed_batch_sizes)
        self.calls = 0
        """Model calls made for batches so far."""
        self.merged = 0
        """Requests answered from a call shared with other requests."""

    @property
    def running(self) -> int:
        """Batches running now (their leaders' requests)."""
        with self._lock:
            return self._running

    @property
    def queued(self) -> int:
        """Requests waiting in a queue now (not yet running)."""
        with self._lock:
            return sum(len(batch.tasks) for queue in self._queues.values() for batch in queue)

    def run(self, signature: Signature, arrays: Mapping[str, np.ndarray], rows: int,
            deadline: float | None = None) -> dict[str, np.ndarray]:
        """The outputs of ``signature`` for one checked request of ``rows`` examples, run in a batch.

        ``deadline`` (``time.monotonic()``): when the caller stops waiting; a request still
        queued then fails with DEADLINE_EXCEEDED.
        """
        if rows < 1 or rows > self.settings.max_batch_size or not any(map(signature.per_example, arrays)):
            return signature.run(arrays)
        k = _k_of(signature, arrays)
        if k is not None and k < 1:  # the model refuses it, which a batch run at a larger k would hide
            return signature.run(arrays)
        task = _Task(arrays, rows, k, deadline)
        with self._lock:
            self._enqueue(merge_key(signature, arrays), signature, task)
            lead = self._running < self.settings.num_batch_threads and not task.batch.led
            if lead:
                self._running += 1
                task.batch.led = True
            self._lock.notify_all()  # a leader waiting for its batch to fill
        if not lead:
            lead = self._follow(task)
        if lead:
            self._lead(task)
        if task.error is not None:
            raise task.error
        return task.outputs

    def _enqueue(self, key: Hashable, signature: Signature, task: _Task) -> None:
        queue = self._queues.setdefault(key, deque())
        if queue and queue[-1].rows + task.rows <= self.settings.max_batch_size:
            batch = queue[-1]
        elif len(queue) >= self.settings.max_enqueued_batches:
            raise ServingError(UNAVAILABLE, f"{signature.model}'s batch queue is full "
                                            f"({self.settings.max_enqueued_batches} batches, "
                                            f"serve.batching.max_enqueued_batches); try again shortly")
        else:
            batch = _Merge(key, signature)
            queue.append(batch)
        batch.tasks.append(task)
        batch.rows += task.rows
        task.batch = batch

    def _follow(self, task: _Task) -> bool:
        """Waits for ``task``'s answer or for the lead; leaves the queue at its deadline. True: lead."""
        while True:
            timeout = None if task.deadline is None else max(task.deadline - time.monotonic(), 0.0)
            task.event.wait(timeout)
            with self._lock:
                if task.lead:
                    task.lead = False
                    if not task.done:  # another leader may have answered it already: keep that signal
                        task.event.clear()
                    return True
                if task.done:
                    return False
                batch = task.batch
                if task.deadline is not None and time.monotonic() >= task.deadline and batch is not None:
                    self._withdraw(task)
                    task.finish(error=_late(batch.signature))
                    return False
                if task.deadline is not None and time.monotonic() >= task.deadline:
                    task.deadline = None  # already running: its answer comes within one call

    def _withdraw(self, task: _Task) -> None:
        batch = task.batch
        batch.tasks.remove(task)
        batch.rows -= task.rows
        task.batch = None
        if not batch.tasks:
            queue = self._queues[batch.key]
            queue.remove(batch)
            if not queue:
                del self._queues[batch.key]

    def _lead(self, task: _Task) -> None:
        """Runs batches of ``task``'s queue, oldest first, until ``task``'s own has run; then hands on."""
        try:
            while not task.done:
                batch = self._take(task)
                if batch is None:  # another leader took the batch
                    break
                self._execute(batch)
        finally:
            with self._lock:
                self._running -= 1
                self._hand_on()
        if not task.done:
            task.event.wait()  # when another leader runs its batch: its answer comes within one call

    def _take(self, task: _Task) -> _Merge | None:
        """The oldest batch of ``task``'s queue, once it is full or has waited ``batch_timeout_micros``."""
        timeout = self.settings.batch_timeout_micros / 1e6
        with self._lock:
            while True:
                if task.batch is None:  # another leader took it
                    return None
                queue = self._queues[task.batch.key]
                oldest = queue[0]
                left = oldest.opened + timeout - time.monotonic()
                if task.deadline is not None:
                    left = min(left, task.deadline - time.monotonic())
                if oldest.rows >= self.settings.max_batch_size or len(queue) > 1 or left <= 0:
                    break
                self._lock.wait(left)
            queue.popleft()
            if not queue:
                del self._queues[oldest.key]
            for queued in oldest.tasks:
                queued.batch = None
            return oldest

    def _count(self, calls: int = 0, merged: int = 0) -> None:
        with self._lock:
            self.calls += calls
            self.merged += merged

    def _hand_on(self) -> None:
        """Gives the lead to the first request of the oldest waiting batch, if a batch may run."""
        if self._running >= self.settings.num_batch_threads:
            return
        waiting = [batch for queue in self._queues.values() for batch in queue if not batch.led]
        if not waiting:
            return
        oldest = min(waiting, key=lambda b: b.opened)
        oldest.led = True
        leader = oldest.tasks[0]
        leader.lead = True
        self._running += 1
        leader.event.set()

    def _execute(self, batch: _Merge) -> None:
        now = time.monotonic()
        tasks = []
        for task in batch.tasks:
            if task.deadline is not None and now >= task.deadline:
                task.finish(error=_late(batch.signature))
            else:
                tasks.append(task)
        if not tasks:
            return
        signature = batch.signature
        answers = None
        if len(tasks) > 1 or self._allowed:
            size = sum(t.rows for t in tasks)
            size = self._allowed[bisect.bisect_left(self._allowed, size)] if self._allowed else size
            try:
                self._count(calls=1)
                answers = split(signature, tasks, signature.run(merge(signature, tasks, size)))
            except Exception:  # noqa: BLE001 (each request runs alone below, and fails with its own error)
                answers = None
        if answers is None:
            for task in tasks:
                self._count(calls=1)
                _run_alone(signature, task)
            return
        if len(tasks) > 1:
            self._count(merged=len(tasks))
        for task, answer in zip(tasks, answers):
            task.finish(outputs=answer)


def _run_alone(signature: Signature, task: _Task) -> None:
    try:
        task.finish(outputs=signature.run(task.arrays))
    except BaseException as e:  # noqa: BLE001 (the request's own error, raised in its own thread)
        task.finish(error=e)


def _late(signature: Signature) -> ServingError:
    return ServingError(DEADLINE_EXCEEDED, f"{signature.model}: the request's deadline passed while it waited "
                                           f"for its batch")
