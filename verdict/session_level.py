"""Session-level tests: each test row's metric averaged over a variant's seeds, compared with
the baseline's row by row (``row_level_tests`` for one dataset, ``session_tests`` for each):
a paired randomization (sign-flip) test and a bootstrap interval of the mean difference,
seeded, with the paired t-test beside them and Wilcoxon as a supplement. Rows are the sessions
of one test split, so these p-values share the seeds' randomness with ``verdict.seed_level``'s:
a complement when seeds are few, not a replacement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from models.metrics import row_metrics
from verdict.options import DEFAULT_ALPHA, FULL_ARM, check_correction
from verdict.stats import (
    CONFIDENCE,
    POWER,
    ZERO_SPREAD,
    correct_family,
    paired_comparison,
)

SESSION_LEVEL = "session (rows; not independent of the seed-level test, use when seeds are few)"
N_RESAMPLES = 10_000
# Resampled values held in memory at once by the randomization and bootstrap tests (float64).
RESAMPLE_BATCH_VALUES = 20_000_000
NO_DIFFERENCE_NOTE = "all differences are zero: tests undefined"


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
    nonzero = diff[np.abs(diff) > ZERO_SPREAD]
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
    diff, *, n_resamples: int = N_RESAMPLES, seed: int = 0, confidence: float = CONFIDENCE
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
    if np.ptp(diff) <= ZERO_SPREAD:
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
    *,
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
        correction: one of ``verdict.options.CORRECTIONS``.
        n_resamples: resamples of the randomization test and of the bootstrap.
        seed: seed of both (each comparison starts from it, so results do not depend on order).
        confidence: confidence level of the bootstrap interval.
        power: power of the minimum detectable effect.

    Returns:
        Columns ``SESSION_COLUMNS``.
    """
    check_correction(correction)
    rows = _row_comparisons(ranks_by_variant, baseline, k=k, n_resamples=n_resamples,
                            seed=seed, confidence=confidence)
    if not rows:
        return pd.DataFrame(columns=SESSION_COLUMNS)
    frame = correct_family(pd.DataFrame(rows), correction=correction, alpha=alpha,
                           power=power, by=(),
                           p_column="p_randomization",
                           adjusted_column="p_randomization_adjusted")
    return frame[SESSION_COLUMNS].reset_index(drop=True)


def _row_comparisons(
    ranks_by_variant: Mapping[str, np.ndarray], baseline: str, *, k: int, n_resamples: int,
    seed: int, confidence: float,
) -> list[dict]:
    """``row_level_tests``' comparisons before the correction (with ``sd_diff`` and
    ``n_pairs``, which the correction's minimum detectable effect reads)."""
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
            low, high = bootstrap_interval(diff, n_resamples=n_resamples, seed=seed,
                                           confidence=confidence)
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
    return rows


def session_tests(
    per_row: Mapping[tuple[str, str], Sequence[tuple[np.ndarray, np.ndarray]]],
    baseline: str,
    *,
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
            row_level_tests(ranks_by_variant, baseline, k=k, **options).assign(dataset=dataset))
    out = pd.concat(frames, ignore_index=True)
    return out[["dataset", *[c for c in out.columns if c != "dataset"]]]


ARM_SESSION_COLUMNS = ["dataset", "subset", "variant", "arm", *[
    c for c in SESSION_COLUMNS if c not in ("variant", "baseline")]]
ALL_ROWS = "all rows"


def arm_session_tests(
    per_row: Mapping[tuple[str, str], Sequence[tuple[np.ndarray, np.ndarray]]],
    arm_per_row: Mapping[tuple[str, str, str], Sequence[tuple[np.ndarray, np.ndarray]]],
    *,
    row_subsets: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    k: int = 20,
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    power: float = POWER,
) -> pd.DataFrame:
    """Each ablation arm against its variant's full configuration at the session level: the
    tests of ``row_level_tests`` (each row's metric averaged over the seeds, randomization p,
    bootstrap interval, t-test), on all test rows and on each subset of rows given.

    The correction's family is, per dataset and subset, every (variant, arm, metric)
    comparison, as the seed-level ablation table's is per dataset.

    Args:
        per_row: (dataset, variant) -> the full configuration's (ranks, exposure) per seed.
        arm_per_row: (dataset, variant, arm) -> the arm's (ranks, exposure) per seed.
        row_subsets: subset name -> dataset -> boolean mask over the dataset's test rows
            (e.g. "tail targets"); a subset with fewer than 2 rows in a dataset is left out.
        k: the metrics' cut-off.
        alpha: the family's level.
        correction: one of ``verdict.options.CORRECTIONS``.
        n_resamples: resamples of the randomization test and of the bootstrap.
        seed: seed of both.
        confidence: confidence level of the bootstrap interval.
        power: power of the minimum detectable effect.

    Returns:
        Columns ``ARM_SESSION_COLUMNS`` (mean_diff = arm - full), empty without arms.

    Raises:
        ValueError: an arm whose variant has no full configuration's rows.
    """
    check_correction(correction)
    frames = []
    for (dataset, variant, arm), arm_seeds in arm_per_row.items():
        if (dataset, variant) not in per_row:
            raise ValueError(f"{dataset}/{variant}: arm {arm!r} has no full configuration's "
                             "rows to compare with")
        full = np.stack([np.asarray(r) for r, _ in per_row[(dataset, variant)]])
        ablated = np.stack([np.asarray(r) for r, _ in arm_seeds])
        masks = {ALL_ROWS: None, **{name: by_dataset.get(dataset)
                                    for name, by_dataset in (row_subsets or {}).items()}}
        for subset, mask in masks.items():
            if subset != ALL_ROWS and (mask is None or np.count_nonzero(mask) < 2):
                continue
            rows = slice(None) if mask is None else np.asarray(mask, dtype=bool)
            tests = _row_comparisons({FULL_ARM: full[:, rows], arm: ablated[:, rows]},
                                     FULL_ARM, k=k, n_resamples=n_resamples, seed=seed,
                                     confidence=confidence)
            frames.append(pd.DataFrame(tests).drop(columns=["variant", "baseline"]).assign(
                dataset=dataset, subset=subset, variant=variant, arm=arm))
    if not frames:
        return pd.DataFrame(columns=ARM_SESSION_COLUMNS)
    out = correct_family(pd.concat(frames, ignore_index=True), correction=correction,
                         alpha=alpha, power=power, by=("dataset", "subset"),
                         p_column="p_randomization", adjusted_column="p_randomization_adjusted")
    return out[ARM_SESSION_COLUMNS].reset_index(drop=True)


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
    if not np.any(np.abs(diff) > ZERO_SPREAD):
        return float("nan")
    return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)
