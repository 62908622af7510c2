"""Per-user time splits: one user's events become training windows and evaluation records.

A user's events are ordered by (timestamp, group id, source, line) and gathered into
groups (baskets, invoices, sessions; without a group column every event is its own
group), ordered by their first event. The last group is the test group, the one before
it the validation group, the rest are training groups:

* training: for every training group ``j >= 1``, the ``max_history`` most recent items of
  groups ``< j`` (oldest first) -> the group's items (one window, one target per event).
  No window ever sees an item of its own group or a later one.
* validation: every item of the training groups (with their group ordinals) -> the
  distinct items of the validation group.
* test: the same history plus the validation group -> the distinct items of the test group.

Users with fewer than ``max(min_groups, 2)`` groups are "short": dropped, or with
``short_users: train_only`` used for training windows only (all their groups are training).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import apache_beam as beam

from pipelines.rows import Event
from tfrec import features, layout
from tfrec.config import SequencesConfig

# Outcomes of a user, as counted in stats.json.
EVALUATED = "evaluated"
TRAIN_ONLY = "train_only"
DROPPED_SHORT = "short_history"
"""Dropped: fewer groups than ``min_groups`` (with ``short_users: drop``)."""
DROPPED_NO_WINDOW = "no_training_window"
"""Dropped: a ``train_only`` user with a single group yields no example at all."""

# Tagged outputs of SplitUserFn.
TRAIN_COUNTS = "train_counts"
SUMMARY = "summary"


class EvalRecord(NamedTuple):
    history: list[int]
    history_group: list[int]
    targets: list[int]


class UserSplit(NamedTuple):
    """Everything one user contributes."""

    outcome: str
    train: list[tuple[list[int], list[int]]]
    """(history, targets) windows, one per training group after the first: window ``j - 1``
    targets group ``j``."""
    valid: EvalRecord | None
    test: EvalRecord | None
    interactions: int
    """Events after deduplication."""
    groups: int
    quantity: float
    """Summed quantity of the user's events."""
    first_time: int | None = None
    """Epoch seconds of the user's first and last kept events."""
    last_time: int | None = None
    test_time: int | None = None
    """Epoch seconds of the start of the held-out (test) group, for evaluated users."""
    repeat_targets: int = 0
    """Training targets the user bought in an earlier group (``repeat_targets``)."""


class UserSummary(NamedTuple):
    """The per-user figures ``stats.json`` adds up."""

    outcome: str
    interactions: int
    groups: int
    quantity: float
    train_examples: int
    train_targets: int
    test_history_length: int | None
    first_time: int | None = None
    last_time: int | None = None
    test_time: int | None = None
    train_repeat_targets: int = 0
    """Training targets the user bought in an earlier group (re-purchases; ``repeat_targets``)."""


def order_key(event: Event) -> tuple:
    return (event.timestamp, event.group or "", event.source, event.line)


def deduplicate(events: list[Event]) -> list[Event]:
    """One event per (item, group), the earliest, with the quantities summed; ``events`` sorted."""
    merged: dict[tuple, Event] = {}
    for event in events:
        key = (event.item, event.group if event.group is not None else (event.source, event.line))
        first = merged.get(key)
        merged[key] = event if first is None else first._replace(quantity=first.quantity + event.quantity)
    return list(merged.values())


def group_items(events: list[Event], index: Mapping[str, int]) -> list[list[int]]:
    """Item indices per group, groups in order of their first event; ``events`` sorted."""
    groups: dict[object, list[int]] = {}
    for event in events:
        key = event.group if event.group is not None else (event.source, event.line)
        groups.setdefault(key, []).append(index[event.item])
    return list(groups.values())


def training_windows(groups: list[list[int]], max_history: int) -> list[tuple[list[int], list[int]]]:
    history: list[int] = []
    windows = []
    for j, group in enumerate(groups):
        if j:
            windows.append((history[-max_history:], list(group)))
        history.extend(group)
    return windows


def repeat_targets(groups: list[list[int]]) -> int:
    """Items of the groups after the first that the user bought in an earlier group (the
    re-purchases among the training targets of these groups' windows)."""
    seen: set[int] = set()
    repeats = 0
    for j, group in enumerate(groups):
        if j:
            repeats += len(set(group) & seen)
        seen.update(group)
    return repeats


