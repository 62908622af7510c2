"""The paired bootstrap over users: hand-computed cases and a known-seed result."""

import numpy as np
import pytest

from tfrec.evaluation.bootstrap import PairedBootstrap


def test_two_users_give_the_three_possible_means_in_their_proportions():
    # Resampling 2 users: counts (2, 0), (1, 1), (0, 2) with probabilities 1/4, 1/2, 1/4,
    # so values (1, 0) have resampled means 1, 0.5, 0 in those proportions.
    boot = PairedBootstrap(num_users=2, num_resamples=20_000, seed=1)
    means = boot.means(np.arange(2), np.array([1.0, 0.0]))[:, 0]
    assert set(np.unique(means)) == {0.0, 0.5, 1.0}
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.02)
    assert np.mean(means == 1.0) == pytest.approx(0.25, abs=0.02)
    assert boot.interval(means) == (0.0, 1.0)


def test_means_equal_the_means_of_the_resampled_indices():
    values = np.array([[0.0, 1.0], [1.0, 1.0], [0.5, 0.0], [0.25, 1.0], [1.0, 0.5]])
    boot = PairedBootstrap(num_users=5, num_resamples=300, seed=3)
    drawn = np.random.default_rng(3).integers(0, 5, size=(300, 5))
    np.testing.assert_allclose(boot.means(np.arange(5), values), values[drawn].mean(1))


def test_a_subset_mean_weights_the_subset_users_by_their_draws():
    boot = PairedBootstrap(num_users=4, num_resamples=50, seed=0)
    counts = next(boot.counts())
    values = np.array([0.2, 0.8])
    users = np.array([1, 3])
    with np.errstate(invalid="ignore"):
        expected = (counts[:, 1] * 0.2 + counts[:, 3] * 0.8) / (counts[:, 1] + counts[:, 3])
    np.testing.assert_allclose(boot.means(users, values)[:, 0], expected)  # NaN where neither was drawn


def test_a_constant_paired_difference_has_a_zero_width_interval():
    # Each user's value differs by exactly 0.1: the unpaired intervals overlap widely,
    # the paired difference does not move.
    rng = np.random.default_rng(0)
    b = rng.uniform(size=40)
    a = b + 0.1
    boot = PairedBootstrap(num_users=40, num_resamples=500, seed=5)
    samples_a, samples_b = boot.means(np.arange(40), a)[:, 0], boot.means(np.arange(40), b)[:, 0]
    low_a, _ = boot.interval(samples_a)
    _, high_b = boot.interval(samples_b)
    assert low_a < high_b
    result = boot.difference(float(a.mean() - b.mean()), samples_a, samples_b)
    assert result["ci"] == pytest.approx([0.1, 0.1])
    assert result["significant"]
    same = boot.difference(0.0, samples_b, samples_b)
    assert same == {"difference": 0.0, "ci": [0.0, 0.0], "significant": False}


def test_known_seed_result():
    hits = np.array([1, 0, 0, 1, 1, 0, 1, 0, 0, 0], float)
    scores = np.array([0.5, 0.2, 0.1, 0.9, 0.4, 0.3, 0.8, 0.1, 0.0, 0.6])
    boot = PairedBootstrap(num_users=10, num_resamples=1000, seed=7)
    samples = boot.means(np.arange(10), hits)[:, 0]
    np.testing.assert_allclose(samples[:5], [0.4, 0.3, 0.4, 0.2, 0.5])
    assert boot.interval(samples) == pytest.approx((0.1, 0.7))
    difference = boot.difference(float(hits.mean() - scores.mean()), samples,
                                 boot.means(np.arange(10), scores)[:, 0])
    assert difference["ci"] == pytest.approx([-0.2, 0.22])
    assert not difference["significant"]
    # The same seed gives the same resamples; another seed does not.
    np.testing.assert_array_equal(PairedBootstrap(10, 1000, seed=7).means(np.arange(10), hits)[:, 0], samples)
    assert not np.array_equal(PairedBootstrap(10, 1000, seed=8).means(np.arange(10), hits)[:, 0], samples)
