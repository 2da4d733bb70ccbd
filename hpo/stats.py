"""Statistics for selection-then-test: is a variant's gain over the baseline more than seed noise?

Pure functions over pandas/numpy (no models, no data loading) so every number can be checked
against scipy in isolation. Metric values are fractions in [0, 1], as recorded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from models.metrics import METRIC_NAMES as METRICS
from models.metrics import row_metrics

KEYS = ("dataset", "variant", "seed")
SESSION_LEVEL = "session (rows; not independent of the seed-level test, use when seeds are few)"

# Differences closer than this count as identical: metrics are fractions, so this is far below
# anything a real run distinguishes, and above float noise from subtracting two fractions.
_ZERO_SPREAD = 1e-12
ZERO_VARIANCE_NOTE = "differences have zero variance: t-test undefined"
NO_DIFFERENCE_NOTE = "all differences are zero: Wilcoxon test undefined"


def check_seed_results(seed_results: pd.DataFrame) -> pd.DataFrame:
    """The key and metric columns of the per-seed frame, validated; extra columns are dropped."""
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


def summarize(seed_results: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1) over seeds, per dataset, variant and metric."""
    frame = check_seed_results(seed_results)
    long = frame.melt(id_vars=list(KEYS), value_vars=list(METRICS), var_name="metric")
    grouped = long.groupby(["dataset", "variant", "metric"], sort=False)["value"]
    out = grouped.agg(mean="mean", std=lambda v: v.std(ddof=1), n_seeds="count").reset_index()
    return _in_metric_order(out, ["dataset", "variant"])


def paired_ttest(a, b) -> tuple[float, float, str]:
    """scipy's paired t-test of a against b, with a zero-variance difference reported as undefined.

    Returns (t, p, note); t and p are nan and note says why when the test is undefined.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if np.ptp(diff) <= _ZERO_SPREAD:
        return float("nan"), float("nan"), ZERO_VARIANCE_NOTE
    result = stats.ttest_rel(a, b)
    return float(result.statistic), float(result.pvalue), ""


def paired_tests(
    seed_results: pd.DataFrame, baseline: str = "trm", alpha: float = 0.01
) -> pd.DataFrame:
    """Paired t-test of every variant against the baseline, per dataset and metric.

    Seeds are paired by seed value (inner join), never by row order.
    """
    frame = check_seed_results(seed_results)
    rows = []
    for dataset, per_dataset in frame.groupby("dataset", sort=False):
        variants = list(dict.fromkeys(per_dataset["variant"]))
        if baseline not in variants:
            raise ValueError(
                f"baseline {baseline!r} has no results on dataset {dataset!r}; "
                f"available variants: {variants}"
            )
        base = per_dataset[per_dataset["variant"] == baseline]
        for variant in variants:
            if variant == baseline:
                continue
            other = per_dataset[per_dataset["variant"] == variant]
            pairs = other.merge(base, on="seed", suffixes=("", "_base")).sort_values("seed")
            if len(pairs) < 2:
                raise ValueError(
                    f"variant {variant!r} on dataset {dataset!r} shares {len(pairs)} seed(s) "
                    f"with baseline {baseline!r} (needs >= 2 for a paired t-test): "
                    f"variant seeds {sorted(other['seed'].tolist())}, "
                    f"baseline seeds {sorted(base['seed'].tolist())}"
                )
            for metric in METRICS:
                t, p, note = paired_ttest(pairs[metric], pairs[f"{metric}_base"])
                rows.append(
                    {
                        "dataset": dataset,
                        "variant": variant,
                        "baseline": baseline,
                        "metric": metric,
                        "n_pairs": len(pairs),
                        "mean_diff": float((pairs[metric] - pairs[f"{metric}_base"]).mean()),
                        "t": t,
                        "p_value": p,
                        "alpha": alpha,
                        "significant": bool(p < alpha),  # nan < alpha is False
                        "note": note,
                    }
                )
    columns = [
        "dataset",
        "variant",
        "baseline",
        "metric",
        "n_pairs",
        "mean_diff",
        "t",
        "p_value",
        "alpha",
        "significant",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns)


def anova(seed_results: pd.DataFrame) -> pd.DataFrame:
    """One-way ANOVA across variants (groups = per-seed values), for datasets with > 2 variants."""
    frame = check_seed_results(seed_results)
    rows = []
    for dataset, per_dataset in frame.groupby("dataset", sort=False):
        groups = [g for _, g in per_dataset.groupby("variant", sort=False)]
        if len(groups) <= 2:
            continue
        for metric in METRICS:
            f, p = _one_way_anova([g[metric].to_numpy(dtype=np.float64) for g in groups])
            rows.append(
                {
                    "dataset": dataset,
                    "metric": metric,
                    "n_variants": len(groups),
                    "F": f,
                    "p_value": p,
                }
            )
    return pd.DataFrame(rows, columns=["dataset", "metric", "n_variants", "F", "p_value"])


def _one_way_anova(groups: list[np.ndarray]) -> tuple[float, float]:
    """scipy's f_oneway, or (nan, nan) when no within-group variation exists to compare against."""
    within_df = sum(len(g) for g in groups) - len(groups)
    within_spread = max(float(np.ptp(g)) for g in groups)
    if within_df < 1 or within_spread <= _ZERO_SPREAD:
        return float("nan"), float("nan")
    result = stats.f_oneway(*groups)
    return float(result.statistic), float(result.pvalue)


def row_level_tests(
    ranks_by_variant: dict[str, np.ndarray], baseline: str, k: int = 20
) -> pd.DataFrame:
    """Session-level paired tests vs the baseline on the same test rows.

    Each row's metric is first averaged over that variant's seeds. Rows are the sessions of one
    test split, so these p-values share the seeds' randomness with the seed-level test and are
    far smaller than it; they are a complement when seeds are few, not a replacement.
    """
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
            t, p_t, t_note = paired_ttest(a, b)
            p_w, w_note = _wilcoxon(a - b)
            rows.append(
                {
                    "level": SESSION_LEVEL,
                    "variant": variant,
                    "baseline": baseline,
                    "metric": metric,
                    "n_rows": len(a),
                    "n_seeds": _n_seeds(ranks_by_variant[variant]),
                    "n_seeds_baseline": _n_seeds(ranks_by_variant[baseline]),
                    "mean_diff": float(np.mean(a - b)),
                    "t": t,
                    "p_ttest": p_t,
                    "p_wilcoxon": p_w,
                    "note": "; ".join(n for n in (t_note, w_note) if n),
                }
            )
    columns = [
        "level",
        "variant",
        "baseline",
        "metric",
        "n_rows",
        "n_seeds",
        "n_seeds_baseline",
        "mean_diff",
        "t",
        "p_ttest",
        "p_wilcoxon",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns)


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


def _wilcoxon(diff: np.ndarray) -> tuple[float, str]:
    """Wilcoxon signed-rank p-value (zeros discarded), nan when every difference is zero."""
    if not np.any(np.abs(diff) > _ZERO_SPREAD):
        return float("nan"), NO_DIFFERENCE_NOTE
    return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue), ""


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
