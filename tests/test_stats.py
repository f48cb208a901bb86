"""The rank test and the multiple-comparison correction the capstone's verdicts use: known
values, ties, the exact and the approximate forms agreeing, Holm's step-down."""

import pytest

from memorylib.stats import holm, rank_sum_test


def test_rank_sum_exact_known_values():
    assert rank_sum_test([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert rank_sum_test([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx(2 / 252)
    assert rank_sum_test([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert rank_sum_test([1, 3, 5], [2, 4, 6]) == pytest.approx(0.7)
    assert rank_sum_test([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == 1.0       # all tied: no evidence


def test_rank_sum_ties_and_the_normal_approximation_agree_with_the_exact_test():
    a = [0.61, 0.64, 0.64, 0.70, 0.71, 0.73, 0.80, 0.82]
    b = [0.55, 0.58, 0.60, 0.64, 0.66, 0.69, 0.70, 0.72]
    exact = rank_sum_test(a, b)
    approx = rank_sum_test(a, b, max_exact=0)
    assert 0.02 < exact < 0.5 and abs(exact - approx) < 0.03


def test_rank_sum_refuses_empty_or_nan():
    with pytest.raises(ValueError, match="finite values on both sides"):
        rank_sum_test([], [1.0])
    with pytest.raises(ValueError, match="finite values on both sides"):
        rank_sum_test([float("nan")], [1.0])


def test_holm_known_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.02, 0.02, 0.9]) == pytest.approx([0.06, 0.06, 0.9])
    with pytest.raises(ValueError, match="numbers in"):
        holm([1.5])
