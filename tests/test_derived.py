"""Settings derived from the shop's data: the ``auto`` rules, and where their choices are recorded."""

import pytest
import yaml

from tfrec.config import ConfigError, load_config
from tfrec.config.derived import LARGE_CATALOGUE, MEMBER_TARGET_BUDGET, derived_settings, resolve

TOYS = "configs/amazon_toys.yaml"


def test_the_benchmark_configs_hold_data_only():
    for path in (TOYS, "configs/amazon_clothing.yaml"):
        written = yaml.safe_load(open(path))
        assert set(written) <= {"name", "data", "eval"}, path
        config = load_config(path)
        assert (config.model.members, config.model.embedding_dim) == ("auto", "auto")


@pytest.mark.parametrize(("items", "targets", "dim", "members"), [
    (3_700, 300_000, 128, 3),
    (LARGE_CATALOGUE, 160_000, 256, 3),
    (LARGE_CATALOGUE - 1, MEMBER_TARGET_BUDGET // 2, 128, 2),
    (10**6, MEMBER_TARGET_BUDGET, 256, 1),
    (10**6, 50 * MEMBER_TARGET_BUDGET, 256, 1),
])
def test_rules_follow_catalogue_size_and_training_targets(items, targets, dim, members):
    resolved = resolve(load_config(TOYS), {"items": items, "train_targets": targets})
    assert (resolved.model.embedding_dim, resolved.model.members) == (dim, members)


def test_set_values_are_kept_and_nothing_is_derived_for_them():
    config = load_config(TOYS, ["model.members=2", "model.embedding_dim=64"])
    stats = {"items": 20_000, "train_targets": 1_000}
    assert derived_settings(config, stats) == {}
    assert resolve(config, stats) is config


def test_stats_without_the_counts_a_rule_reads_give_a_clear_error():
    with pytest.raises(ConfigError, match="train_targets"):
        resolve(load_config(TOYS), {"items": 20_000})


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
    assert summary["derived"] == {"model.members": 3}
    assert load(tmp_path / "config.yaml").model.members == 3
    assert load_model(tmp_path).item_tower.members == 3
