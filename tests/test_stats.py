"""verdict.stats, verdict.seed_level and verdict.session_level: metric formulas, seed pairing,
corrections, intervals, effect sizes, MDE, ANOVA, session-level resampling tests: each against a
hand-computed case and against scipy / statsmodels themselves."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps
from statsmodels.stats.anova import AnovaRM, anova_lm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from models.metrics import row_metrics
from verdict.options import FULL_ARM
from verdict.seed_level import (
    METRICS,
    ablation_tests,
    anova,
    paired_tests,
    posthoc_tests,
    summarize,
)
from verdict.session_level import (
    SESSION_LEVEL,
    bootstrap_interval,
    randomization_test,
    row_level_tests,
)
from verdict.stats import adjust_pvalues, mde_effect_size, mean_interval, paired_comparison


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


def t_quantile(confidence: float, df: int) -> float:
    return float(sps.t.ppf(0.5 + confidence / 2, df))


# ---------------------------------------------------------------- metrics, summaries


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


def test_summarize_is_mean_sample_std_and_t_interval_over_seeds():
    out = summarize(three_variants())
    row = out[(out["variant"] == "da") & (out["metric"] == "mrr_20")].iloc[0]
    values = np.array(list(DA.values())) + 0.01 * METRICS.index("mrr_20")
    half = t_quantile(0.95, 4) * values.std(ddof=1) / math.sqrt(5)
    assert row["mean"] == pytest.approx(values.mean())
    assert row["std"] == pytest.approx(values.std(ddof=1))
    assert row["ci_low"] == pytest.approx(values.mean() - half)
    assert row["ci_high"] == pytest.approx(values.mean() + half)
    assert row["n_seeds"] == 5
    assert list(out["metric"][:6]) == list(METRICS)
    assert len(out) == 3 * len(METRICS)


def test_mean_interval_hand_case_and_degenerate_inputs():
    # [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653 (tables) -> 2 +- 4.302653 / sqrt(3)
    low, high = mean_interval([1.0, 2.0, 3.0])
    assert low == pytest.approx(2 - 4.302652729911275 / math.sqrt(3), abs=1e-9)
    assert high == pytest.approx(2 + 4.302652729911275 / math.sqrt(3), abs=1e-9)
    assert mean_interval([0.3, 0.3, 0.3]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert all(math.isnan(v) for v in mean_interval([0.3]))


# ---------------------------------------------------------------- paired comparisons


def test_paired_comparison_hand_computed_case():
    # diffs [2, 3, 3]: mean 8/3, sd sqrt(1/3), t = (8/3) / (sqrt(1/3) / sqrt(3)) = 8,
    # d_z = 8 / sqrt(3); df 2: p = 1 - t / sqrt(2 + t^2); CI = 8/3 +- 4.302653 * (1/3).
    out = paired_comparison([3.0, 5.0, 7.0], [1.0, 2.0, 4.0])
    assert out["n_pairs"] == 3
    assert out["mean_diff"] == pytest.approx(8 / 3)
    assert out["sd_diff"] == pytest.approx(math.sqrt(1 / 3))
    assert out["t"] == pytest.approx(8.0)
    assert out["d_z"] == pytest.approx(8 / math.sqrt(3))
    assert out["p_value"] == pytest.approx(1 - 8 / math.sqrt(66))
    assert out["ci_low"] == pytest.approx(8 / 3 - 4.302652729911275 / 3, abs=1e-9)
    assert out["ci_high"] == pytest.approx(8 / 3 + 4.302652729911275 / 3, abs=1e-9)
    assert out["note"] == ""


def test_paired_tests_equal_scipy_on_recorded_values():
    frame = three_variants()
    out = paired_tests(frame, baseline="trm")
    assert set(out["variant"]) == {"da", "ave"}
    for metric in ("recall_20", "mrr_20"):
        for variant, values in (("da", DA), ("ave", AVE)):
            rec = frame.set_index(["variant", "seed"])[metric]
            a = [rec[(variant, s)] for s in sorted(values)]
            b = [rec[("trm", s)] for s in sorted(values)]
            expected = sps.ttest_rel(a, b)
            ci = expected.confidence_interval(0.95)
            diff = np.subtract(a, b)
            row = out[(out["variant"] == variant) & (out["metric"] == metric)].iloc[0]
            assert row["t"] == pytest.approx(expected.statistic, rel=1e-12)
            assert row["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
            assert row["ci_low"] == pytest.approx(ci.low) and row["ci_high"] == pytest.approx(
                ci.high)
            assert row["d_z"] == pytest.approx(diff.mean() / diff.std(ddof=1))
            assert row["d_z"] == pytest.approx(expected.statistic / math.sqrt(5))
            assert row["n_pairs"] == 5
            assert row["mean_diff"] == pytest.approx(diff.mean())
            assert row["correction"] == "holm" and row["family_size"] == 12


def test_correction_family_is_variants_times_metrics_and_marks_use_adjusted_p():
    # da - trm diffs [0.01, 0.015, 0.005, 0.012, 0.008]: t = 5.87 on 4 df, raw p ~ 0.0042.
    da = {1: 0.51, 2: 0.535, 3: 0.475, 4: 0.562, 5: 0.498}
    frame = seed_frame({("dig", "trm"): BASE, ("dig", "da"): da, ("dig", "ave"): AVE})
    out = paired_tests(frame, baseline="trm", alpha=0.01, correction="holm")
    assert len(out) == 2 * len(METRICS) and (out["family_size"] == 12).all()
    expected = multipletests(out["p_value"], method="holm")[1]
    np.testing.assert_allclose(out["p_adjusted"], expected, rtol=1e-12)
    assert (out["significant"] == (out["p_adjusted"] < 0.01)).all()
    da_rows = out[out["variant"] == "da"]
    assert (da_rows["p_value"] < 0.01).all()  # significant before the correction ...
    assert not da_rows["significant"].any()  # ... not after it
    raw = paired_tests(frame, baseline="trm", alpha=0.01, correction="none")
    assert raw["significant"].equals(raw["p_value"] < 0.01) and raw.loc[
        raw["variant"] == "da", "significant"].all()
    np.testing.assert_array_equal(raw["p_adjusted"], raw["p_value"])
    with pytest.raises(ValueError, match="unknown correction"):
        paired_tests(frame, correction="sidak")


def test_adjust_pvalues_hand_case_and_undefined_tests():
    p = [0.01, 0.04, 0.03]
    # Holm: sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04).
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni"), [0.03, 0.12, 0.09])
    # BH: 0.01*3/1, 0.03*3/2, 0.04*3/3, then the running minimum from the largest.
    np.testing.assert_allclose(adjust_pvalues(p, "fdr_bh"), [0.03, 0.04, 0.04])
    np.testing.assert_allclose(adjust_pvalues(p, "none"), p)
    with_nan = adjust_pvalues([0.01, np.nan, 0.04, 0.03], "holm")  # nan: not in the family
    assert math.isnan(with_nan[1])
    np.testing.assert_allclose(with_nan[[0, 2, 3]], [0.03, 0.06, 0.06])


@pytest.mark.parametrize("method", ["holm", "bonferroni", "fdr_bh"])
def test_adjust_pvalues_equal_statsmodels_on_random_data(method):
    p = np.random.default_rng(3).uniform(0, 0.2, size=25)
    got = adjust_pvalues(p, method)
    np.testing.assert_allclose(got, multipletests(p, method=method)[1], rtol=1e-12)
    assert (got >= p - 1e-15).all() and (got <= 1).all()
    order = np.argsort(p)
    assert (np.diff(got[order]) >= -1e-15).all()  # adjusted p keep the raw p's order


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
    with pytest.raises(ValueError, match=r"'da'.*1 seed.*'trm'.*\[2, 7\].*\[1, 2\]"):
        paired_tests(frame)


def test_zero_variance_differences_give_nan_not_significant_and_no_warning():
    shifted = {s: v + 0.03 for s, v in BASE.items()}
    frame = seed_frame({("dig", "trm"): BASE, ("dig", "same"): BASE, ("dig", "shift"): shifted})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = paired_tests(frame)
    for column in ("p_value", "p_adjusted", "t", "d_z", "ci_low", "mde"):
        assert out[column].isna().all(), column
    assert not out["significant"].any()
    assert (out["note"] != "").all() and (out["family_size"] == 0).all()
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


# ---------------------------------------------------------------- minimum detectable effect


def two_sided_power(d: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test, straight from scipy's noncentral t (the lower
    tail P(T < -c; nc) written as P(T > c; -nc), which scipy evaluates where its cdf is nan)."""
    crit = sps.t.isf(alpha / 2, n - 1)
    nc = d * math.sqrt(n)
    return float(sps.nct.sf(crit, n - 1, nc) + sps.nct.sf(crit, n - 1, -nc))


