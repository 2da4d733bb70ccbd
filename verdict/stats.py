"""Statistics for selection-then-test, the building blocks: is a difference more than noise?

Pure functions over numpy/pandas (no models, no data loading, no formatting), each number
computed by scipy or statsmodels so it can be checked against them in isolation; metric values
are fractions in [0, 1], as recorded. ``verdict.seed_level`` (variants compared over seeds) and
``verdict.session_level`` (over test rows) are made of them:

- ``mean_interval``: the t-interval of a mean;
- ``paired_ttest`` / ``paired_comparison``: a paired t-test with the mean difference, its
  interval and Cohen's d_z; an undefined test is reported as such, not as "not significant";
- ``adjust_pvalues`` / ``correct_family``: a multiple-comparison correction within a family of
  comparisons (``statsmodels`` ``multipletests``), significance decided on the adjusted p;
- ``mde_effect_size`` / ``minimum_detectable_effect`` / ``family_alpha``: the smallest
  difference a test detects with 80% power (``TTestPower``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from verdict.options import DEFAULT_ALPHA, check_correction

CONFIDENCE = 0.95
POWER = 0.8

# Differences closer than this count as identical: metrics are fractions, so this is far below
# anything a real run distinguishes, and above float noise from subtracting two fractions.
ZERO_SPREAD = 1e-12
ZERO_VARIANCE_NOTE = "differences have zero variance: t-test undefined"
TOO_FEW_NOTE = "fewer than 2 pairs: no test"


def mean_interval(values, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t-interval of the mean of ``values`` (``scipy.stats.ttest_1samp``).

    Args:
        values: the observations (e.g. one variant's per-seed scores).
        confidence: the interval's confidence level.

    Returns:
        (low, high); (nan, nan) for fewer than 2 values; (mean, mean) when all values are equal
        (std 0: the interval has no width).
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    if np.ptp(values) <= ZERO_SPREAD:
        return float(values.mean()), float(values.mean())
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return float(ci.low), float(ci.high)


def paired_ttest(a, b) -> tuple[float, float, str]:
    """scipy's paired t-test of a against b, with a zero-variance difference reported as undefined.

    Args:
        a: values of the compared variant, in pair order.
        b: values of the reference, in the same order.

    Returns:
        (t, p, note); t and p are nan and note says why when the test is undefined.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(diff) < 2:
        return float("nan"), float("nan"), TOO_FEW_NOTE
    if np.ptp(diff) <= ZERO_SPREAD:
        return float("nan"), float("nan"), ZERO_VARIANCE_NOTE
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue), ""


