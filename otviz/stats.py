r"""Confidence intervals and paired comparisons of results over seeds.

A method trained with seeds :math:`1, \dots, n` gives results :math:`x_1, \dots, x_n`
(e.g. test accuracies). :func:`mean_ci` gives their mean with a Student-t confidence
interval. Two methods trained with the *same* seeds (same data split, labelled subset,
initialisation and minibatch order, see :mod:`otviz.train`) are compared run by run:
:func:`paired_difference` works on the differences :math:`d_i = a_i - b_i`, which
removes the part of the spread that both methods share with their seed, and gives the
mean difference, its confidence interval, and two paired tests of "no difference".

Only numpy and scipy (a dependency of POT) are needed; scipy is imported when a
function is called.

Examples
--------
>>> from otviz.stats import mean_ci, paired_difference
>>> mean_ci([0.90, 0.92, 0.91, 0.93])  # doctest: +ELLIPSIS
(0.915, 0.894..., 0.935...)
>>> r = paired_difference({0: 0.91, 1: 0.93, 2: 0.92}, {0: 0.90, 1: 0.91, 2: 0.915})
>>> r.n, round(r.mean, 4)
(3, 0.0117)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["mean_ci", "paired_difference", "PairedDifference", "holm"]

#: Differences are rounded to this many decimals before testing: accuracies are fractions
#: k / N, and floating-point noise in ``a - b`` must not make equal differences unequal
#: (ties of the Wilcoxon test) or a constant difference vary (the t-test's variance).
_DECIMALS = 12


def _check_confidence(confidence: Any) -> float:
    if (isinstance(confidence, bool) or not isinstance(confidence, numbers.Real)
            or not 0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be a level strictly between 0 and 1 (e.g. 0.95 for a "
                         f"95 % interval), got {confidence!r}")
    return float(confidence)


def _as_values(values: Any, name: str) -> np.ndarray:
    if isinstance(values, (str, bytes, Mapping)):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise ValueError(f"{name} holds non-finite values (NaN or infinite) at positions "
                         f"{bad.tolist()}; drop those runs or fix them first")
    return arr


def _interval(x: np.ndarray, confidence: float) -> tuple[float, float, float]:
    from scipy import stats

    if np.all(x == x[0]):  # no spread (numpy's mean of equal values may be off by an ulp)
        return float(x[0]), float(x[0]), float(x[0])
    n = len(x)
    mean = float(x.mean())
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    r"""Mean of independent results with its Student-t confidence interval.

    For values :math:`x_1, \dots, x_n`,

    .. math::

        \bar x = \frac1n \sum_i x_i, \qquad
        s^2 = \frac{1}{n-1} \sum_i (x_i - \bar x)^2, \qquad
        \bar x \pm t_{(1+c)/2,\, n-1}\, \frac{s}{\sqrt n},

    where :math:`t_{q,\nu}` is the :math:`q`-quantile of Student's t distribution with
    :math:`\nu` degrees of freedom and :math:`c` the confidence level (for :math:`n = 10`
    and :math:`c = 0.95`, :math:`t = 2.262`). The interval assumes the values are
    independent draws of a roughly normal variable (e.g. one run per seed).

    Parameters
    ----------
    values : sequence of float
        The results, at least two, all finite.
    confidence : float, default 0.95
        Coverage of the interval, in (0, 1).

    Returns
    -------
    mean, low, high : float
        :math:`\bar x` and the interval's bounds; ``low == high == mean`` when every value
        is the same.

    Raises
    ------
    ValueError
        Fewer than two values (one value has no spread to estimate: the interval would be
        undefined), a non-finite value, or a confidence outside (0, 1).
    TypeError
        Values that are not numbers.

    Examples
    --------
    >>> mean_ci([1.0, 2.0, 3.0])  # t_{0.975, 2} = 4.303, s = 1  # doctest: +ELLIPSIS
    (2.0, -0.484..., 4.484...)
    """
    confidence = _check_confidence(confidence)
    x = _as_values(values, "values")
    if len(x) < 2:
        raise ValueError(f"a confidence interval needs at least 2 values (runs with different "
                         f"seeds), got {len(x)}; run more seeds")
    return _interval(x, confidence)


@dataclass(frozen=True)
class PairedDifference:
    r"""The paired comparison of two methods over the same seeds (:func:`paired_difference`).

    Attributes
    ----------
    n : int
        Number of pairs (seeds).
    mean : float
        Mean difference :math:`\bar d` (first minus second).
    low, high : float
        Student-t confidence interval of the mean difference.
    p_ttest : float
        Two-sided p-value of the paired t-test of :math:`E[d] = 0`.
    p_wilcoxon : float
        Two-sided p-value of the Wilcoxon signed-rank test of a distribution of
        :math:`d` symmetric about 0.
    confidence : float
        Level of the interval.
    seeds : tuple or None
        The seeds matched, in sorted order, when the inputs were dicts.
    """

    n: int
    mean: float
    low: float
    high: float
    p_ttest: float
    p_wilcoxon: float
    confidence: float = 0.95
    seeds: tuple | None = None

    @property
    def excludes_zero(self) -> bool:
        """Whether the confidence interval lies entirely above or entirely below 0."""
        return self.low > 0.0 or self.high < 0.0

    def __str__(self) -> str:
        return (f"mean difference {self.mean:+.4g} over {self.n} pairs, "
                f"{100 * self.confidence:g} % CI [{self.low:+.4g}, {self.high:+.4g}], "
                f"paired t-test p = {self.p_ttest:.3g}, Wilcoxon p = {self.p_wilcoxon:.3g}")


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, tuple | None]:
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError("pass two dicts seed -> value, or two aligned sequences, not one of each")
    if isinstance(a, Mapping):
        only_a = sorted(set(a) - set(b), key=repr)
        only_b = sorted(set(b) - set(a), key=repr)
        if only_a or only_b:
            parts = []
            if only_b:
                parts.append(f"seeds {only_b} are missing from the first")
            if only_a:
                parts.append(f"seeds {only_a} are missing from the second")
            raise ValueError("a paired comparison needs the same seeds on both sides: "
                             + " and ".join(parts) + "; run them, or drop them from the other side")
        try:
            seeds = tuple(sorted(a))
        except TypeError:
            seeds = tuple(a)
        return (_as_values([a[s] for s in seeds], "first values"),
                _as_values([b[s] for s in seeds], "second values"), seeds)
    xa, xb = _as_values(a, "first values"), _as_values(b, "second values")
    if len(xa) != len(xb):
        raise ValueError(f"paired sequences must have the same length (one value per seed, in the "
                         f"same seed order), got {len(xa)} and {len(xb)}")
    return xa, xb, None


def paired_difference(a: Mapping[Any, float] | Sequence[float], b: Mapping[Any, float] | Sequence[float],
                      confidence: float = 0.95) -> PairedDifference:
    r"""Compare two methods run with the same seeds, pair by pair.

    With the differences :math:`d_i = a_i - b_i` of the runs sharing seed :math:`i`
    (:math:`n` pairs):

    - mean and confidence interval: :func:`mean_ci` of the :math:`d_i`,
      :math:`\bar d \pm t_{(1+c)/2,\, n-1}\, s_d / \sqrt n`;
    - paired t-test: :math:`t = \bar d \,/\, (s_d / \sqrt n)` with :math:`n - 1` degrees
      of freedom, two-sided :math:`p = 2\,P(T_{n-1} \ge |t|)`
      (``scipy.stats.ttest_rel``);
    - Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, zeros discarded: Wilcox's
      convention): ranks :math:`R_i` of :math:`|d_i|` over the nonzero differences,
      :math:`W^+ = \sum_{d_i > 0} R_i`; two-sided p-value from the exact null distribution
      of :math:`W^+` (up to 50 pairs without ties or zeros), from all :math:`2^n` sign flips
      (ties or zeros, up to 13 pairs), else from the normal approximation (scipy's
      ``method="auto"``). It does not assume normal differences, but its p-value cannot go
      below :math:`2 / 2^{n}` (0.0625 for 5 pairs, 0.002 for 10).

    Differences are rounded to 12 decimals first, so that floating-point noise does not turn
    equal differences of accuracies into unequal ones. When every difference is the same
    (:math:`s_d = 0`) the t statistic is undefined: the p-value is then its limit, 1 if the
    differences are all 0 and 0 otherwise. When every difference is 0 the Wilcoxon p-value
    is 1 (no evidence of a difference), without calling scipy (which would warn).

    Parameters
    ----------
    a, b : dict seed -> float, or sequences of float
        Results of the two methods: two dicts keyed by seed (matched on their keys, which
        must be the same), or two sequences aligned on the same seeds.
    confidence : float, default 0.95
        Level of the interval of the mean difference.

    Returns
    -------
    PairedDifference
        ``n``, ``mean``, ``low``, ``high``, ``p_ttest``, ``p_wilcoxon`` (of ``a - b``).

    Raises
    ------
    ValueError
        Dicts with different seeds (the message names the seeds missing on each side),
        sequences of different lengths, fewer than two pairs, non-finite values, or a
        confidence outside (0, 1).
    TypeError
        A dict with a sequence, or values that are not numbers.

    Examples
    --------
    >>> r = paired_difference([0.91, 0.93, 0.92, 0.94], [0.90, 0.91, 0.92, 0.92])
    >>> round(r.mean, 4), r.excludes_zero
    (0.0125, False)
    """
    from scipy import stats

    confidence = _check_confidence(confidence)
    xa, xb, seeds = _pair(a, b)
    n = len(xa)
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 pairs (seeds), got {n}; run more seeds")
    d = np.round(xa - xb, _DECIMALS)
    mean, low, high = _interval(d, confidence)
    if np.all(d == d[0]):  # no spread: t = d / 0
        p_t = 1.0 if d[0] == 0 else 0.0
    else:
        p_t = float(stats.ttest_1samp(d, 0.0).pvalue)
    if np.all(d == 0):
        p_w = 1.0
    else:
        p_w = float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)
    return PairedDifference(n=n, mean=mean, low=low, high=high, p_ttest=p_t, p_wilcoxon=p_w,
                            confidence=confidence, seeds=seeds)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    r"""Holm's step-down adjustment of a family of p-values (family-wise error control).

    With the :math:`m` p-values sorted increasingly, :math:`p_{(1)} \le \dots \le p_{(m)}`,
    the adjusted values are

    .. math::
        \tilde p_{(i)} = \min\Big(1,\ \max_{j \le i}\, (m - j + 1)\, p_{(j)}\Big),

    returned in the input's order. Rejecting every hypothesis with
    :math:`\tilde p \le \alpha` keeps the probability of any false rejection in the
    family at most :math:`\alpha`, whatever the dependence between the tests (Holm 1979).
    NaN p-values (a comparison that could not be made) stay NaN and do not count in
    :math:`m`.

    Parameters
    ----------
    pvalues : sequence of float
        The family's p-values, each in [0, 1] or NaN.

    Returns
    -------
    numpy.ndarray
        The adjusted p-values (float64), same length and order.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be a 1-d sequence, got shape {p.shape}")
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[ok][(p[ok] < 0) | (p[ok] > 1)][:3].tolist()}")
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(ok)
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out