def eval_record(groups: list[list[int]], held_out: list[int]) -> EvalRecord:
    history = [item for group in groups for item in group]
    ordinals = [j for j, group in enumerate(groups) for _ in group]
    return EvalRecord(history, ordinals, sorted(set(held_out)))


def split_user(events: Iterable[Event], sequences: SequencesConfig, index: Mapping[str, int]) -> UserSplit:
    """Splits one user's events (any order) into training windows and evaluation records."""
    ordered = sorted(events, key=order_key)
    if sequences.dedupe:
        ordered = deduplicate(ordered)
    groups = group_items(ordered, index)
    quantity = sum(e.quantity for e in ordered)

    first, last = (ordered[0].timestamp, ordered[-1].timestamp) if ordered else (None, None)

    def result(outcome, train=(), valid=None, test=None, trained_groups=()) -> UserSplit:
        test_time = None
        if test is not None:  # the start of the last group (groups are ordered by their first event)
            starts: dict[object, int] = {}
            for e in ordered:
                starts.setdefault(e.group if e.group is not None else (e.source, e.line), e.timestamp)
            test_time = list(starts.values())[-1]
        return UserSplit(outcome, list(train), valid, test, len(ordered), len(groups), quantity, first, last,
                         test_time, repeat_targets(list(trained_groups)))

    if len(groups) < max(sequences.min_groups, 2):
        if sequences.short_users == "drop":
            return result(DROPPED_SHORT)
        train = training_windows(groups, sequences.max_history)
        return result(TRAIN_ONLY, train, trained_groups=groups) if train else result(DROPPED_NO_WINDOW)
    training = groups[:-2]
    return result(
        EVALUATED,
        training_windows(training, sequences.max_history),
        valid=eval_record(training, groups[-2]),
        test=eval_record(groups[:-1], groups[-1]),
        trained_groups=training,
    )


class SplitUserFn(beam.DoFn):
    """``(user, events)`` -> serialized train / valid / test records.

    Tagged outputs: ``TRAIN_COUNTS`` (``(item_index, n)``: how often the user's windows
    target each item) and ``SUMMARY`` (one ``UserSummary``).
    """

    def __init__(self, sequences: SequencesConfig):
        self.sequences = sequences

    def process(self, element: tuple[str, Iterable[Event]], index: Mapping[str, int]):
        user, events = element
        split = split_user(events, self.sequences, index)
        for group, (history, targets) in enumerate(split.train, start=1):  # window j targets group j
            yield beam.pvalue.TaggedOutput("train", features.train_example(user, history, targets, group))
        for name, record in (("valid", split.valid), ("test", split.test)):
            if record is not None:
                yield beam.pvalue.TaggedOutput(name, features.eval_example(user, *record))
        counts = collections.Counter(target for _, targets in split.train for target in targets)
        for item, n in counts.items():
            yield beam.pvalue.TaggedOutput(TRAIN_COUNTS, (item, n))
        yield beam.pvalue.TaggedOutput(SUMMARY, UserSummary(
            split.outcome, split.interactions, split.groups, split.quantity, len(split.train),
            sum(len(targets) for _, targets in split.train),
            len(split.test.history) if split.test is not None else None,
            split.first_time, split.last_time, split.test_time,
            split.repeat_targets,
        ))


class SplitSequences(beam.PTransform):
    """Events -> ``{"train", "valid", "test", TRAIN_COUNTS, SUMMARY}`` PCollections.

    ``index`` is a side input mapping item id -> item index.
    """

    def __init__(self, sequences: SequencesConfig, index: beam.pvalue.AsSideInput):
        super().__init__()
        self.sequences = sequences
        self.index = index

    def expand(self, events):
        outputs = (
            events
            | "KeyByUser" >> beam.Map(lambda event: (event.user, event))
            | "GroupByUser" >> beam.GroupByKey()
            | "Split" >> beam.ParDo(SplitUserFn(self.sequences), index=self.index).with_outputs(
                "train", "valid", "test", TRAIN_COUNTS, SUMMARY
            )
        )
        counts = outputs[TRAIN_COUNTS] | "CountTargets" >> beam.CombinePerKey(sum)
        return {split: outputs[split] for split in layout.SPLITS} | {
            TRAIN_COUNTS: counts, SUMMARY: outputs[SUMMARY],
        }
