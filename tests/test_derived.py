"""Settings derived from the shop's data: the ``auto`` rules, and where their choices are recorded."""

import pytest
import yaml

from tfrec.config import ConfigError, load_config
from tfrec.config.derived import (
    BASKET_SETTINGS,
    BASKET_SIZE,
    LARGE_CATALOGUE,
    MEMBER_TARGET_BUDGET,
    REPEAT_SHARE,
    derived_settings,
    resolve,
    shop_kind,
    shop_profile,
)

TOYS = "configs/amazon_toys.yaml"
RETAIL = "configs/online_retail.yaml"


def shop(items=3_700, targets=300_000, windows=None, repeats=0):
    """A ``stats.json`` with what the rules read; one item per group unless ``windows`` says otherwise."""
    return {"items": items, "train_targets": targets, "train_repeat_targets": repeats,
            "examples": {"train": targets if windows is None else windows}}


# The three shops' training figures (stats.json of `tfrec preprocess` with their configs).
TOYS_STATS = shop(11_758, 107_875)
CLOTHING_STATS = shop(22_948, 159_844)
RETAIL_STATS = shop(3_665, 186_331, windows=9_339, repeats=86_057)
RETAIL_PINNED = {  # what configs/online_retail.yaml wrote out before it held data only
    "model.embedding_dim": 128, "model.members": 1, "model.text_term": False,
    "model.user_tower.positions": "absolute", "model.user_tower.num_layers": 0, "model.user_tower.pooling": "mean",
    "model.user_tower.recent_items": 200, "model.user_tower.long_term": False, "model.user_tower.causal": False,
    "model.user_tower.dropout": 0.1, "train.batch_size": 128, "train.epochs": 8, "train.learning_rate": 0.001,
    "train.temperature": 0.1, "train.early_stopping_patience": 2, "train.early_stopping_metric": "recall@20",
    "train.lr_schedule": "constant",
}


def value(config, dotted):
    for key in dotted.split("."):
        config = getattr(config, key)
    return config


def test_the_benchmark_configs_hold_data_only():
    for path in (TOYS, "configs/amazon_clothing.yaml", RETAIL):
        written = yaml.safe_load(open(path))
        assert set(written) <= {"name", "data", "eval", "serve"}, path
        config = load_config(path)
        assert (config.model.members, config.model.embedding_dim) == ("auto", "auto")


def test_the_bundled_shop_resolves_to_the_settings_its_config_pinned():
    resolved = resolve(load_config(RETAIL), RETAIL_STATS)
    assert {dotted: value(resolved, dotted) for dotted in RETAIL_PINNED} == RETAIL_PINNED
    assert shop_profile(RETAIL_STATS) | {"rule": ""} == {
        "kind": "basket", "train_basket_size": 19.952, "train_repeat_share": 0.4619, "rule": ""}


@pytest.mark.parametrize("stats", [TOYS_STATS, CLOTHING_STATS])
def test_the_amazon_shops_keep_the_defaults_beside_members_and_size(stats):
    """A sequential shop gets nothing of the basket settings: only ``auto``'s members and size."""
    config = load_config(TOYS)
    resolved = resolve(config, stats)
    assert shop_kind(stats) == "sequential"
    assert derived_settings(config, stats) == {"model.embedding_dim": 256, "model.members": 3}
    assert resolved.model.user_tower == config.model.user_tower and resolved.train == config.train
    assert resolved.model.text_term is True


@pytest.mark.parametrize(("basket", "repeats", "kind"), [
    (BASKET_SIZE, REPEAT_SHARE, "basket"),
    (20.0, 0.9, "basket"),
    (BASKET_SIZE - 0.01, 0.9, "sequential"),   # single purchases bought again: the sequential defaults
    (20.0, REPEAT_SHARE - 0.01, "sequential"),  # sessions of new items
    (1.0, 0.0, "sequential"),
])
def test_the_kind_needs_baskets_and_re_purchases(basket, repeats, kind):
    windows = 10_000
    targets = int(windows * basket)
    stats = shop(targets=targets, windows=windows, repeats=round(targets * repeats))
    assert shop_kind(stats) == kind
    derived = derived_settings(load_config(TOYS), stats)
    assert set(BASKET_SETTINGS) <= set(derived) if kind == "basket" else not set(BASKET_SETTINGS) & set(derived)
    assert derived["model.members"] == (1 if kind == "basket" else 3)


