"""Per-user splits, canonical item texts and percentiles, as pure functions."""

import pytest

from pipelines.catalogue import ItemTextFn, item_index, most_frequent
from pipelines.rows import Event, ItemText
from pipelines.sequences import (
    DROPPED_NO_WINDOW,
    DROPPED_SHORT,
    EVALUATED,
    TRAIN_ONLY,
    split_user,
)
from pipelines.stats import percentiles
from tfrec.config import SequencesConfig

INDEX = {item: i for i, item in enumerate("abcdefghij")}


def event(item, group, timestamp, line, quantity=1.0):
    return Event("u", item, group, timestamp, "f.csv", line, quantity)


# Five baskets, given out of order; basket g2 shares its timestamp with g1 (ordered by id).
EVENTS = [
    event("e", "g4", 40, 9), event("a", "g0", 0, 1), event("b", "g0", 0, 2),
    event("c", "g2", 10, 4), event("b", "g1", 10, 3), event("a", "g3", 30, 6),
    event("d", "g3", 30, 7), event("a", "g3", 31, 8, quantity=2.0), event("f", "g4", 40, 10),
    event("g", "g4", 40, 11),
]
# Groups in order: g0 [a b], g1 [b], g2 [c], g3 [a d] (a deduplicated), g4 [e f g].


def test_windows_valid_and_test_records():
    split = split_user(reversed(EVENTS), SequencesConfig(max_history=2), INDEX)
    assert split.outcome == EVALUATED
    a, b, c, d, e, f, g = range(7)
    assert split.train == [([a, b], [b]), ([b, b], [c])]
    assert split.valid == ([a, b, b, c], [0, 0, 1, 2], [a, d])
    assert split.test == ([a, b, b, c, a, d], [0, 0, 1, 2, 3, 3], [e, f, g])
    assert (split.interactions, split.groups, split.quantity) == (9, 5, 11.0)


def test_without_dedupe_repeated_items_stay_events():
    split = split_user(EVENTS, SequencesConfig(dedupe=False), INDEX)
    assert split.interactions == 10
    assert split.valid.targets == [0, 3]


def test_without_group_column_every_event_is_a_group():
    events = [event(item, None, t, t) for t, item in enumerate("abcab")]
    split = split_user(events, SequencesConfig(max_history=3), INDEX)
    assert split.groups == 5
    assert split.train == [([0], [1]), ([0, 1], [2])]
    assert split.valid.targets == [0] and split.test.targets == [1]
    assert split.test.history_group == [0, 1, 2, 3]


def test_windows_never_see_their_own_or_later_groups():
    split = split_user(EVENTS, SequencesConfig(max_history=50), INDEX)
    groups = [[0, 1], [1], [2], [0, 3], [4, 5, 6]]
    assert [targets for _, targets in split.train] == groups[1:-2]
    for j, (history, _) in enumerate(split.train, start=1):
        assert history == [i for group in groups[:j] for i in group]


@pytest.mark.parametrize("policy, groups, outcome, windows", [
    ("drop", 2, DROPPED_SHORT, 0),
    ("train_only", 2, TRAIN_ONLY, 1),
    ("train_only", 1, DROPPED_NO_WINDOW, 0),
])
def test_short_users(policy, groups, outcome, windows):
    events = [event("a", f"g{j}", j, j) for j in range(groups)]
    split = split_user(events, SequencesConfig(min_groups=3, short_users=policy), INDEX)
    assert split.outcome == outcome
    assert len(split.train) == windows
    assert split.valid is None and split.test is None


def test_two_groups_are_enough_when_min_groups_allows():
    events = [event("a", "g0", 0, 1), event("b", "g1", 1, 2)]
    split = split_user(events, SequencesConfig(min_groups=2), INDEX)
    assert split.outcome == EVALUATED
    assert split.valid == ([], [], [0]) and split.test == ([0], [0], [1])


def test_most_frequent_text_and_categories_with_deterministic_ties():
    fn = ItemTextFn()
    halves = []
    for texts in (["b", "a", "c"], ["a", "b"]):
        acc = fn.create_accumulator()
        for text in texts:
            acc = fn.add_input(acc, ItemText(text, ("", "red" if text == "c" else "blue")))
        halves.append(acc)
    assert fn.extract_output(fn.merge_accumulators(halves)) == ItemText("a", ("", "blue"))
    assert most_frequent({}) == ""


def test_item_index_is_sorted_ids():
    assert item_index(["b", "c", "a"]) == {"a": 0, "b": 1, "c": 2}


def test_nearest_rank_percentiles():
    histogram = {value: 1 for value in range(1, 101)}
    assert percentiles(histogram) == {
        "p10": 10, "p25": 25, "p50": 50, "p75": 75, "p90": 90, "p99": 99, "max": 100}
    assert percentiles({3: 5}) == {"p10": 3, "p25": 3, "p50": 3, "p75": 3, "p90": 3, "p99": 3, "max": 3}
    assert percentiles({})["max"] == 0
