"""Statistics for selection-then-test: is a variant's difference from another more than noise?

Statistics only: pure functions over pandas/numpy (no models, no data loading, no formatting),
each number computed by scipy or statsmodels so it can be checked against them in isolation.
Metric values are fractions in [0, 1], as recorded.

Seed level (a variant's test score per training seed; every variant uses the same seeds):

- ``summarize``: mean, sample std and the 95% t-interval of the mean over seeds;
- ``paired_tests``: each variant vs the baseline, paired by seed value: the mean difference
  with its 95% interval (``scipy.stats.ttest_rel``), Cohen's d_z, raw and corrected p
  (``statsmodels`` ``multipletests`` over the family variants x metrics) and, where the
  difference is not significant, the minimum detectable effect (``TTestPower``);
- ``anova``: repeated-measures ANOVA with seed as the subject (``AnovaRM``), Friedman's test,
  and the one-way ANOVA that ignores the pairing (reference only);
- ``posthoc_tests``: every pair of variants, paired t-tests with the same correction;
- ``ablation_tests``: each ablation arm of a variant vs its full (selected) configuration.

Session level (each test row's metric averaged over a variant's seeds): ``row_level_tests`` /
``session_tests``, a paired randomization (sign-flip) test and a bootstrap interval of the mean
difference, seeded, with the paired t-test beside them and Wilcoxon as a supplement.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.anova import AnovaRM
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from hpo.options import CORRECTIONS, DEFAULT_ALPHA
from models.metrics import METRIC_NAMES as METRICS
from models.metrics import row_metrics

KEYS = ("dataset", "variant", "seed")
FULL_ARM = "full"  # the `arm` of a selected configuration retrained as it is
SESSION_LEVEL = "session (rows; not independent of the seed-level test, use when seeds are few)"
CONFIDENCE = 0.95
POWER = 0.8
N_RESAMPLES = 10_000
# Resampled values held in memory at once by the randomization and bootstrap tests (float64).
RESAMPLE_BATCH_VALUES = 20_000_000

# Differences closer than this count as identical: metrics are fractions, so this is far below
# anything a real run distinguishes, and above float noise from subtracting two fractions.
_ZERO_SPREAD = 1e-12
ZERO_VARIANCE_NOTE = "differences have zero variance: t-test undefined"
NO_DIFFERENCE_NOTE = "all differences are zero: tests undefined"
TOO_FEW_NOTE = "fewer than 2 pairs: no test"
NO_RESIDUAL_NOTE = "no residual variance: repeated-measures F undefined"
NO_RANK_NOTE = "all variants tie within every seed: Friedman undefined"

COMPARISON_COLUMNS = [
    "n_pairs", "mean_diff", "ci_low", "ci_high", "d_z", "t", "p_value", "p_adjusted",
    "correction", "family_size", "alpha", "significant", "mde", "note",
]


# ---------------------------------------------------------------- inputs


def check_seed_results(seed_results: pd.DataFrame) -> pd.DataFrame:
    """The key and metric columns of the per-seed frame, validated; extra columns are dropped.

    Args:
        seed_results: one row per (dataset, variant, seed) with a column per metric in
            ``METRICS``; other columns (run ids, epochs) are ignored.

    Returns:
        The frame restricted to ``KEYS`` and ``METRICS``, index reset.

    Raises:
        ValueError: a column is missing, a key appears twice, or a metric is not finite.
    """
    missing = [c for c in (*KEYS, *METRICS) if c not in seed_results.columns]
    if missing:
        raise ValueError(f"seed_results lacks columns {missing}")
    frame = seed_results.loc[:, [*KEYS, *METRICS]].reset_index(drop=True)
    if frame.empty:
        raise ValueError("seed_results is empty")
    duplicated = frame.duplicated(list(KEYS), keep=False)
    if duplicated.any():
        dupes = frame.loc[duplicated, list(KEYS)].drop_duplicates().to_dict("records")
        raise ValueError(f"seed_results has more than one row for {dupes}")
    values = frame[list(METRICS)].to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        bad = frame.loc[~np.isfinite(values).all(axis=1), list(KEYS)].to_dict("records")
        raise ValueError(
            f"seed_results has non-finite metric values for {bad}: "
            "rerun or drop those seeds rather than averaging over them"
        )
    return frame


def check_correction(correction: str) -> str:
    """The correction name, or ValueError listing the accepted ones.

    Args:
        correction: one of ``CORRECTIONS``.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; expected one of {CORRECTIONS}")
    return correction


