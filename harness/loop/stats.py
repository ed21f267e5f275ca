"""Intervals and paired tests for accuracies: every number in a results table carries one (design rule 10).

What each function is for:
    ``wilson``                    binary metric over items (solved / not solved); Wilson score interval
                                  (Wilson 1927; Agresti & Coull 1998 recommend it over the Wald interval).
    ``bootstrap_mean``            mean of a per-item score (e.g. Sudoku cell accuracy per puzzle); percentile
                                  bootstrap over items (Efron & Tibshirani 1993, ch. 13).
    ``bootstrap_mean_clustered``  the same over several training seeds evaluated on the same items; resamples
                                  seeds and items (a two-way bootstrap), so seed-to-seed variance widens the interval.
    ``paired_bootstrap``          difference of two systems on the same items, with a p-value.
    ``mcnemar``                   exact McNemar test for two binary metrics on the same items.

Departures and simplifications:
    1. Percentile intervals, not BCa: with a few hundred items the difference is small and percentile intervals
       are easy to check by hand.
    2. The bootstrap p-value inverts the percentile interval (see ``paired_bootstrap``) instead of resampling
       under a shifted null, so it agrees with the interval shown beside it.
    3. Every resampling function takes a ``seed`` and uses its own ``numpy.random.Generator``: the same inputs
       and seed give the same interval, and no global RNG is touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

DEFAULT_LEVEL = 0.95
"""Two-sided confidence level of every interval unless the caller asks otherwise."""
DEFAULT_RESAMPLES = 2000
"""Bootstrap resamples for intervals; 2000 puts the Monte Carlo error of a 95% percentile well below 1 point."""
DEFAULT_TEST_RESAMPLES = 10000
"""Bootstrap resamples for p-values, which need finer resolution in the tails than interval end points."""
RESAMPLE_CHUNK = 1000
"""Resamples drawn per block, so memory stays at chunk x items however many resamples are asked for."""
PERCENT = 100.0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval. ``n`` is the number of values averaged."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def pct(self) -> str:
        """The estimate of a proportion as percent, e.g. ``41.2% [38.0, 44.5]``."""
        return f"{self.mean * PERCENT:.1f}% [{self.low * PERCENT:.1f}, {self.high * PERCENT:.1f}]"


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _as_values(values: Sequence[float] | np.ndarray, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: an interval needs at least one value")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinity")
    return array


def _resampled_means(array: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` bootstrap samples of ``array`` (items drawn with replacement)."""
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, RESAMPLE_CHUNK):  # bounded memory: one [chunk, n] index block at a time
        indices = rng.integers(0, array.size, size=(min(RESAMPLE_CHUNK, resamples - start), array.size))
        chunks.append(array[indices].mean(axis=1))  # [chunk]
    return np.concatenate(chunks)  # [R]


def _percentile_interval(resampled: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return float(low), float(high)


def wilson(successes: int, n: int, level: float = DEFAULT_LEVEL) -> Estimate:
    """Wilson score interval for ``successes`` out of ``n`` binary trials."""
    _check_level(level)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n={n}], got {successes}")
    z = NormalDist().inv_cdf(1.0 - (1.0 - level) / 2.0)
    p = successes / n
    denominator = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denominator
    # The bounds are exactly 0 at 0 successes and exactly 1 at n; set them so rounding cannot leave 1e-17.
    low = 0.0 if successes == 0 else center - half_width
    high = 1.0 if successes == n else center + half_width
    return Estimate(mean=p, low=low, high=high, n=n)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Estimate:
    """Mean of per-item values with a percentile-bootstrap interval (items resampled with replacement).

    With one value, or all values equal, every resample has the same mean and the interval is that point.
    """
    _check_level(level)
    array = _as_values(values)
    mean = float(array.mean())
    if array.size == 1 or np.all(array == array[0]):
        return Estimate(mean=mean, low=mean, high=mean, n=int(array.size))
    low, high = _percentile_interval(_resampled_means(array, resamples, seed), level)
    return Estimate(mean=mean, low=low, high=high, n=int(array.size))


