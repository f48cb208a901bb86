"""Confidence intervals for accuracies. Introduced in chapter 1.

Answers inside one sequence share a context and are not independent, so the headline interval of
an evaluation is a percentile bootstrap over *sequences* (Efron 1979); per-bin intervals, where a
bin holds answers from many sequences, use the Wilson score interval (Wilson 1927).
"""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when ``trials == 0``."""
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got successes={successes}, trials={trials}")
    if trials == 0:
        return (math.nan, math.nan)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(correct: np.ndarray, counts: np.ndarray, num_resamples: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``sum(correct) / sum(counts)``, resampling sequences.

    correct, counts: (num_sequences,) correct answers and scored answers per sequence.
    """
    correct, counts = np.asarray(correct, float), np.asarray(counts, float)
    if correct.shape != counts.shape or correct.ndim != 1 or len(correct) == 0:
        raise ValueError(f"correct and counts must be equal-length 1-D arrays, got {correct.shape} and {counts.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(num_resamples, len(correct)))
    totals = counts[idx].sum(axis=1)
    stats = correct[idx].sum(axis=1) / np.maximum(totals, 1)
    alpha = (1 - level) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def fisher_exact(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Two-sided Fisher exact test for "is the rate of group a different from group b?", e.g.
    seeds that learned out of seeds trained. Sums the hypergeometric probabilities of every table
    with the same margins that is no more likely than the observed one. Introduced in chapter 4
    (with three seeds per model, 3 of 3 against 0 of 3 gives p = 0.1)."""
    for name, hits, n in (("a", hits_a, n_a), ("b", hits_b, n_b)):
        if not (isinstance(hits, int) and isinstance(n, int) and 0 <= hits <= n):
            raise ValueError(f"group {name}: need integers 0 <= hits <= n, got hits={hits!r}, n={n!r}")
    total_hits, total = hits_a + hits_b, n_a + n_b
    if total == 0:
        raise ValueError("both groups are empty")

    def prob(k: int) -> float:     # P(group a has k hits | margins)
        return math.comb(n_a, k) * math.comb(n_b, total_hits - k) / math.comb(total, total_hits)

    observed = prob(hits_a)
    ks = range(max(0, total_hits - n_b), min(n_a, total_hits) + 1)
    return min(1.0, sum(p for p in map(prob, ks) if p <= observed * (1 + 1e-9)))


def kaplan_meier(durations, censored, times) -> list[float]:
    """Kaplan–Meier estimate of the fraction still alive after each of ``times``: ``durations``
    (how long each item lived, or was watched) and ``censored`` (True: still alive when watching
    stopped, so it only leaves the count at risk). Used for how long tokens stay in the sidecar
    (chapter 8)."""
    d = np.asarray(durations, dtype=float)
    c = np.asarray(censored, dtype=bool)
    if d.shape != c.shape or d.ndim != 1:
        raise ValueError(f"durations and censored must be 1-d of one length, got {d.shape} and {c.shape}")
    events = np.unique(d[~c])
    surv, curve = 1.0, []
    steps = []
    for t in events:
        at_risk = int((d >= t).sum())
        died = int(((d == t) & ~c).sum())
        surv *= 1 - died / at_risk
        steps.append((t, surv))
    for t in times:
        s = 1.0
        for event, value in steps:
            if event <= t:
                s = value
            else:
                break
        curve.append(round(s, 4))
    return curve


def describe(values) -> dict:
    """``{"mean", "std", "min", "max", "n", "values"}`` of a list of numbers (e.g. one accuracy per
    seed): the sample standard deviation (0 for one value), every number rounded to 4 digits."""
    a = np.array(list(values), dtype=float)
    if len(a) == 0:
        raise ValueError("describe needs at least one value")
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return {"mean": round(float(a.mean()), 4), "std": round(std, 4), "min": round(float(a.min()), 4),
            "max": round(float(a.max()), 4), "n": int(len(a)), "values": [round(float(v), 4) for v in a]}


def rank_sum_test(a, b, max_exact: int = 200_000) -> float:
    """Two-sided p-value of the Wilcoxon rank-sum (Mann–Whitney U) test that ``a`` and ``b`` come
    from one distribution: e.g. one held-out accuracy per seed of two models. Exact (every split of
    the pooled ranks, ties given their average rank) when there are at most ``max_exact`` splits,
    else the normal approximation with the tie correction. With 5 values on each side the smallest
    possible p is 2 / 252 = 0.0079 (every value of one above every value of the other)."""
    from itertools import combinations

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if len(a) == 0 or len(b) == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError(f"rank_sum_test needs finite values on both sides, got {len(a)} and {len(b)}")
    pooled = np.concatenate([a, b])
    order = pooled.argsort(kind="mergesort")
    ranks = np.empty(len(pooled))
    ranks[order] = np.arange(1, len(pooled) + 1)
    for value in np.unique(pooled):                       # ties: the average of their ranks
        tied = pooled == value
        ranks[tied] = ranks[tied].mean()
    n, m = len(a), len(b)
    observed = ranks[:n].sum()
    centre = n * (n + m + 1) / 2
    if math.comb(n + m, n) <= max_exact:
        sums = np.array([ranks[list(idx)].sum() for idx in combinations(range(n + m), n)])
        return float(min(1.0, np.mean(np.abs(sums - centre) >= abs(observed - centre) - 1e-9)))
    counts = np.unique(pooled, return_counts=True)[1]
    var = n * m / 12 * ((n + m + 1) - (counts ** 3 - counts).sum() / ((n + m) * (n + m - 1)))
    if var <= 0:
        return 1.0
    z = abs(observed - centre) / math.sqrt(var)
    return float(math.erfc(z / math.sqrt(2)))


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` for multiple comparisons (family-wise error):
    the i-th smallest is multiplied by ``m - i`` (i from 0), made monotone, capped at 1. Compare
    each adjusted value with the level (0.05) as if it were the only test."""
    p = np.asarray(list(pvalues), float)
    if p.ndim != 1 or not ((p >= 0) & (p <= 1)).all():
        raise ValueError(f"pvalues must be numbers in [0, 1], got {list(pvalues)!r}")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for i, j in enumerate(np.argsort(p, kind="mergesort")):
        running = max(running, min(1.0, (m - i) * p[j]))
        adjusted[j] = running
    return [float(x) for x in adjusted]