@pytest.mark.parametrize("n, alpha", [(3, 0.05), (5, 0.01), (5, 0.01 / 12), (10, 0.01 / 12),
                                      (30, 0.05), (2000, 0.01 / 4)])
def test_mde_effect_size_has_80_percent_power_per_scipy(n, alpha):
    d = mde_effect_size(n, alpha)
    assert two_sided_power(d, n, alpha) == pytest.approx(0.8, abs=2e-3)
    assert two_sided_power(0.9 * d, n, alpha) < 0.78  # and no smaller effect reaches it


def test_mde_effect_size_hand_case_at_many_pairs():
    # Large n: the t-test is the z-test, d = (z_{1 - alpha/2} + z_{power}) / sqrt(n)
    # = (1.959964 + 0.841621) / sqrt(2000) from the normal table.
    assert mde_effect_size(2000, 0.05) == pytest.approx((1.959964 + 0.841621) / math.sqrt(2000),
                                                        rel=2e-3)


def test_mde_effect_size_matches_statsmodels_two_sided_where_it_converges():
    for n, alpha in ((10, 0.05), (30, 0.01), (1000, 0.05)):
        expected = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=0.8)
        assert mde_effect_size(n, alpha) == pytest.approx(float(expected), rel=1e-3)
    assert mde_effect_size(5, 0.01) > mde_effect_size(10, 0.01) > mde_effect_size(50, 0.01)
    assert math.isnan(mde_effect_size(1, 0.05))


