"""Segments and confidence intervals of an evaluated split, on a split built by hand."""

import numpy as np

from tfrec.data import EvalSplit
from tfrec.evaluation.ranking import evaluate_split
from tfrec.evaluation.segments import analyse_split, history_quartiles, target_segments

NUM_ITEMS = 6


def test_popularity_bands_split_training_targets_in_thirds():
    masks = target_segments(np.array([10, 5, 3, 1, 1, 0]))
    # Shares of the targets held by the items before each: 0, .5, .75, .9, .95.
    assert masks["head"].tolist() == [True, False, False, False, False, False]
    assert masks["torso"].tolist() == [False, True, False, False, False, False]
    assert masks["tail"].tolist() == [False, False, True, True, True, False]
    assert set(masks) == {"head", "torso", "tail"}  # item 5, never a target, is the cold-start slice


def test_history_quartiles_are_labelled_by_their_lengths():
    split = EvalSplit(np.array([str(i) for i in range(8)], dtype=object),
                      [np.zeros(n, np.int64) for n in range(1, 9)], [np.zeros(n, np.int64) for n in range(1, 9)],
                      [np.array([1])] * 8)
    quartiles = history_quartiles(split)
    assert list(quartiles) == ["1–2 items", "3–4 items", "5–6 items", "7–8 items"]
    assert [int(m.sum()) for m in quartiles.values()] == [2, 2, 2, 2]


def _split(users: int) -> EvalSplit:
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, 5, size=1 + i % 7) for i in range(users)]
    targets = [np.unique(np.append(rng.integers(0, NUM_ITEMS, size=2), i % NUM_ITEMS)) for i in range(users)]
    return EvalSplit(np.array([f"u{i}" for i in range(users)], dtype=object), histories,
                     [np.arange(len(h)) for h in histories], targets)


def _popular(histories):
    return np.tile(np.linspace(1, 0.5, NUM_ITEMS), (len(histories), 1))


def _evaluate(split, min_users=30):
    counts = np.array([50, 30, 10, 5, 5, 0])
    result = evaluate_split({"model": _Oracle(split), "most_popular": _popular}, split, NUM_ITEMS, counts == 0,
                            ks=(1, 2, 3), batch_size=16, target_segments=target_segments(counts), keep_per_user=True)
    return result.metrics, analyse_split(result.per_user, split, num_resamples=400, seed=0, min_users=min_users)


class _Oracle:
    """Scores each history's own targets highest (found by identity of the history array)."""

    def __init__(self, split):
        self.targets = {id(h): t for h, t in zip(split.histories, split.targets)}

    def __call__(self, histories):
        return np.stack([np.isin(np.arange(NUM_ITEMS), self.targets[id(h)]).astype(float) for h in histories])


def test_intervals_hold_the_means_and_the_oracle_beats_popularity_significantly():
    split = _split(200)
    result, analysis = _evaluate(split)
    for protocol in ("all", "explore"):
        for scorer in ("model", "most_popular"):
            low, high = analysis["ci"][protocol][scorer]["recall@3"]
            assert low <= result[protocol][scorer]["recall@3"] <= high
    assert analysis["ci"]["all"]["model"]["recall@3"] == [1.0, 1.0]
    vs = analysis["vs_baselines"]["all"]["most_popular"]["recall@3"]
    assert np.isclose(vs["difference"], 1.0 - result["all"]["most_popular"]["recall@3"])
    assert vs["significant"] and vs["ci"][0] > 0
    # The oracle ranks every target first under both protocols: no protocol difference.
    assert analysis["vs_protocols"]["model"]["recall@3"]["ci"] == [0.0, 0.0]
    assert analysis["bootstrap"]["resamples"] == 400


def test_segments_have_their_users_and_small_ones_are_never_best():
    split = _split(200)
    result, analysis = _evaluate(split, min_users=60)
    segments = analysis["segments"]
    assert set(segments) == {"history_length", "target_popularity", "target_history", "cold_start"}
    assert sum(s["users"] for s in segments["history_length"].values()) == 200
    # Target segments are measured by the evaluator; their means are its results.
    for kind, label in (("target_history", "repeat"), ("target_history", "new"), ("target_popularity", "head")):
        segment = segments[kind][label]
        assert segment["users"] == result["segments"][label]["model"]["users"]
        assert np.isclose(segment["metrics"]["most_popular"]["recall@2"],
                          result["segments"][label]["most_popular"]["recall@2"])
    cold = segments["cold_start"]["cold_start"]
    assert cold["users"] == result["cold_start"]["model"]["users"] > 0
    assert np.isclose(cold["metrics"]["model"]["mrr"], result["cold_start"]["model"]["mrr"])
    best = []
    for kind in segments.values():
        for segment in kind.values():
            assert segment["too_few_users"] == (segment["users"] < 60)
            if segment["too_few_users"]:
                assert segment["best"] is None
            best.append(segment["best"])
            low, high = segment["ci"]["model"]["recall@2"]
            assert low <= segment["metrics"]["model"]["recall@2"] <= high
    assert all(s["too_few_users"] and s["best"] is None for s in segments["history_length"].values())
    # Where the oracle and popularity tie (the head item is also the most popular), none is best.
    assert set(best) == {None, "model"}
