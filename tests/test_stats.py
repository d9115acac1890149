"""Tests of otviz.stats: confidence intervals and paired comparisons over seeds."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from otviz.stats import PairedDifference, mean_ci, paired_difference

# Student's sleep data (Cushny & Peebles, 1905): extra hours of sleep of 10 patients under two
# drugs. The paired t-test is the textbook example (R: t.test(extra ~ group, data = sleep,
# paired = TRUE): t = -4.0621, df = 9, p-value = 0.002833, 95 % CI -2.4598858 -0.7001142).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def test_mean_ci_textbook_quantiles():
    # n = 3: s = 1, t_{0.975, 2} = 4.3027 -> half width 4.3027 / sqrt(3) = 2.4841
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert low == pytest.approx(2.0 - 2.48414, abs=1e-4) and high == pytest.approx(2.0 + 2.48414, abs=1e-4)
    # n = 10 at 95 %: t_{0.975, 9} = 2.2622; at 90 %: t_{0.95, 9} = 1.8331
    x = np.array(SLEEP_2) - np.array(SLEEP_1)
    se = x.std(ddof=1) / math.sqrt(10)
    m, lo, hi = mean_ci(x)
    assert m == pytest.approx(1.58) and hi - m == pytest.approx(2.2622 * se, rel=1e-4)
    m, lo, hi = mean_ci(x, confidence=0.90)
    assert hi - m == pytest.approx(1.8331 * se, rel=1e-4) and m - lo == pytest.approx(hi - m)


def test_mean_ci_matches_scipy_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(0.9, 0.02, size=12)
    lo, hi = stats.t.interval(0.95, df=11, loc=x.mean(), scale=stats.sem(x))
    assert mean_ci(list(x)) == pytest.approx((x.mean(), lo, hi))


def test_mean_ci_constant_values_have_a_zero_width_interval():
    assert mean_ci([0.875, 0.875, 0.875]) == (0.875, 0.875, 0.875)


@pytest.mark.parametrize("values,confidence,error,match", [
    ([0.9], 0.95, ValueError, "at least 2 values"),
    ([], 0.95, ValueError, "at least 2 values"),
    ([0.9, float("nan")], 0.95, ValueError, "non-finite .* positions \\[1\\]"),
    ([0.9, 0.8], 1.0, ValueError, "strictly between 0 and 1"),
    ([0.9, 0.8], 0, ValueError, "strictly between 0 and 1"),
    ([[0.9, 0.8]], 0.95, ValueError, "one-dimensional"),
    ("0.9", 0.95, TypeError, "sequence of numbers"),
    ({0: 0.9, 1: 0.8}, 0.95, TypeError, "sequence of numbers"),
])
def test_mean_ci_rejects_bad_input(values, confidence, error, match):
    with pytest.raises(error, match=match):
        mean_ci(values, confidence=confidence)


def test_paired_difference_on_student_sleep_data():
    r = paired_difference(SLEEP_2, SLEEP_1)
    assert isinstance(r, PairedDifference)
    assert r.n == 10 and r.mean == pytest.approx(1.58)
    assert (r.low, r.high) == pytest.approx((0.7001142, 2.4598858), abs=1e-6)
    assert r.p_ttest == pytest.approx(0.002833, abs=1e-6)
    assert r.p_ttest == pytest.approx(stats.ttest_rel(SLEEP_2, SLEEP_1).pvalue)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(np.round(np.subtract(SLEEP_2, SLEEP_1), 12)).pvalue)
    assert r.excludes_zero and r.seeds is None
    # the other way round: the signs flip, the p-values stay
    s = paired_difference(SLEEP_1, SLEEP_2)
    assert (s.mean, s.low, s.high) == pytest.approx((-r.mean, -r.high, -r.low))
    assert (s.p_ttest, s.p_wilcoxon) == pytest.approx((r.p_ttest, r.p_wilcoxon))
    assert "+1.58" in str(r) and "95 % CI" in str(r)


def test_paired_difference_matches_seeds_of_dicts_whatever_their_order():
    a = {seed: v for seed, v in zip(range(10), SLEEP_2)}
    b = {seed: v for seed, v in reversed(list(zip(range(10), SLEEP_1)))}
    r = paired_difference(a, b)
    assert r.seeds == tuple(range(10))
    assert (r.mean, r.low, r.high, r.p_ttest) == pytest.approx(
        (paired_difference(SLEEP_2, SLEEP_1).mean, 0.7001142, 2.4598858, 0.002833), abs=1e-6)


def test_wilcoxon_exact_p_value_of_ten_positive_differences():
    # W- = 0 over 10 distinct nonzero differences: two-sided exact p = 2 / 2^10
    a = [0.80 + 0.01 * i for i in range(10)]
    b = [v - 0.001 * (i + 1) for i, v in enumerate(a)]
    r = paired_difference(a, b)
    assert r.p_wilcoxon == pytest.approx(2 / 1024)
    assert r.mean == pytest.approx(0.0055) and r.low > 0


def test_all_zero_differences_give_p_one_without_warnings():
    a = [0.9, 0.85, 0.875, 0.8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = paired_difference(a, list(a))
    assert (r.n, r.mean, r.low, r.high) == (4, 0.0, 0.0, 0.0)
    assert r.p_ttest == 1.0 and r.p_wilcoxon == 1.0 and not r.excludes_zero


def test_constant_differences_despite_floating_point_noise():
    # 0.2 - 0.1 = 0.1 but 0.3 - 0.2 = 0.09999999999999998: the same difference of accuracies
    a, b = [0.2, 0.3, 0.5], [0.1, 0.2, 0.4]
    assert len({x - y for x, y in zip(a, b)}) > 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = paired_difference(a, b)
    assert r.mean == pytest.approx(0.1) and r.low == r.high == r.mean
    assert r.p_ttest == 0.0  # the limit of t = d / (0 / sqrt(n))
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon([0.1, 0.1, 0.1]).pvalue)


def test_mismatched_seeds_are_named():
    with pytest.raises(ValueError, match=r"seeds \[3, 4\] are missing from the second") as err:
        paired_difference({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.6, 4: 0.5}, {0: 0.9, 1: 0.8, 2: 0.7, 7: 0.1})
    assert "seeds [7] are missing from the first" in str(err.value)


@pytest.mark.parametrize("a,b,error,match", [
    ([0.9, 0.8, 0.7], [0.9, 0.8], ValueError, "same length"),
    ({0: 0.9, 1: 0.8}, [0.9, 0.8], TypeError, "not one of each"),
    ([0.9], [0.8], ValueError, "at least 2 pairs"),
    ([0.9, float("inf")], [0.8, 0.7], ValueError, "non-finite"),
    ([0.9, "x"], [0.8, 0.7], TypeError, "sequence of numbers"),
])
def test_paired_difference_rejects_bad_input(a, b, error, match):
    with pytest.raises(error, match=match):
        paired_difference(a, b)


def test_paired_difference_rejects_bad_confidence():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        paired_difference([0.9, 0.8], [0.8, 0.7], confidence=95)