def test_mde_is_in_metric_units_at_the_family_level_and_only_where_not_significant():
    frame = three_variants()
    out = paired_tests(frame, baseline="trm", alpha=0.01, correction="holm")
    rec = frame.set_index(["variant", "seed"])
    for row in out.itertuples(index=False):
        if row.significant:
            assert math.isnan(row.mde)
            continue
        diff = np.array([rec.loc[(row.variant, s), row.metric] - rec.loc[("trm", s), row.metric]
                         for s in sorted(BASE)])
        expected = diff.std(ddof=1) * mde_effect_size(5, 0.01 / 12)
        assert row.mde == pytest.approx(expected)
    none = paired_tests(frame, baseline="trm", alpha=0.01, correction="none")
    both = none["mde"].notna() & out["mde"].notna()
    assert both.any() and (none.loc[both, "mde"] < out.loc[both, "mde"]).all()  # alpha, not /12


# ---------------------------------------------------------------- ANOVA


def wide_frame(matrix: list[list[float]], variants=("a", "b", "c")) -> pd.DataFrame:
    """Rows: seeds 1..n; columns: variants; every metric gets the same value."""
    return seed_frame({("d", v): {s + 1: row[j] for s, row in enumerate(matrix)}
                       for j, v in enumerate(variants)})


def test_repeated_measures_anova_hand_computed_case():
    # Seeds x variants; grand mean 3, variant means 2, 3, 4, seed means 2, 3, 4.
    # SS_variant = 3 * 2 = 6, SS_seed = 6, SS_total = 16, SS_error = 4 (df 4):
    # F = (6 / 2) / (4 / 4) = 3, p = (1 + 2 * 3 / 4)^-2 = 0.16 (F(2, d) tail in closed form).
    # One-way: SS_within = 16 - 6 = 10 on 6 df: F = 3 / (10 / 6) = 1.8.
    out = anova(wide_frame([[1, 2, 3], [2, 4, 3], [3, 3, 6]])).set_index("metric").loc["mrr_20"]
    assert out["F_rm"] == pytest.approx(3.0)
    assert (out["df_num"], out["df_den"]) == (2, 4)
    assert out["p_rm"] == pytest.approx(0.16)
    assert out["F_oneway"] == pytest.approx(1.8)
    assert out["n_seeds"] == 3 and out["n_variants"] == 3


