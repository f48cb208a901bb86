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