def paired_comparison(a, b, confidence: float = CONFIDENCE) -> dict:
    """Paired comparison of a against b: mean difference, its t-interval, d_z, t and p.

    Args:
        a: values of the compared variant, in pair order.
        b: values of the reference, in the same order.
        confidence: confidence level of the interval of the mean difference.

    Returns:
        ``n_pairs``, ``mean_diff`` (a - b), ``ci_low`` / ``ci_high`` (``ttest_rel``'s interval),
        ``d_z`` (Cohen's d_z: the mean difference over the standard deviation of the
        differences), ``sd_diff``, ``t``, ``p_value`` and ``note``; undefined entries are nan
        and note says why.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    diff = a - b
    n = len(diff)
    nan = float("nan")
    out = {"n_pairs": n, "mean_diff": float(diff.mean()) if n else nan, "ci_low": nan,
           "ci_high": nan, "d_z": nan, "sd_diff": nan, "t": nan, "p_value": nan}
    t, p, note = paired_ttest(a, b)
    out["note"] = note
    if n >= 2:
        out["sd_diff"] = float(diff.std(ddof=1))
    if note:
        return out
    ci = stats.ttest_rel(a, b).confidence_interval(confidence)
    out.update(t=t, p_value=p, ci_low=float(ci.low), ci_high=float(ci.high),
               d_z=out["mean_diff"] / out["sd_diff"])
    return out


def adjust_pvalues(p_values, correction: str = "holm", alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """p-values adjusted for multiple comparisons (statsmodels ``multipletests``).

    Undefined tests (nan p) are not part of the family and stay nan.

    Args:
        p_values: the raw p-values of one family of comparisons.
        correction: ``holm``, ``bonferroni``, ``fdr_bh`` (Benjamini-Hochberg) or ``none``.
        alpha: the family's level (it does not change adjusted p-values; passed through).

    Returns:
        The adjusted p-values, in the input order.
    """
    check_correction(correction)
    p = np.asarray(p_values, dtype=np.float64)
    out = p.copy()
    defined = ~np.isnan(p)
    if correction != "none" and defined.any():
        out[defined] = multipletests(p[defined], alpha=alpha, method=correction)[1]
    return out


def mde_effect_size(n: int, alpha: float, power: float = POWER) -> float:
    """The smallest standardised paired effect (d_z) a two-sided paired t-test over ``n`` pairs
    detects at level ``alpha`` with the given power (statsmodels ``TTestPower``).

    Solved as the one-sided test at alpha / 2: the two-sided test's power less the opposite
    tail's share (below alpha / 2), which statsmodels' two-sided power cannot always evaluate
    for a few seeds at a small corrected alpha.

    Args:
        n: number of pairs (seeds, or sessions).
        alpha: the per-comparison level.
        power: the power wanted.

    Returns:
        d_z, or nan when fewer than 2 pairs or the solver does not reach the power asked.
    """
    if n < 2:
        return float("nan")
    solver = TTestPower()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        effect = solver.solve_power(effect_size=None, nobs=n, alpha=alpha / 2, power=power,
                                    alternative="larger")
        effect = float(np.squeeze(effect))
        reached = solver.power(effect_size=effect, nobs=n, alpha=alpha / 2, alternative="larger")
    if not (np.isfinite(effect) and effect > 0 and abs(float(reached) - power) < 1e-3):
        return float("nan")
    return effect


def minimum_detectable_effect(
    sd_diff: float, n: int, alpha: float, power: float = POWER
) -> float:
    """The minimum detectable difference in metric units: ``mde_effect_size`` times the standard
    deviation of the paired differences.

    Args:
        sd_diff: standard deviation (ddof=1) of the paired differences.
        n: number of pairs.
        alpha: the per-comparison level.
        power: the power wanted.
    """
    if not np.isfinite(sd_diff) or sd_diff <= ZERO_SPREAD:
        return float("nan")
    return float(sd_diff * mde_effect_size(n, alpha, power))


def family_alpha(alpha: float, family_size: int, correction: str) -> float:
    """The per-comparison level at which every correction here rejects whatever the other p-values
    are: alpha / m (Bonferroni, and the first step of Holm and Benjamini-Hochberg), or alpha
    without a correction. The minimum detectable effect is computed at this level.

    Args:
        alpha: the family's level.
        family_size: the number of defined comparisons in the family.
        correction: one of ``verdict.options.CORRECTIONS``.
    """
    check_correction(correction)
    return alpha if correction == "none" else alpha / max(family_size, 1)


def correct_family(
    frame: pd.DataFrame,
    *,
    correction: str,
    alpha: float,
    power: float = POWER,
    by: Sequence[str] = ("dataset",),
    p_column: str = "p_value",
    adjusted_column: str = "p_adjusted",
) -> pd.DataFrame:
    """Adjust ``p_column`` within each family (rows sharing ``by``); mark significance on the
    adjusted p; give the minimum detectable effect of every non-significant defined row.

    Args:
        frame: comparisons with ``p_column``, ``n_pairs`` and ``sd_diff`` columns.
        correction: one of ``verdict.options.CORRECTIONS``.
        alpha: the family's level.
        power: power of the minimum detectable effect.
        by: columns whose values define a family (empty: the whole frame is one).
        p_column: the raw p-values.
        adjusted_column: where the adjusted p-values go.

    Returns:
        A copy with ``adjusted_column``, ``correction``, ``family_size``, ``alpha``,
        ``significant`` and ``mde`` set.
    """
    check_correction(correction)
    out = frame.copy()
    out[adjusted_column] = np.nan
    out["family_size"] = 0
    family = out.groupby(list(by), sort=False).ngroup() if by else pd.Series(0, out.index)
    for label in family.unique():
        index = out.index[family == label]
        p = out.loc[index, p_column].to_numpy(dtype=np.float64)
        out.loc[index, adjusted_column] = adjust_pvalues(p, correction, alpha)
        out.loc[index, "family_size"] = int(np.count_nonzero(~np.isnan(p)))
    out["family_size"] = out["family_size"].astype(int)
    out["correction"] = correction
    out["alpha"] = alpha
    out["significant"] = (out[adjusted_column] < alpha).astype(bool)  # nan < alpha is False
    out["mde"] = [
        minimum_detectable_effect(r.sd_diff, int(r.n_pairs),
                                  family_alpha(alpha, int(r.family_size), correction), power)
        if not r.significant and not np.isnan(getattr(r, p_column)) else float("nan")
        for r in out.itertuples(index=False)
    ]
    return out