def test_friedman_hand_computed_case():
    # Every seed ranks a < b < c: rank sums 4, 8, 12 over n = 4 seeds, k = 3:
    # chi2 = 12 / (n k (k + 1)) * sum R^2 - 3 n (k + 1) = 56 - 48 = 8; p = exp(-8 / 2) (2 df).
    matrix = [[0.1, 0.2, 0.3], [0.5, 0.6, 0.9], [0.2, 0.25, 0.4], [0.0, 0.3, 0.31]]
    out = anova(wide_frame(matrix)).set_index("metric").loc["recall_10"]
    assert out["friedman_chi2"] == pytest.approx(8.0)
    assert out["p_friedman"] == pytest.approx(math.exp(-4.0))


def test_anova_equals_statsmodels_and_scipy_on_random_data():
    rng = np.random.default_rng(7)
    variants = ("trm", "da", "ave", "hn")
    values = rng.normal(0.5, 0.02, size=(6, 4)) + rng.normal(0, 0.02, size=(6, 1))
    frame = seed_frame({("dig", v): {s: values[s, j] for s in range(6)}
                        for j, v in enumerate(variants)})
    out = anova(frame).set_index("metric")
    long = frame[["variant", "seed", "ndcg_20"]]
    rm = AnovaRM(long, "ndcg_20", "seed", within=["variant"]).fit().anova_table
    blocked = anova_lm(smf.ols("ndcg_20 ~ C(variant) + C(seed)", data=long).fit())
    row = out.loc["ndcg_20"]
    assert row["F_rm"] == pytest.approx(rm["F Value"].iloc[0], rel=1e-10)
    assert row["p_rm"] == pytest.approx(rm["Pr > F"].iloc[0], rel=1e-10)
    # the blocked two-way model is the same test for a balanced design
    assert row["F_rm"] == pytest.approx(blocked.loc["C(variant)", "F"], rel=1e-8)
    assert row["p_rm"] == pytest.approx(blocked.loc["C(variant)", "PR(>F)"], rel=1e-8)
    columns = [values[:, j] + 0.01 * METRICS.index("ndcg_20") for j in range(4)]
    assert row["p_friedman"] == pytest.approx(sps.friedmanchisquare(*columns).pvalue)
    assert row["p_oneway"] == pytest.approx(sps.f_oneway(*columns).pvalue)


def test_shared_seed_effect_is_missed_by_one_way_and_found_by_repeated_measures():
    """Seeds move every variant together; variants differ by a small, consistent amount."""
    seed_effect = np.array([-0.03, 0.02, 0.05, -0.04, 0.0, 0.015])
    noise = np.random.default_rng(11).normal(0, 0.001, size=(6, 3))
    offsets = np.array([0.0, 0.006, 0.012])
    values = 0.5 + seed_effect[:, None] + offsets[None, :] + noise
    frame = seed_frame({("dig", v): {s: values[s, j] for s in range(6)}
                        for j, v in enumerate(("trm", "da", "ave"))})
    row = anova(frame).set_index("metric").loc["recall_20"]
    one_way = sps.f_oneway(*values.T)
    assert one_way.pvalue > 0.05 and row["p_oneway"] == pytest.approx(one_way.pvalue)
    assert row["p_rm"] < 0.01
    assert row["p_friedman"] < 0.01


