"""Seed-level tests: a variant's test score per training seed, every variant trained with the
same seeds, so that scores pair by seed value (``verdict.stats`` holds the building blocks).

- ``check_seed_results``: the per-seed frame, validated;
- ``summarize``: mean, sample std and the 95% t-interval of the mean over seeds;
- ``paired_tests``: each variant vs the baseline, paired by seed value: the mean difference
  with its 95% interval (``scipy.stats.ttest_rel``), Cohen's d_z, raw and corrected p
  (``statsmodels`` ``multipletests`` over the family variants x metrics) and, where the
  difference is not significant, the minimum detectable effect (``TTestPower``);
- ``anova``: repeated-measures ANOVA with seed as the subject (``AnovaRM``), Friedman's test,
  and the one-way ANOVA that ignores the pairing (reference only);
- ``posthoc_tests``: every pair of variants, paired t-tests with the same correction;
- ``ablation_tests``: each ablation arm of a variant vs its full (selected) configuration.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.anova import AnovaRM

from models.metrics import METRIC_NAMES as METRICS
from verdict.options import DEFAULT_ALPHA, FULL_ARM, check_correction
from verdict.stats import (
    CONFIDENCE,
    POWER,
    ZERO_SPREAD,
    correct_family,
    mean_interval,
    paired_comparison,
)

KEYS = ("dataset", "variant", "seed")
NO_RESIDUAL_NOTE = "no residual variance: repeated-measures F undefined"
NO_RANK_NOTE = "all variants tie within every seed: Friedman undefined"

COMPARISON_COLUMNS = [
    "n_pairs", "mean_diff", "ci_low", "ci_high", "d_z", "t", "p_value", "p_adjusted",
    "correction", "family_size", "alpha", "significant", "mde", "note",
]


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
    *,
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
        correction: one of ``verdict.options.CORRECTIONS``.
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
    *,
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
        correction: one of ``verdict.options.CORRECTIONS``.
        confidence: confidence level of the interval of the difference.
        power: power of the minimum detectable effect.

    Returns:
        One row per (dataset, variant_a, variant_b, metric) with ``COMPARISON_COLUMNS``.
    """
    check_correction(correction)
    rows = []
    for dataset, per_dataset, variants in _many_variants(seed_results):
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
    rows = []
    for dataset, per_dataset, variants in _many_variants(seed_results):
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


def _many_variants(seed_results: pd.DataFrame) -> Iterator[tuple[Any, pd.DataFrame, list[str]]]:
    """(dataset, its rows, its variants in order) of each dataset with more than two variants,
    the ones the omnibus and post-hoc tests are made for; ``seed_results`` checked first."""
    frame = check_seed_results(seed_results)
    for dataset, per_dataset in frame.groupby("dataset", sort=False):
        variants = list(dict.fromkeys(per_dataset["variant"]))
        if len(variants) > 2:
            yield dataset, per_dataset, variants


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
    if np.abs(residual).max() <= ZERO_SPREAD:
        notes.append(NO_RESIDUAL_NOTE)
    else:
        long = wide.reset_index().melt(id_vars="seed", var_name="variant", value_name="value")
        table = AnovaRM(long, "value", "seed", within=["variant"]).fit().anova_table
        out.update(F_rm=float(table["F Value"].iloc[0]), df_num=float(table["Num DF"].iloc[0]),
                   df_den=float(table["Den DF"].iloc[0]), p_rm=float(table["Pr > F"].iloc[0]))
    if all(np.ptp(row) <= ZERO_SPREAD for row in values):
        notes.append(NO_RANK_NOTE)
    else:
        result = stats.friedmanchisquare(*values.T)
        out.update(friedman_chi2=float(result.statistic), p_friedman=float(result.pvalue))
    return {**out, "note": "; ".join(notes)}


def _one_way_anova(groups: list[np.ndarray]) -> tuple[float, float]:
    """scipy's f_oneway, or (nan, nan) when no within-group variation exists to compare against."""
    within_df = sum(len(g) for g in groups) - len(groups)
    within_spread = max(float(np.ptp(g)) for g in groups)
    if within_df < 1 or within_spread <= ZERO_SPREAD:
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
    *,
    skipped: Mapping[tuple[str, str, str], str] | None = None,
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> pd.DataFrame:
    """Each ablation arm of a variant against its full configuration, seeds paired by value.

    The family of the correction is, per dataset, every (variant, arm, metric) comparison of
    the table.

    Args:
        arm_results: per-seed results with an ``arm`` column (``FULL_ARM`` for the selected
            configuration) besides ``KEYS`` and ``METRICS``.
        skipped: (dataset, variant, arm) -> why the arm was not trained (e.g. the selected
            configuration already is that arm); listed with nan statistics.
        alpha: the family's level.
        correction: one of ``verdict.options.CORRECTIONS``.
        confidence: confidence level of the intervals.
        power: power of the minimum detectable effect.

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
    frame = correct_family(pd.DataFrame(rows), correction=correction, alpha=alpha,
                           power=power, by=("dataset",))
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
    frame = correct_family(pd.DataFrame(rows), correction=correction, alpha=alpha,
                           power=power, by=by)
    return frame[columns].reset_index(drop=True)


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