def bootstrap_mean_clustered(
    values_by_seed: Sequence[Sequence[float]] | np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Estimate:
    """Mean over training seeds of the per-seed mean over items, with a two-way bootstrap interval.

    ``values_by_seed[s][i]`` is the score of seed ``s`` on item ``i``; items are aligned across seeds (the same
    evaluation set). Each resample draws seeds with replacement and, independently, items with replacement, and
    averages the selected seed x item cells, so both the seed-to-seed and the item-to-item variance widen the
    interval. ``n`` is seeds x items.
    """
    _check_level(level)
    try:
        table = np.asarray(values_by_seed, dtype=np.float64)  # [S, n]
    except ValueError as error:  # ragged rows
        raise ValueError("values_by_seed must have the same number of items for every seed") from error
    if table.ndim != 2 or table.size == 0:
        raise ValueError(f"values_by_seed must be a non-empty seeds x items table, got shape {table.shape}")
    _as_values(table.ravel(), "values_by_seed")
    n_seeds, n_items = table.shape
    mean = float(table.mean())
    if np.all(table == table.flat[0]):
        return Estimate(mean=mean, low=mean, high=mean, n=int(table.size))
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    low, high = _percentile_interval(_two_way_resampled_means(table, resamples, seed), level)
    return Estimate(mean=mean, low=low, high=high, n=int(table.size))


def _two_way_resampled_means(table: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of ``resamples`` two-way bootstrap resamples of a seeds x items table [S, n] -> [R]: seeds and,
    independently, items drawn with replacement."""
    rng = np.random.default_rng(seed)
    n_seeds, n_items = table.shape
    # Resampling by counts: the mean of table[seed_idx][:, item_idx] is sum_s,i c_s c_i table[s, i] / (S * n).
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=resamples)  # [R, S]
    item_counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=resamples)  # [R, n]
    return np.einsum("rs,si,ri->r", seed_counts, table, item_counts) / (n_seeds * n_items)  # [R]


def paired_bootstrap_seeds(
    a_by_seed: Sequence[Sequence[float]] | np.ndarray,
    b_by_seed: Sequence[Sequence[float]] | np.ndarray,
    *,
    resamples: int = DEFAULT_TEST_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[Estimate, float]:
    """``paired_bootstrap`` over a seeds x items table: the mean of a - b on the same (seed, item) cells, with the
    two-way bootstrap of ``bootstrap_mean_clustered`` (seeds and items resampled) and the same two-sided p-value.
    One seed is the plain paired bootstrap over items."""
    first, second = np.asarray(a_by_seed, dtype=np.float64), np.asarray(b_by_seed, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 2 or first.size == 0:
        raise ValueError(f"paired tables need the same non-empty seeds x items shape, got {first.shape} and "
                         f"{second.shape}")
    if first.shape[0] == 1:
        return paired_bootstrap(first[0], second[0], resamples=resamples, level=level, seed=seed)
    _check_level(level)
    differences = first - second  # [S, n]
    mean = float(differences.mean())
    if np.all(differences == differences.flat[0]):
        return Estimate(mean, mean, mean, n=int(differences.size)), 1.0 if mean == 0.0 else 0.0
    means = _two_way_resampled_means(differences, resamples, seed)  # [R]
    low, high = _percentile_interval(means, level)
    far_side = min(float(np.mean(means <= 0.0)), float(np.mean(means >= 0.0)))
    return Estimate(mean, low, high, n=int(differences.size)), min(1.0, 2.0 * far_side)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    resamples: int = DEFAULT_TEST_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> tuple[Estimate, float]:
    """Mean paired difference ``a - b`` over items, its percentile-bootstrap interval, and a two-sided p-value.

    Method: items are resampled with replacement (pairs kept together) and the mean difference recomputed
    ``resamples`` times. The p-value is ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` over the resampled means d:
    twice the fraction on the far side of zero from the observed difference, which is the smallest two-sided
    level at which the percentile interval excludes zero. Identical inputs give difference 0 and p = 1.
    """
    first, second = _as_values(a, "a"), _as_values(b, "b")
    if first.shape != second.shape:
        raise ValueError(f"paired samples need equal lengths, got {first.size} and {second.size}")
    _check_level(level)
    differences = first - second  # [n]
    mean = float(differences.mean())
    if np.all(differences == differences[0]):  # every resample has the same mean
        return Estimate(mean, mean, mean, n=int(differences.size)), 1.0 if mean == 0.0 else 0.0
    means = _resampled_means(differences, resamples, seed)  # [R]
    low, high = _percentile_interval(means, level)
    far_side = min(float(np.mean(means <= 0.0)), float(np.mean(means >= 0.0)))
    return Estimate(mean, low, high, n=int(differences.size)), min(1.0, 2.0 * far_side)


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value for two binary outcomes on the same items.

    Only discordant items carry information: with ``k`` items where a alone succeeds and ``m`` where b alone
    does, under the null each discordant item is a fair coin, so p = 2 * P(Binomial(k + m, 1/2) <= min(k, m)),
    capped at 1. No discordant items gives p = 1.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**discordant)
