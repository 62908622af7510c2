"""The composite transforms on Beam's TestPipeline (DirectRunner), checked with assert_that."""

import collections

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines import reading
from pipelines.catalogue import BuildCatalogue
from pipelines.rows import Event, InteractionParser, ItemText
from pipelines.sequences import SUMMARY, TRAIN_COUNTS, SplitSequences
from tests.pipelines.bad_rows import KEPT_LINES, LINES, REJECTED, write_bad_rows
from tfrec.config import SequencesConfig


def test_read_rows_keeps_rejects_and_counts_every_row(tmp_path):
    path, config = write_bad_rows(tmp_path)
    data = config.data
    p = BeamTestPipeline()
    read = p | "ReadInteractions" >> reading.ReadRows(
        data.interactions.paths, "auto", ",", InteractionParser(data.interactions, data.items))
    assert_that(read[reading.ROWS] | beam.Map(lambda e: e.line), equal_to(KEPT_LINES), label="Kept")
    assert_that(read[reading.REJECTED] | beam.Map(lambda r: (r.line, r.reason)),
                equal_to(list(REJECTED.items())), label="Rejected")
    assert_that(read[reading.ITEMS] | beam.Keys(), equal_to(["101", "102", "101", "103", "101", "101"]),
                label="Items")
    reasons = collections.Counter(REJECTED.values())
    expected_counts = (str(path), {"read": len(LINES), "kept": len(KEPT_LINES), "rejected": dict(reasons)})
    assert_that(read[reading.COUNTS], equal_to([expected_counts]), label="Counts")
    result = p.run()
    result.wait_until_finish()

    counters = {c.key.metric.name: c.committed
                for c in result.metrics().query(MetricsFilter().with_namespace("ReadInteractions"))["counters"]}
    assert counters["rows_read"] == len(LINES)
    assert counters["rows_kept"] + counters["rows_rejected"] == counters["rows_read"]
    assert counters["rejected:malformed_row"] == reasons["malformed_row"] == 3


def test_build_catalogue_picks_canonical_text_and_sorted_indices():
    rows = [("b", ItemText("Mug", ("red",))), ("b", ItemText("MUG", ("red",))), ("b", ItemText("Mug", ("",))),
            ("a", ItemText("Lamp", ("",))), ("c", ItemText("Zed", ("x",))), ("c", ItemText("Ace", ("y",)))]
    with BeamTestPipeline() as p:
        catalogue = p | beam.Create(rows) | BuildCatalogue()
        assert_that(catalogue["items"], equal_to([
            ("a", ItemText("Lamp", ("",))), ("b", ItemText("Mug", ("red",))), ("c", ItemText("Ace", ("x",))),
        ]), label="Items")
        assert_that(catalogue["index"], equal_to([{"a": 0, "b": 1, "c": 2}]), label="Index")


def test_split_sequences_outputs_records_counts_and_summaries():
    def event(user, item, group, t):
        return Event(user, item, group, t, "f.csv", t, 1.0)

    events = [event("u1", item, f"g{t}", t) for t, item in enumerate("abcab")]  # 5 groups
    events += [event("u2", "a", "g0", 0), event("u2", "b", "g1", 1)]  # too short
    with BeamTestPipeline() as p:
        index = p | "Index" >> beam.Create([{"a": 0, "b": 1, "c": 2}])
        splits = p | beam.Create(events) | SplitSequences(SequencesConfig(), beam.pvalue.AsSingleton(index))
        for name, n in (("train", 2), ("valid", 1), ("test", 1)):
            assert_that(splits[name] | f"Count{name}" >> beam.combiners.Count.Globally(), equal_to([n]),
                        label=f"Records{name}")
        # u1's windows: [a] -> b, [a, b] -> c.
        assert_that(splits[TRAIN_COUNTS], equal_to([(1, 1), (2, 1)]), label="TrainCounts")
        assert_that(splits[SUMMARY] | beam.Map(lambda s: (s.outcome, s.groups, s.test_history_length)),
                    equal_to([("evaluated", 5, 4), ("short_history", 2, None)]), label="Summaries")
