"""hpo.stats: metric formulas, seed pairing and the test numbers against scipy itself."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from hpo.stats import (
    METRICS,
    SESSION_LEVEL,
    anova,
    paired_tests,
    row_level_tests,
    row_metrics,
    summarize,
)


def seed_frame(values: dict[tuple[str, str], dict[int, float]]) -> pd.DataFrame:
    """One row per (dataset, variant, seed); every metric column gets the value plus a fixed
    per-metric offset so metrics are distinguishable."""
    rows = []
    for (dataset, variant), by_seed in values.items():
        for seed, value in by_seed.items():
            row = {"dataset": dataset, "variant": variant, "seed": seed, "run_id": "x"}
            row.update({m: value + 0.01 * i for i, m in enumerate(METRICS)})
            rows.append(row)
    return pd.DataFrame(rows)


BASE = {1: 0.50, 2: 0.52, 3: 0.47, 4: 0.55, 5: 0.49}
DA = {1: 0.51, 2: 0.54, 3: 0.475, 4: 0.57, 5: 0.50}
AVE = {1: 0.45, 2: 0.49, 3: 0.44, 4: 0.46, 5: 0.47}


def three_variants() -> pd.DataFrame:
    return seed_frame({("dig", "trm"): BASE, ("dig", "da"): DA, ("dig", "ave"): AVE})


def test_row_metrics_match_brute_force_loop():
    rng = np.random.default_rng(0)
    ranks = np.concatenate([[1, 10, 11, 20, 21, 5000], rng.integers(1, 60, size=200)])
    for k in (10, 20):
        got = row_metrics(ranks.astype(np.int64), k)
        for i, rank in enumerate(ranks):
            expected_hit = 1.0 if rank <= k else 0.0
            assert got[f"recall_{k}"][i] == expected_hit
            assert got[f"mrr_{k}"][i] == pytest.approx(expected_hit / rank)
            assert got[f"ndcg_{k}"][i] == pytest.approx(expected_hit / math.log2(rank + 1))


def test_row_metrics_rejects_zero_based_or_float_ranks():
    with pytest.raises(ValueError, match="1-based"):
        row_metrics(np.array([0, 3]), 20)
    with pytest.raises(ValueError, match="integers"):
        row_metrics(np.array([1.0, 3.0]), 20)


def test_summarize_is_mean_and_sample_std_over_seeds():
    out = summarize(three_variants())
    row = out[(out["variant"] == "da") & (out["metric"] == "mrr_20")].iloc[0]
    values = np.array(list(DA.values())) + 0.01 * METRICS.index("mrr_20")
    assert row["mean"] == pytest.approx(values.mean())
    assert row["std"] == pytest.approx(values.std(ddof=1))
    assert row["n_seeds"] == 5
    assert list(out["metric"][:6]) == list(METRICS)
    assert len(out) == 3 * len(METRICS)


def test_paired_t_test_equals_scipy_on_recorded_values():
    frame = three_variants()
    out = paired_tests(frame, baseline="trm")
    assert set(out["variant"]) == {"da", "ave"}
    for metric in ("recall_20", "mrr_20"):
        for variant, values in (("da", DA), ("ave", AVE)):
            rec = frame.set_index(["variant", "seed"])[metric]
            a = [rec[(variant, s)] for s in sorted(values)]
            b = [rec[("trm", s)] for s in sorted(values)]
            expected = sps.ttest_rel(a, b)
            row = out[(out["variant"] == variant) & (out["metric"] == metric)].iloc[0]
            assert row["t"] == pytest.approx(expected.statistic, rel=1e-12)
            assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
            assert row["significant"] == (expected.pvalue < 0.01)
            assert row["n_pairs"] == 5
            assert row["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))


def test_pairing_is_by_seed_value_not_row_order():
    frame = three_variants()
    shuffled = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)

    def in_key_order(out):
        return out.sort_values(["variant", "metric"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(
        in_key_order(paired_tests(shuffled)), in_key_order(paired_tests(frame)), check_exact=True
    )

    # Variant rows stored in reverse seed order: pairing by position would pair seed 1 with 5.
    reverse = {s: DA[s] for s in sorted(DA, reverse=True)}
    stored = seed_frame({("dig", "trm"): BASE, ("dig", "da"): reverse})
    got = paired_tests(stored).set_index("metric").loc["recall_10"]
    by_seed = sps.ttest_rel([DA[s] for s in BASE], list(BASE.values()))
    by_position = sps.ttest_rel(list(reverse.values()), list(BASE.values()))
    assert got["p_value"] == pytest.approx(by_seed.pvalue)
    assert not math.isclose(by_seed.pvalue, by_position.pvalue, rel_tol=1e-3)


def test_only_shared_seeds_are_paired():
    frame = seed_frame(
        {
            ("dig", "trm"): {2: 0.5, 3: 0.52, 4: 0.47, 5: 0.6},
            ("dig", "da"): {1: 0.9, 2: 0.51, 3: 0.55, 4: 0.48},
        }
    )
    row = paired_tests(frame).set_index("metric").loc["recall_10"]
    assert row["n_pairs"] == 3
    assert row["p_value"] == pytest.approx(
        sps.ttest_rel([0.51, 0.55, 0.48], [0.5, 0.52, 0.47]).pvalue
    )


def test_missing_baseline_lists_available_variants():
    with pytest.raises(ValueError, match=r"baseline 'core'.*\['trm', 'da', 'ave'\]"):
        paired_tests(three_variants(), baseline="core")


def test_too_few_shared_seeds_names_variant_and_seeds():
    frame = seed_frame({("dig", "trm"): {1: 0.5, 2: 0.6}, ("dig", "da"): {2: 0.5, 7: 0.6}})
    with pytest.raises(ValueError, match=r"'da'.*1 seed.*\[2, 7\].*\[1, 2\]"):
        paired_tests(frame)


def test_zero_variance_differences_give_nan_not_significant_and_no_warning():
    shifted = {s: v + 0.03 for s, v in BASE.items()}
    frame = seed_frame({("dig", "trm"): BASE, ("dig", "same"): BASE, ("dig", "shift"): shifted})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = paired_tests(frame)
    assert out["p_value"].isna().all()
    assert out["t"].isna().all()
    assert not out["significant"].any()
    assert (out["note"] != "").all()
    assert out.loc[out["variant"] == "shift", "mean_diff"].to_numpy() == pytest.approx(0.03)


def test_bad_frames_are_rejected():
    frame = three_variants()
    with pytest.raises(ValueError, match="more than one row"):
        summarize(pd.concat([frame, frame.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks columns"):
        summarize(frame.drop(columns=["ndcg_20"]))
    broken = frame.copy()
    broken.loc[0, "mrr_20"] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        paired_tests(broken)


def test_anova_equals_scipy_f_oneway_only_for_more_than_two_variants():
    frame = pd.concat([three_variants(), seed_frame({("tmall", "trm"): BASE, ("tmall", "da"): DA})])
    out = anova(frame)
    assert set(out["dataset"]) == {"dig"}
    assert len(out) == len(METRICS)
    for metric in METRICS:
        groups = [
            frame[(frame["dataset"] == "dig") & (frame["variant"] == v)][metric]
            for v in ("trm", "da", "ave")
        ]
        expected = sps.f_oneway(*groups)
        row = out.set_index("metric").loc[metric]
        assert row["F"] == pytest.approx(expected.statistic, rel=1e-12)
        assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
        assert row["n_variants"] == 3


def test_anova_two_variants_is_empty_with_columns_and_constant_groups_are_nan():
    two = seed_frame({("dig", "trm"): BASE, ("dig", "da"): DA})
    empty = anova(two)
    assert empty.empty and list(empty.columns) == [
        "dataset",
        "metric",
        "n_variants",
        "F",
        "p_value",
    ]
    constant = seed_frame({("d", v): {1: x, 2: x} for v, x in (("a", 0.1), ("b", 0.2), ("c", 0.3))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = anova(constant)
    assert out["F"].isna().all() and out["p_value"].isna().all()


def test_row_level_tests_equal_scipy_on_seed_averaged_rows():
    rng = np.random.default_rng(1)
    base = rng.integers(1, 40, size=(3, 300))
    better = np.maximum(base - rng.integers(0, 4, size=(3, 300)), 1)
    out = row_level_tests({"trm": base, "da": better}, baseline="trm", k=20)
    assert set(out["metric"]) == {"recall_20", "mrr_20"}
    assert (out["level"] == SESSION_LEVEL).all() and "session" in SESSION_LEVEL
    for metric, per_rank in (
        ("recall_20", lambda r: float(r <= 20)),
        ("mrr_20", lambda r: 1.0 / r if r <= 20 else 0.0),
    ):
        a = np.array([[per_rank(r) for r in seed] for seed in better]).mean(axis=0)
        b = np.array([[per_rank(r) for r in seed] for seed in base]).mean(axis=0)
        row = out.set_index("metric").loc[metric]
        assert row["n_rows"] == 300
        assert row["mean_diff"] == pytest.approx((a - b).mean())
        assert row["p_ttest"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-10)
        assert row["p_wilcoxon"] == pytest.approx(
            sps.wilcoxon(a - b, zero_method="wilcox").pvalue, rel=1e-10
        )


def test_row_level_tests_identical_rows_and_bad_input():
    ranks = np.array([[1, 5, 30, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = row_level_tests({"trm": ranks, "copy": ranks.copy()}, baseline="trm")
    assert out["p_wilcoxon"].isna().all() and out["p_ttest"].isna().all()
    assert (out["note"] != "").all()
    with pytest.raises(ValueError, match="different numbers of rows"):
        row_level_tests({"trm": ranks, "da": np.array([[1, 2]])}, baseline="trm")
    with pytest.raises(ValueError, match=r"available: \['da'\]"):
        row_level_tests({"da": ranks}, baseline="trm")
