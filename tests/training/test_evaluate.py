"""``evaluate`` on a trained tiny model: metrics.json holds the model beside every baseline."""

import json
import logging

import numpy as np

from tfrec.evaluation.baselines import TEXT_RECENT_DECAYS
from tfrec.evaluation.comparison import evaluate

SCORERS = {"model", "most_popular", "repeat", "item_cooccurrence", "als", "text_zero_shot", "text_recent"}
METRICS = {"recall@10", "recall@20", "recall@50", "recall@100", "ndcg@10", "ndcg@20", "mrr",
           "hitrate@10", "coverage@10", "ils@10", "users"}


def test_metrics_json_has_every_split_protocol_and_scorer(tiny, sample_data_dir, trained_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="tfrec")
    metrics = evaluate(tiny, sample_data_dir, trained_model_dir)
    assert json.loads((trained_model_dir / "metrics.json").read_text()) == metrics
    for split in ("valid", "test"):
        assert 0 < metrics[split]["repeat_share"] < 1
        for protocol in ("all", "explore", "cold_start"):
            assert set(metrics[split][protocol]) == SCORERS
            for values in metrics[split][protocol].values():
                assert set(values) == METRICS
                assert all(0 <= values[m] <= 1 for m in METRICS - {"users", "ils@10"})
                assert -1 <= values["ils@10"] <= 1
        # Every scorer ranks the same users.
        assert len({v["users"] for v in metrics[split]["all"].values()}) == 1
        assert metrics[split]["explore"]["model"]["users"] <= metrics[split]["users"]
        assert metrics[split]["users_total"] == metrics[split]["users"]  # under eval.max_users: every user
        # Every mean-over-users metric has its interval, around its value.
        for protocol in ("all", "explore"):
            for scorer, values in metrics[split][protocol].items():
                low, high = metrics[split]["ci"][protocol][scorer]["recall@20"]
                assert low <= values["recall@20"] <= high
        assert set(metrics[split]["vs_baselines"]["all"]) == SCORERS - {"model"}
    assert set(metrics["test"]["segments"]) == {"history_length", "target_popularity", "target_history", "cold_start"}
    assert "segments" not in metrics["valid"]
    # Under `explore`, the repeat baseline has nothing of its own left: it is most-popular.
    explore = metrics["test"]["explore"]
    assert np.isclose(explore["repeat"]["recall@20"], explore["most_popular"]["recall@20"])
    out = caplog.text  # the tables are logged (the CLI prints them)
    assert "explore" in out and "text_zero_shot" in out and "text_recent" in out
    # text_recent's decay: chosen on validation by the early-stopping metric the data gave the shop.
    recent = metrics["text_recent"]
    assert recent["decay"] in TEXT_RECENT_DECAYS and set(recent["validation"]) == {f"{d:g}" for d in TEXT_RECENT_DECAYS}
    assert recent["validation"][f"{recent['decay']:g}"] == max(recent["validation"].values())
    assert "explore recall@20" in recent["chosen_by"]  # a basket shop stops on Recall@20
    # tfrec_similar from each user's last item: a model without a text part has one candidate.
    similar = metrics["similar_items"]
    assert (similar["chosen"], similar["text_weight"]) == ("trained", 0.0)
    for split in ("valid", "test"):
        values = similar[split]["trained"]
        assert 0 <= values["recall@10"] <= values["recall@20"] <= 1 and 0 < values["users"] <= metrics[split]["users"]


def test_max_users_measures_a_sample_and_says_of_how_many(tiny, sample_data_dir, trained_model_dir):
    from tfrec.config import apply_overrides, config_from_dict
    from tfrec.data import load_eval_split

    sampled = config_from_dict(apply_overrides(tiny.to_dict(), ["eval.max_users=40"]))
    metrics = evaluate(sampled, sample_data_dir, trained_model_dir)
    for split in ("valid", "test"):
        total = len(load_eval_split(sample_data_dir, split))
        assert total > 40
        assert metrics[split]["users"] == 40 and metrics[split]["users_total"] == total
        assert {v["users"] for v in metrics[split]["all"].values()} == {40}
        low, high = metrics[split]["ci"]["all"]["model"]["recall@20"]
        assert low <= metrics[split]["all"]["model"]["recall@20"] <= high
    assert json.loads((trained_model_dir / "metrics.json").read_text())["test"]["users_total"] == total


def test_without_the_zero_shot_baseline_a_scratch_model_leaves_out_ils(tiny, sample_data_dir, trained_model_dir):
    from tfrec.config import apply_overrides, config_from_dict

    assert tiny.model.text_encoder.kind == "scratch"
    lean = config_from_dict(apply_overrides(tiny.to_dict(), ['eval.baselines=["most_popular", "repeat"]']))
    metrics = evaluate(lean, sample_data_dir, trained_model_dir)
    assert set(metrics["test"]["all"]) == {"model", "most_popular", "repeat"}
    assert "ils@10" not in metrics["test"]["all"]["model"] and "recall@20" in metrics["test"]["all"]["model"]