# ---------------------------------------------------------------- building blocks


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
    if np.ptp(values) <= _ZERO_SPREAD:
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
    if np.ptp(diff) <= _ZERO_SPREAD:
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
    if not np.isfinite(sd_diff) or sd_diff <= _ZERO_SPREAD:
        return float("nan")
    return float(sd_diff * mde_effect_size(n, alpha, power))


def family_alpha(alpha: float, family_size: int, correction: str) -> float:
    """The per-comparison level at which every correction here rejects whatever the other p-values
    are: alpha / m (Bonferroni, and the first step of Holm and Benjamini-Hochberg), or alpha
    without a correction. The minimum detectable effect is computed at this level.

    Args:
        alpha: the family's level.
        family_size: the number of defined comparisons in the family.
        correction: one of ``CORRECTIONS``.
    """
    check_correction(correction)
    return alpha if correction == "none" else alpha / max(family_size, 1)


def correct_family(
    frame: pd.DataFrame,
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
        correction: one of ``CORRECTIONS``.
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


# ---------------------------------------------------------------- seed level


def summarize(seed_results: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and the t-interval of the mean over seeds, per dataset, variant
    and metric.

    Args:
        seed_results: see ``check_seed_results``.
        confidence: confidence level of the interval.

    Returns:
        Columns dataset, variant, metric, mean, std, n_seeds, ci_low, ci_high.
    """
    frame = check_seed_results(seed_results)
    long = frame.melt(id_vars=list(KEYS), value_vars=list(METRICS), var_name="metric")
    rows = []
    for (dataset, variant, metric), group in long.groupby(
        ["dataset", "variant", "metric"], sort=False
    ):
        values = group["value"].to_numpy(dtype=np.float64)
        low, high = mean_interval(values, confidence)
        rows.append({
            "dataset": dataset, "variant": variant, "metric": metric,
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            "n_seeds": len(values), "ci_low": low, "ci_high": high,
        })
    return _in_metric_order(pd.DataFrame(rows), ["dataset", "variant"])


def paired_tests(
    seed_results: pd.DataFrame,
    baseline: str = "trm",
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> pd.DataFrame:
    """Every variant against the baseline, per dataset and metric, seeds paired by seed value.

    The family of the correction is, per dataset, every (variant, metric) comparison in the
    table: variants other than the baseline x ``METRICS``.

    Args:
        seed_results: see ``check_seed_results``.
        baseline: the variant every other one is compared with.
        alpha: the family's level; significant means adjusted p < alpha.
        correction: one of ``CORRECTIONS``.
        confidence: confidence level of the interval of the difference.
        power: power of the minimum detectable effect.

    Returns:
        One row per (dataset, variant, metric): dataset, variant, baseline, metric and
        ``COMPARISON_COLUMNS`` (mean_diff = variant - baseline; mde only where not significant).

    Raises:
        ValueError: the baseline has no results on a dataset, or a variant shares fewer than 2
            seeds with it.
    """
    check_correction(correction)
    frame = check_seed_results(seed_results)
    rows = []
    for dataset, per_dataset in frame.groupby("dataset", sort=False):
        variants = list(dict.fromkeys(per_dataset["variant"]))
        if baseline not in variants:
            raise ValueError(
                f"baseline {baseline!r} has no results on dataset {dataset!r}; "
                f"available variants: {variants}"
            )
        for variant in variants:
            if variant == baseline:
                continue
            rows += _metric_comparisons(
                per_dataset, variant, baseline, confidence,
                {"dataset": dataset, "variant": variant, "baseline": baseline},
            )
    columns = ["dataset", "variant", "baseline", "metric", *COMPARISON_COLUMNS]
    return _finish_comparisons(rows, columns, correction, alpha, power, by=("dataset",))


def posthoc_tests(
    seed_results: pd.DataFrame,
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> pd.DataFrame:
    """All-pairs paired t-tests between variants, for datasets with more than two variants.

    The family of the correction is, per dataset, every (pair, metric): C(variants, 2) x
    ``METRICS``. Pairs follow the variants' order of appearance; mean_diff is a - b.

    Args:
        seed_results: see ``check_seed_results``.
        alpha: the family's level.
        correction: one of ``CORRECTIONS``.
        confidence: confidence level of the interval of the difference.
        power: power of the minimum detectable effect.

    Returns:
        One row per (dataset, variant_a, variant_b, metric) with ``COMPARISON_COLUMNS``.
    """
    check_correction(correction)
    frame = check_seed_results(seed_results)
    rows = []
    for dataset, per_dataset in frame.groupby("dataset", sort=False):
        variants = list(dict.fromkeys(per_dataset["variant"]))
        if len(variants) <= 2:
            continue
        for a, b in itertools.combinations(variants, 2):
            rows += _metric_comparisons(
                per_dataset, a, b, confidence,
                {"dataset": dataset, "variant_a": a, "variant_b": b},
            )
    columns = ["dataset", "variant_a", "variant_b", "metric", *COMPARISON_COLUMNS]
    return _finish_comparisons(rows, columns, correction, alpha, power, by=("dataset",))


ANOVA_COLUMNS = [
    "dataset", "metric", "n_variants", "n_seeds", "F_rm", "df_num", "df_den", "p_rm",
    "friedman_chi2", "p_friedman", "F_oneway", "p_oneway", "note",
]


def anova(seed_results: pd.DataFrame) -> pd.DataFrame:
    """Omnibus tests across variants that respect the seed pairing, for datasets with more than
    two variants.

    Per dataset and metric: the repeated-measures ANOVA with seed as the subject and variant as
    the within factor (statsmodels ``AnovaRM``: a seed effect shared by every variant is removed
    before variants are compared) and Friedman's rank test (``scipy.stats.friedmanchisquare``),
    both over the seeds every variant has; and, for reference only, the one-way ANOVA
    (``scipy.stats.f_oneway``) that treats seeds as independent groups.

    Args:
        seed_results: see ``check_seed_results``.

    Returns:
        Columns ``ANOVA_COLUMNS``; undefined statistics are nan and ``note`` says why.
    """
    frame = check_seed_results(seed_results)
    rows = []
    for dataset, per_dataset in frame.groupby("dataset", sort=False):
        variants = list(dict.fromkeys(per_dataset["variant"]))
        if len(variants) <= 2:
            continue
        shared = set.intersection(
            *(set(per_dataset.loc[per_dataset["variant"] == v, "seed"]) for v in variants))
        balanced = per_dataset[per_dataset["seed"].isin(shared)]
        for metric in METRICS:
            wide = balanced.pivot(index="seed", columns="variant", values=metric)[variants]
            groups = [g[metric].to_numpy(dtype=np.float64)
                      for _, g in per_dataset.groupby("variant", sort=False)]
            f_one, p_one = _one_way_anova(groups)
            row = {"dataset": dataset, "metric": metric, "n_variants": len(variants),
                   "n_seeds": len(wide), "F_oneway": f_one, "p_oneway": p_one}
            row.update(_repeated_measures(wide))
            rows.append(row)
    return pd.DataFrame(rows, columns=ANOVA_COLUMNS)


def _repeated_measures(wide: pd.DataFrame) -> dict:
    """AnovaRM and Friedman on a [seed x variant] table of one metric."""
    nan = float("nan")
    out = {"F_rm": nan, "df_num": nan, "df_den": nan, "p_rm": nan,
           "friedman_chi2": nan, "p_friedman": nan}
    notes = []
    if len(wide) < 2:
        return {**out, "note": f"{len(wide)} seed(s) shared by every variant: no test"}
    values = wide.to_numpy(dtype=np.float64)
    # Residual of the additive seed + variant model: all zero means F = 0/0 (AnovaRM would
    # print a float-noise F instead).
    residual = values - values.mean(axis=0) - values.mean(axis=1, keepdims=True) + values.mean()
    if np.abs(residual).max() <= _ZERO_SPREAD:
        notes.append(NO_RESIDUAL_NOTE)
    else:
        long = wide.reset_index().melt(id_vars="seed", var_name="variant", value_name="value")
        table = AnovaRM(long, "value", "seed", within=["variant"]).fit().anova_table
        out.update(F_rm=float(table["F Value"].iloc[0]), df_num=float(table["Num DF"].iloc[0]),
                   df_den=float(table["Den DF"].iloc[0]), p_rm=float(table["Pr > F"].iloc[0]))
    if all(np.ptp(row) <= _ZERO_SPREAD for row in values):
        notes.append(NO_RANK_NOTE)
    else:
        result = stats.friedmanchisquare(*values.T)
        out.update(friedman_chi2=float(result.statistic), p_friedman=float(result.pvalue))
    return {**out, "note": "; ".join(notes)}


def _one_way_anova(groups: list[np.ndarray]) -> tuple[float, float]:
    """scipy's f_oneway, or (nan, nan) when no within-group variation exists to compare against."""
    within_df = sum(len(g) for g in groups) - len(groups)
    within_spread = max(float(np.ptp(g)) for g in groups)
    if within_df < 1 or within_spread <= _ZERO_SPREAD:
        return float("nan"), float("nan")
    result = stats.f_oneway(*groups)
    return float(result.statistic), float(result.pvalue)


ABLATION_COLUMNS = [
    "dataset", "variant", "arm", "metric", "n_seeds", "mean", "std", "ci_low", "ci_high",
    "mean_diff", "diff_ci_low", "diff_ci_high", "d_z", "t", "p_value", "p_adjusted",
    "correction", "family_size", "alpha", "significant", "mde", "note",
]


def ablation_tests(
    arm_results: pd.DataFrame,
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    confidence: float = CONFIDENCE,
    power: float = POWER,
    skipped: Mapping[tuple[str, str, str], str] | None = None,
) -> pd.DataFrame:
    """Each ablation arm of a variant against its full configuration, seeds paired by value.

    The family of the correction is, per dataset, every (variant, arm, metric) comparison of
    the table.

    Args:
        arm_results: per-seed results with an ``arm`` column (``FULL_ARM`` for the selected
            configuration) besides ``KEYS`` and ``METRICS``.
        alpha: the family's level.
        correction: one of ``CORRECTIONS``.
        confidence: confidence level of the intervals.
        power: power of the minimum detectable effect.
        skipped: (dataset, variant, arm) -> why the arm was not trained (e.g. the selected
            configuration already is that arm); listed with nan statistics.

    Returns:
        Per (dataset, variant): the full configuration's rows, then each arm's, one per metric,
        with ``ABLATION_COLUMNS`` (mean_diff = arm - full; the full rows carry no test).
    """
    check_correction(correction)
    if "arm" not in arm_results.columns:
        raise ValueError("arm_results lacks the 'arm' column")
    rows = []
    for (dataset, variant), per_variant in arm_results.groupby(["dataset", "variant"],
                                                               sort=False):
        arms = list(dict.fromkeys(per_variant["arm"]))
        not_trained = {arm: why for (d, v, arm), why in (skipped or {}).items()
                       if (d, v) == (dataset, variant)}
        if arms == [FULL_ARM] and not not_trained:
            continue  # no arm applies to this variant
        if FULL_ARM not in arms:
            raise ValueError(f"{dataset}/{variant}: no {FULL_ARM!r} rows to compare arms with")
        frames = {arm: check_seed_results(per_variant[per_variant["arm"] == arm])
                  for arm in arms}
        summary = {arm: summarize(f, confidence).set_index("metric") for arm, f in frames.items()}
        for arm in [FULL_ARM, *(a for a in arms if a != FULL_ARM)]:
            pairs = None
            if arm != FULL_ARM:
                pairs = frames[arm].merge(frames[FULL_ARM], on="seed", suffixes=("", "_ref"))
                pairs = pairs.sort_values("seed")
            for metric in METRICS:
                s = summary[arm].loc[metric]
                row = {"dataset": dataset, "variant": variant, "arm": arm, "metric": metric,
                       "n_seeds": int(s["n_seeds"]), "mean": s["mean"], "std": s["std"],
                       "ci_low": s["ci_low"], "ci_high": s["ci_high"], "n_pairs": 0,
                       "sd_diff": float("nan"), "p_value": float("nan"), "note": ""}
                if pairs is not None:
                    c = paired_comparison(pairs[metric], pairs[f"{metric}_ref"], confidence)
                    row.update({**c, "diff_ci_low": c["ci_low"], "diff_ci_high": c["ci_high"],
                                "ci_low": s["ci_low"], "ci_high": s["ci_high"]})
                rows.append(row)
        for arm, why in not_trained.items():
            rows += [{"dataset": dataset, "variant": variant, "arm": arm, "metric": m,
                      "n_seeds": 0, "n_pairs": 0, "sd_diff": float("nan"),
                      "p_value": float("nan"), "note": why} for m in METRICS]
    if not rows:
        return pd.DataFrame(columns=ABLATION_COLUMNS)
    frame = correct_family(pd.DataFrame(rows), correction, alpha, power, by=("dataset",))
    return frame.reindex(columns=ABLATION_COLUMNS).reset_index(drop=True)


def _pairs(per_dataset: pd.DataFrame, variant: str, reference: str, dataset) -> pd.DataFrame:
    """Rows of `variant` joined to `reference` on seed value (reference columns end in _ref)."""
    mine = per_dataset[per_dataset["variant"] == variant]
    ref = per_dataset[per_dataset["variant"] == reference]
    pairs = mine.merge(ref, on="seed", suffixes=("", "_ref")).sort_values("seed")
    if len(pairs) < 2:
        raise ValueError(
            f"variant {variant!r} on dataset {dataset!r} shares {len(pairs)} seed(s) "
            f"with {reference!r} (needs >= 2 for a paired t-test): "
            f"variant seeds {sorted(mine['seed'].tolist())}, "
            f"{reference!r} seeds {sorted(ref['seed'].tolist())}"
        )
    return pairs


def _metric_comparisons(
    per_dataset: pd.DataFrame, variant: str, reference: str, confidence: float, keys: dict
) -> list[dict]:
    """``paired_comparison`` of ``variant`` against ``reference`` for every metric, each row
    starting with ``keys`` (its dataset and the two variants' names)."""
    pairs = _pairs(per_dataset, variant, reference, keys["dataset"])
    return [
        {**keys, "metric": metric,
         **paired_comparison(pairs[metric], pairs[f"{metric}_ref"], confidence)}
        for metric in METRICS
    ]


def _finish_comparisons(rows, columns, correction, alpha, power, by) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = correct_family(pd.DataFrame(rows), correction, alpha, power, by=by)
    return frame[columns].reset_index(drop=True)


# ---------------------------------------------------------------- session level


def randomization_test(
    diff, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> float:
    """Two-sided paired randomization (sign-flip) test of mean(diff) = 0.

    Under the null each paired difference is symmetric about 0, so its sign is a fair coin
    whatever its size. ``scipy.stats.monte_carlo_test`` computes the p-value with the signs as
    the data: the observed signs against signs drawn as fair coins from a seeded
    ``numpy.random.Generator`` (batched, vectorised), each set of signs scored by the mean
    difference it gives the observed magnitudes. This is the null of
    ``scipy.stats.permutation_test(..., permutation_type='samples')`` on one sample, whose
    per-observation Python loop takes minutes at 100k sessions. Zero differences are left out:
    their sign changes nothing, and the p-value of the mean is the same without them.

    Args:
        diff: paired differences (e.g. per-session metric of a variant minus the baseline's).
        n_resamples: random sign flips drawn.
        seed: seed of the generator; the same seed gives the same p-value.

    Returns:
        The p-value; nan when every difference is zero.
    """
    diff = np.asarray(diff, dtype=np.float64)
    nonzero = diff[np.abs(diff) > _ZERO_SPREAD]
    if nonzero.size == 0:
        return float("nan")
    magnitude = np.abs(nonzero)
    total = magnitude.sum()
    rng = np.random.default_rng(seed)

    def mean_difference(positive, axis=-1):  # positive: 1 where the sign is +, [..., n]
        return (2.0 * (positive @ magnitude) - total) / magnitude.size

    def fair_signs(size):  # size = (batch, n); 8 coins per random byte
        batch, n = size
        random_bytes = rng.integers(0, 256, size=(batch, (n + 7) // 8), dtype=np.uint8)
        return np.unpackbits(random_bytes, axis=1, count=n)

    result = stats.monte_carlo_test(
        (nonzero > 0).astype(np.uint8), fair_signs, mean_difference, vectorized=True,
        n_resamples=n_resamples, batch=_batch(nonzero.size, n_resamples),
    )
    return float(result.pvalue)


def bootstrap_interval(
    diff, n_resamples: int = N_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(diff) (``scipy.stats.bootstrap``, seeded, batched).

    Percentile rather than scipy's default BCa: BCa's jackknife costs n^2 at 100k sessions, and
    at thousands of sessions the mean's bootstrap distribution is close to symmetric.

    Args:
        diff: paired differences.
        n_resamples: bootstrap resamples.
        seed: seed of the ``numpy.random.Generator``.
        confidence: confidence level.

    Returns:
        (low, high); (d, d) when every difference equals d; nan for fewer than 2 differences.
    """
    diff = np.asarray(diff, dtype=np.float64)
    if diff.size < 2:
        return float("nan"), float("nan")
    if np.ptp(diff) <= _ZERO_SPREAD:
        return float(diff.mean()), float(diff.mean())
    result = stats.bootstrap(
        (diff,), _mean, n_resamples=n_resamples, batch=_batch(diff.size, n_resamples),
        vectorized=True, confidence_level=confidence, method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _batch(n: int, n_resamples: int) -> int:
    return int(max(1, min(n_resamples, RESAMPLE_BATCH_VALUES // max(n, 1))))


SESSION_COLUMNS = [
    "level", "variant", "baseline", "metric", "n_rows", "n_seeds", "n_seeds_baseline",
    "mean_diff", "ci_low", "ci_high", "d_z", "p_randomization", "p_randomization_adjusted",
    "correction", "family_size", "alpha", "significant", "t", "p_ttest",
    "p_wilcoxon_supplementary", "mde", "n_resamples", "resample_seed", "note",
]


def row_level_tests(
    ranks_by_variant: Mapping[str, np.ndarray],
    baseline: str,
    k: int = 20,
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> pd.DataFrame:
    """Session-level paired tests vs the baseline on the same test rows (one dataset).

    Each row's metric is first averaged over that variant's seeds. Per variant and metric
    (recall@k, MRR@k): the randomization (sign-flip) test, whose p-value is corrected over the
    table's family (variants x 2 metrics) and decides ``significant``; the bootstrap interval of
    the mean difference (``ci_low`` / ``ci_high``); d_z; the paired t-test; the minimum
    detectable effect where not significant; and Wilcoxon's signed-rank p, supplementary only
    (its error rate is not kept at thousands of sessions). Rows are the sessions of one test
    split, so these p-values share the seeds' randomness with the seed-level test; they are a
    complement when seeds are few, not a replacement.

    Args:
        ranks_by_variant: variant -> 1-based target ranks, [n_seeds, n_rows] (or [n_rows]).
        baseline: the variant compared with.
        k: the metrics' cut-off.
        alpha: the family's level.
        correction: one of ``CORRECTIONS``.
        n_resamples: resamples of the randomization test and of the bootstrap.
        seed: seed of both (each comparison starts from it, so results do not depend on order).
        confidence: confidence level of the bootstrap interval.
        power: power of the minimum detectable effect.

    Returns:
        Columns ``SESSION_COLUMNS``.
    """
    check_correction(correction)
    if baseline not in ranks_by_variant:
        raise ValueError(
            f"baseline {baseline!r} has no per-row ranks; available: {list(ranks_by_variant)}"
        )
    per_row = {v: _rows_averaged_over_seeds(r, k) for v, r in ranks_by_variant.items()}
    n_rows = {v: len(m[f"recall_{k}"]) for v, m in per_row.items()}
    if len(set(n_rows.values())) != 1:
        raise ValueError(f"variants were scored on different numbers of rows: {n_rows}")
    rows = []
    for variant, metrics in per_row.items():
        if variant == baseline:
            continue
        for metric in (f"recall_{k}", f"mrr_{k}"):
            a, b = metrics[metric], per_row[baseline][metric]
            diff = a - b
            comparison = paired_comparison(a, b, confidence)
            p_rand = randomization_test(diff, n_resamples, seed)
            low, high = bootstrap_interval(diff, n_resamples, seed, confidence)
            p_w = _wilcoxon(diff)
            note = NO_DIFFERENCE_NOTE if np.isnan(p_rand) else comparison["note"]
            rows.append({
                "level": SESSION_LEVEL, "variant": variant, "baseline": baseline,
                "metric": metric, "n_rows": len(a),
                "n_seeds": _n_seeds(ranks_by_variant[variant]),
                "n_seeds_baseline": _n_seeds(ranks_by_variant[baseline]),
                "mean_diff": float(diff.mean()), "ci_low": low, "ci_high": high,
                "d_z": comparison["d_z"], "sd_diff": comparison["sd_diff"],
                "n_pairs": len(a), "p_randomization": p_rand, "t": comparison["t"],
                "p_ttest": comparison["p_value"], "p_wilcoxon_supplementary": p_w,
                "n_resamples": n_resamples, "resample_seed": seed, "note": note,
            })
    if not rows:
        return pd.DataFrame(columns=SESSION_COLUMNS)
    frame = correct_family(pd.DataFrame(rows), correction, alpha, power, by=(),
                           p_column="p_randomization",
                           adjusted_column="p_randomization_adjusted")
    return frame[SESSION_COLUMNS].reset_index(drop=True)


def session_tests(
    per_row: Mapping[tuple[str, str], Sequence[tuple[np.ndarray, np.ndarray]]],
    baseline: str,
    k: int = 20,
    **options,
) -> pd.DataFrame:
    """``row_level_tests`` for each dataset in ``per_row``, seeds of a variant stacked.

    Args:
        per_row: (dataset, variant) -> one (ranks, exposure) pair per seed (only the ranks
            are used here).
        baseline: the variant compared with.
        k: the metrics' cut-off.
        **options: alpha, correction, n_resamples, seed, confidence, power of
            ``row_level_tests``.

    Returns:
        ``row_level_tests``' columns with ``dataset`` first.
    """
    frames = []
    for dataset in dict.fromkeys(d for d, _ in per_row):
        ranks_by_variant = {
            variant: np.stack([np.asarray(ranks) for ranks, _ in seeds])
            for (d, variant), seeds in per_row.items()
            if d == dataset
        }
        frames.append(
            row_level_tests(ranks_by_variant, baseline, k, **options).assign(dataset=dataset))
    out = pd.concat(frames, ignore_index=True)
    return out[["dataset", *[c for c in out.columns if c != "dataset"]]]


def _as_seed_matrix(ranks) -> np.ndarray:
    """Ranks as [n_seeds, n_rows]; a 1-D array is one seed."""
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        return ranks[None, :]
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be [n_seeds, n_rows], got shape {ranks.shape}")
    return ranks


def _n_seeds(ranks) -> int:
    return _as_seed_matrix(ranks).shape[0]


def _rows_averaged_over_seeds(ranks, k: int) -> dict[str, np.ndarray]:
    return {name: m.mean(axis=0) for name, m in row_metrics(_as_seed_matrix(ranks), k).items()}


def _wilcoxon(diff: np.ndarray) -> float:
    """Wilcoxon signed-rank p-value (zeros discarded), nan when every difference is zero."""
    if not np.any(np.abs(diff) > _ZERO_SPREAD):
        return float("nan")
    return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)


def _in_metric_order(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows grouped by keys in first-appearance order, metrics in METRICS order within a group."""
    order = {m: i for i, m in enumerate(METRICS)}
    firsts = frame.groupby(keys, sort=False).ngroup()
    return (
        frame.assign(_g=firsts, _m=frame["metric"].map(order))
        .sort_values(["_g", "_m"], kind="stable")
        .drop(columns=["_g", "_m"])
        .reset_index(drop=True)
    )
