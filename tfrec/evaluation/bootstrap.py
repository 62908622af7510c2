"""Paired bootstrap over users: confidence intervals of every mean-over-users metric.

A resample draws the split's users with replacement (``numpy`` indices, one row per
resample) and is turned into a count per user. Every statistic of one resample (each
scorer's mean under each protocol and segment) is computed from the same counts, so a
difference between two of them (model against a baseline, one protocol against
another) is a *paired* difference: the users that happen to be drawn twice count twice
for both sides. A mean over a subset of users (the ``explore`` users, a segment) is
the count-weighted mean of the users of the subset drawn in that resample.

Metrics are computed once per user; a resample only re-weights those arrays (one
matrix product per user set), so a thousand resamples cost a small fraction of the
evaluation they follow.

Intervals are percentile intervals of the resampled statistic; a difference is called
significant when its interval leaves out zero.

>>> boot = PairedBootstrap(num_users=4, num_resamples=200, seed=0)
>>> boot.interval(boot.means(np.arange(4), np.array([[1.0], [1.0], [1.0], [1.0]]))[:, 0])
(1.0, 1.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
from threadpoolctl import threadpool_limits

CHUNK = 256
"""Resamples whose user counts are held in memory at once (``CHUNK x num_users`` floats)."""


class PairedBootstrap:
    """``num_resamples`` resamples of ``num_users`` users, fixed by ``seed``.

    ``means`` over any user set and any values re-uses the same resamples, which is what
    makes differences between its results paired.

    Args:
        num_users: the users resampled (indices ``0 .. num_users - 1``).
        num_resamples: how many resamples.
        seed: fixes the resamples.
        level: the intervals' confidence level.
    """

    def __init__(self, num_users: int, num_resamples: int = 1000, seed: int = 0, level: float = 0.95):
        if num_resamples < 1:
            raise ValueError(f"num_resamples must be positive, got {num_resamples}")
        self.num_users = num_users
        self.num_resamples = num_resamples
        self.seed = seed
        self.level = level
        self._counts: list[np.ndarray] | None = None

    def counts(self) -> Iterator[np.ndarray]:
        """``[resamples, num_users]`` draws of each user, in chunks (the same on every call)."""
        if self._counts is None:
            rng = np.random.default_rng(self.seed)
            chunks = []
            for start in range(0, self.num_resamples, CHUNK):
                size = min(CHUNK, self.num_resamples - start)
                drawn = rng.integers(0, self.num_users, size=(size, self.num_users))
                offsets = (np.arange(size) * self.num_users)[:, None]
                flat = np.bincount((drawn + offsets).ravel(), minlength=size * self.num_users)
                chunks.append(flat.reshape(size, self.num_users).astype(np.float64))
            self._counts = chunks
        yield from self._counts

    def means(self, users: np.ndarray, values: np.ndarray) -> np.ndarray:
        """``[resamples, columns]`` means of ``values [len(users), columns]`` over the users drawn.

        A resample that draws none of ``users`` gives NaN.
        """
        values = np.asarray(values, np.float64)
        if values.ndim == 1:
            values = values[:, None]
        # Scattered into every user's row (zero outside ``users``), so each chunk is one matrix
        # product with the counts as they are, without copying the columns of ``users``.
        full = np.zeros((self.num_users, values.shape[1] + 1))
        full[users, :-1] = values
        full[users, -1] = 1.0
        out = []
        with threadpool_limits(1, "blas"):  # small products: threads only contend on a shared machine
            for counts in self.counts():
                sums = counts @ full
                with np.errstate(invalid="ignore", divide="ignore"):
                    out.append(sums[:, :-1] / sums[:, -1:])
        return np.concatenate(out) if out else np.zeros((0, values.shape[1]))

    def intervals(self, samples: np.ndarray) -> np.ndarray:
        """``[2, columns]`` percentile intervals at ``level`` of each column of ``samples [resamples,
        columns]``, NaN resamples left out (all NaN: NaN)."""
        samples = np.asarray(samples, np.float64)
        tail = 100 * (1 - self.level) / 2
        if np.isfinite(samples).all():
            return np.percentile(samples, [tail, 100 - tail], axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a column with no finite resample
            return np.nanpercentile(samples, [tail, 100 - tail], axis=0)

    def interval(self, samples: np.ndarray) -> tuple[float, float]:
        """The percentile interval of ``samples`` at ``level`` (NaN resamples left out)."""
        low, high = self.intervals(np.asarray(samples, np.float64)[:, None])[:, 0]
        return float(low), float(high)

    def difference(self, observed: float, samples_a: np.ndarray, samples_b: np.ndarray) -> dict:
        """``a - b`` with its interval from paired resamples, and whether the interval leaves out 0."""
        low, high = self.interval(np.asarray(samples_a) - np.asarray(samples_b))
        return {"difference": observed, "ci": [low, high], "significant": bool(low > 0 or high < 0)}