def test_a_basket_shop_keeps_what_its_config_sets():
    config = load_config(RETAIL, ["model.user_tower.causal=true", "train.epochs=3", "model.text_term=true"])
    resolved = resolve(config, RETAIL_STATS)
    assert (resolved.model.user_tower.causal, resolved.train.epochs, resolved.model.text_term) == (True, 3, True)
    assert resolved.model.user_tower.pooling == "mean"  # left out: derived
    derived = derived_settings(config, RETAIL_STATS)
    assert "train.epochs" not in derived and derived["train.lr_schedule"] == "constant"


def test_the_mean_reads_the_whole_window_the_data_keeps():
    resolved = resolve(load_config(RETAIL, ["data.sequences.max_history=120"]), RETAIL_STATS)
    assert resolved.model.user_tower.recent_items == 120


def test_a_resolved_config_is_resolved_again_to_itself(tmp_path):
    """The run's config.yaml spells every choice out: read back, nothing is left to derive."""
    resolved = resolve(load_config(RETAIL), RETAIL_STATS)
    assert resolve(resolved, RETAIL_STATS) == resolved
    path = tmp_path / "config.yaml"
    path.write_text(resolved.to_yaml())
    again = load_config(path)
    assert derived_settings(again, RETAIL_STATS) == {} and again == resolved


@pytest.mark.parametrize(("items", "targets", "dim", "members"), [
    (3_700, 300_000, 128, 3),
    (LARGE_CATALOGUE, 160_000, 256, 3),
    (LARGE_CATALOGUE - 1, MEMBER_TARGET_BUDGET // 2, 128, 2),
    (10**6, MEMBER_TARGET_BUDGET, 256, 1),
    (10**6, 50 * MEMBER_TARGET_BUDGET, 256, 1),
])
def test_rules_follow_catalogue_size_and_training_targets(items, targets, dim, members):
    resolved = resolve(load_config(TOYS), shop(items, targets))
    assert (resolved.model.embedding_dim, resolved.model.members) == (dim, members)


def test_set_values_are_kept_and_nothing_is_derived_for_them():
    config = load_config(TOYS, ["model.members=2", "model.embedding_dim=64"])
    stats = shop(20_000, 1_000)
    assert derived_settings(config, stats) == {}
    assert resolve(config, stats) is config


def test_stats_without_the_counts_a_rule_reads_give_a_clear_error():
    with pytest.raises(ConfigError, match="train_targets"):
        resolve(load_config(TOYS), {"items": 20_000})
    with pytest.raises(ConfigError, match="train_repeat_targets.*preprocess the data again"):
        resolve(load_config(RETAIL), {"items": 20_000, "train_targets": 10, "examples": {"train": 2}})


def test_auto_is_the_only_word_accepted_beside_a_number():
    with pytest.raises(ConfigError, match="members"):
        load_config(TOYS, ["model.members=many"])
    with pytest.raises(ConfigError, match="embedding_dim"):
        load_config(TOYS, ["model.embedding_dim=0"])


def test_an_unresolved_config_cannot_build_a_model():
    from tfrec.errors import TfrecError
    from tfrec.models.two_tower import build_model

    with pytest.raises(TfrecError, match="auto"):
        build_model(load_config(TOYS), catalogue=None, model_dir="unused")


def test_training_writes_the_chosen_values_into_the_run(tiny, sample_data_dir, tmp_path):
    """A config left at ``auto`` trains with the rule's value; the model folder's config.yaml
    spells it out and the training summary lists what was derived, so the run can be repeated."""
    from tests.conftest import tiny_config
    from tfrec.config import load_config as load
    from tfrec.models import load_model
    from tfrec.training.trainer import train

    config = tiny_config(tiny, "model.members=auto", "train.epochs=1", "train.steps_per_epoch=2")
    summary = train(config, sample_data_dir, tmp_path)
    assert summary["shop"]["kind"] == "basket"  # the bundled shop's sample: invoices, many bought again
    assert summary["derived"] == {  # all but what the tiny config sets (layers, long-term mean, epochs)
        "model.members": 1, "model.text_term": False, "model.user_tower.positions": "absolute",
        "model.user_tower.pooling": "mean", "model.user_tower.recent_items": 10,  # data.sequences.max_history
        "model.user_tower.causal": False, "model.user_tower.dropout": 0.1, "train.early_stopping_patience": 2,
        "train.early_stopping_metric": "recall@20", "train.lr_schedule": "constant"}
    recorded = load(tmp_path / "config.yaml")
    assert recorded.model.members == 1 and recorded.model.user_tower.pooling == "mean"
    assert recorded.train.early_stopping_metric == "recall@20"
    assert load_model(tmp_path).item_tower.members == 1