def test_anova_two_variants_is_empty_with_columns_and_degenerate_cases_are_nan():
    two = seed_frame({("dig", "trm"): BASE, ("dig", "da"): DA})
    empty = anova(two)
    assert empty.empty and {"F_rm", "p_rm", "p_friedman", "p_oneway"} <= set(empty.columns)
    constant = seed_frame({("d", v): {1: x, 2: x} for v, x in (("a", 0.1), ("b", 0.2), ("c", 0.3))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = anova(constant)
    assert out["F_rm"].isna().all() and out["p_rm"].isna().all()
    assert out["F_oneway"].isna().all() and (out["note"] != "").all()
    tied = seed_frame({("d", v): {1: 0.2, 2: 0.3, 3: 0.1} for v in ("a", "b", "c")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = anova(tied)
    assert out["p_friedman"].isna().all() and out["p_rm"].isna().all()


def test_posthoc_compares_every_pair_with_the_correction():
    frame = three_variants()
    out = posthoc_tests(frame, alpha=0.01, correction="holm")
    assert len(out) == 3 * len(METRICS) and (out["family_size"] == 18).all()
    assert set(zip(out["variant_a"], out["variant_b"], strict=True)) == {
        ("trm", "da"), ("trm", "ave"), ("da", "ave")}
    rec = frame.set_index(["variant", "seed"])
    for row in out.itertuples(index=False):
        a = [rec.loc[(row.variant_a, s), row.metric] for s in sorted(BASE)]
        b = [rec.loc[(row.variant_b, s), row.metric] for s in sorted(BASE)]
        assert row.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    np.testing.assert_allclose(out["p_adjusted"],
                               multipletests(out["p_value"], method="holm")[1], rtol=1e-12)
    assert posthoc_tests(seed_frame({("d", "trm"): BASE, ("d", "da"): DA})).empty


# ---------------------------------------------------------------- ablation


def test_ablation_arms_are_compared_with_the_full_model_by_seed():
    full = seed_frame({("dig", "da"): DA, ("dig", "trm"): BASE}).assign(arm=FULL_ARM)
    gating = seed_frame({("dig", "da"): {s: v - 0.01 * (s % 3) for s, v in DA.items()}})
    recent = seed_frame({("dig", "da"): {s: v + 0.002 * s for s, v in DA.items()}})
    frame = pd.concat([full, gating.assign(arm="da_gating=false"),
                       recent.assign(arm="da_recent=false")])
    skipped = {("dig", "da", "da_residual=false"): "already the full model"}
    out = ablation_tests(frame, alpha=0.01, correction="holm", skipped=skipped)
    assert set(out["variant"]) == {"da"}  # trm has no arm: not in the ablation table
    assert list(dict.fromkeys(out["arm"])) == [FULL_ARM, "da_gating=false", "da_recent=false",
                                               "da_residual=false"]
    tested = out[out["p_value"].notna()]
    assert len(tested) == 2 * len(METRICS) and (tested["family_size"] == 12).all()
    np.testing.assert_allclose(tested["p_adjusted"],
                               multipletests(tested["p_value"], method="holm")[1])
    row = out[(out["arm"] == "da_gating=false") & (out["metric"] == "recall_20")].iloc[0]
    arm = [DA[s] - 0.01 * (s % 3) for s in sorted(DA)]
    expected = sps.ttest_rel(arm, [DA[s] for s in sorted(DA)])
    assert row["p_value"] == pytest.approx(expected.pvalue)
    assert row["mean_diff"] == pytest.approx(-0.01 * np.mean([s % 3 for s in sorted(DA)]))
    assert row["diff_ci_low"] == pytest.approx(expected.confidence_interval().low)
    shifted = np.add(arm, 0.01 * METRICS.index("recall_20"))
    assert row["mean"] == pytest.approx(shifted.mean())
    assert row["ci_low"] == pytest.approx(mean_interval(shifted)[0])
    assert out.loc[out["arm"] == FULL_ARM, "p_value"].isna().all()
    skipped_rows = out[out["arm"] == "da_residual=false"]
    assert (skipped_rows["note"] == "already the full model").all()
    assert skipped_rows["p_value"].isna().all()


# ---------------------------------------------------------------- session level


def test_randomization_test_hand_computed_cases():
    # [1, 2, 3, 4]: of the 16 sign patterns only all + and all - reach |mean| >= 2.5: p = 2/16.
    assert randomization_test([1.0, 2.0, 3.0, 4.0], n_resamples=100_000) == pytest.approx(
        0.125, abs=0.01)
    diff = np.array([1.0, -2.0, 3.0, 4.0, 0.5])
    flips = np.array(list(itertools.product([-1, 1], repeat=5)))
    exact = np.mean(np.abs((flips * np.abs(diff)).mean(axis=1)) >= abs(diff.mean()) - 1e-12)
    assert randomization_test(diff, n_resamples=100_000) == pytest.approx(exact, abs=0.01)
    assert math.isnan(randomization_test(np.zeros(10)))


def test_randomization_test_agrees_with_scipy_permutation_test_and_is_seeded():
    rng = np.random.default_rng(4)
    diff = np.round(rng.normal(0.05, 0.5, size=300), 2)  # rounded: ties, as per-session metrics
    expected = sps.permutation_test(
        (diff,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
        vectorized=True, n_resamples=20_000, rng=np.random.default_rng(0)).pvalue
    got = randomization_test(diff, seed=1)
    assert got == pytest.approx(expected, abs=0.02)
    assert randomization_test(diff, seed=1) == got  # reproducible
    with_zeros = np.concatenate([diff, np.zeros(50)])  # zeros do not change the test
    assert randomization_test(with_zeros, seed=1) == got


def test_bootstrap_interval_equals_scipy_and_the_t_interval_at_many_rows():
    rng = np.random.default_rng(5)
    diff = rng.normal(0.01, 0.2, size=3000)
    got = bootstrap_interval(diff, seed=3)
    expected = sps.bootstrap((diff,), np.mean, n_resamples=10_000, method="percentile",
                             rng=np.random.default_rng(3)).confidence_interval
    assert got == (pytest.approx(expected.low), pytest.approx(expected.high))
    half = t_quantile(0.95, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
    assert got[0] == pytest.approx(diff.mean() - half, abs=0.1 * half)
    assert got[1] == pytest.approx(diff.mean() + half, abs=0.1 * half)
    assert bootstrap_interval(diff, seed=3) == got
    assert bootstrap_interval(np.full(5, 0.2)) == (pytest.approx(0.2), pytest.approx(0.2))


def test_row_level_tests_equal_scipy_on_seed_averaged_rows():
    rng = np.random.default_rng(1)
    base = rng.integers(1, 40, size=(3, 300))
    better = np.maximum(base - rng.integers(0, 4, size=(3, 300)), 1)
    out = row_level_tests({"trm": base, "da": better}, baseline="trm", k=20, seed=2)
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
        assert row["p_wilcoxon_supplementary"] == pytest.approx(
            sps.wilcoxon(a - b, zero_method="wilcox").pvalue, rel=1e-10
        )
        expected = sps.permutation_test(
            (a - b,), lambda x, axis: np.mean(x, axis=axis), permutation_type="samples",
            vectorized=True, rng=np.random.default_rng(0)).pvalue
        assert row["p_randomization"] == pytest.approx(expected, abs=0.01)
        ci = sps.bootstrap((a - b,), np.mean, n_resamples=10_000, method="percentile",
                           rng=np.random.default_rng(2)).confidence_interval
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    np.testing.assert_allclose(out["p_randomization_adjusted"],
                               multipletests(out["p_randomization"], method="holm")[1])
    assert (out["significant"] == (out["p_randomization_adjusted"] < 0.01)).all()
    assert (out["family_size"] == 2).all() and (out["n_resamples"] == 10_000).all()


def test_row_level_tests_identical_rows_and_bad_input():
    ranks = np.array([[1, 5, 30, 2]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = row_level_tests({"trm": ranks, "copy": ranks.copy()}, baseline="trm")
    for column in ("p_randomization", "p_wilcoxon_supplementary", "p_ttest", "mde"):
        assert out[column].isna().all(), column
    assert (out["note"] != "").all() and not out["significant"].any()
    with pytest.raises(ValueError, match="different numbers of rows"):
        row_level_tests({"trm": ranks, "da": np.array([[1, 2]])}, baseline="trm")
    with pytest.raises(ValueError, match=r"available: \['da'\]"):
        row_level_tests({"da": ranks}, baseline="trm")
