"""The report: head/tail/cold split and coverage (verdict.beyond), the Table-1 frame and markdown
(verdict.tables) and the files written (verdict.report)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from verdict.beyond import (
    TAIL_TARGETS,
    beyond_mean_table,
    catalog_coverage,
    group_metrics,
    head_item_mask,
    item_groups,
)
from verdict.markdown import BETTER, WORSE
from verdict.options import FULL_ARM
from verdict.report import write_report
from verdict.results import TestResults, exposure_counts
from verdict.seed_level import METRICS, paired_tests
from verdict.session_level import ALL_ROWS, ARM_SESSION_COLUMNS, arm_session_tests
from verdict.tables import results_table_frame, results_table_markdown

# ids 1..10; by popularity: 3(9) 9(7) 1(5) 10(4) 6(3) 7(3) 8(2) 2(1) 4(1) 5(0)
POPULARITY = np.array([0, 5, 1, 9, 1, 0, 3, 3, 2, 7, 4], dtype=np.int64)
SEEDS = (11, 22, 33, 44, 55)


def seed_frame(dataset: str, means: dict[str, float], noise: dict[str, float]) -> pd.DataFrame:
    """Five seeds per variant: value = mean + a seed effect shared by all variants + own noise."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.01, size=len(SEEDS))
    rows = []
    for variant, mean in means.items():
        own = rng.normal(0, noise[variant], size=len(SEEDS))
        for i, seed in enumerate(SEEDS):
            value = mean + shared[i] + own[i]
            rows.append(
                {
                    "dataset": dataset,
                    "variant": variant,
                    "seed": seed,
                    **{m: value * (0.5 if "mrr" in m else 1.0) for m in METRICS},
                }
            )
    return pd.DataFrame(rows)


def table_results() -> pd.DataFrame:
    """trm baseline; da clearly better, ave clearly worse, hn the same up to tiny noise."""
    return seed_frame(
        "diginetica",
        {"ave": 0.45, "trm": 0.50, "da": 0.53, "hn": 0.50},
        {"ave": 0.001, "trm": 0.0, "da": 0.001, "hn": 0.004},
    )


def markdown_cells(markdown: str, dataset: str) -> dict[str, str]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines if line.startswith(f"| {dataset} "))
    return dict(zip(header, [c.strip() for c in row.strip("|").split("|")], strict=True))


def section(markdown: str, title: str) -> str:
    start = markdown.index(title)
    end = markdown.find("\n## ", start + 1)
    return markdown[start:] if end < 0 else markdown[start:end]


# ---------------------------------------------------------------- beyond the mean


def test_head_items_are_the_most_popular_targeted_items_with_ties_to_lower_id():
    # 9 items are training targets (5 never is): round(0.2 x 9) = 2 head items.
    assert np.flatnonzero(head_item_mask(POPULARITY, 0.2)).tolist() == [3, 9]
    # round(0.6 x 9) = 5: 3, 9, 1, 10, then 6 and 7 tie at 3 -> 6 (lower id) wins.
    assert np.flatnonzero(head_item_mask(POPULARITY, 0.6)).tolist() == [1, 3, 6, 9, 10]
    # The share is of the targeted items, not the catalog: with 4 of 10 items targeted, 20% is
    # round(0.8) = 1 item (of the catalog it would be 2, one of them never a target).
    few = np.array([0, 0, 6, 0, 5, 0, 0, 1, 0, 2, 0])
    assert np.flatnonzero(head_item_mask(few, 0.2)).tolist() == [2]
    assert not head_item_mask(np.zeros(11, dtype=np.int64)).any()  # nothing targeted
    with pytest.raises(ValueError, match="head_fraction"):
        head_item_mask(POPULARITY, 1.0)


def test_the_report_and_the_diffusion_stages_share_one_head_definition():
    import inspect

    import models.item_groups
    import verdict.beyond
    import verdict.popularity
    import verdict.report
    from models.diffusion import stages

    # The same objects, not copies that could drift apart.
    assert verdict.beyond.head_item_mask is stages.head_item_mask \
        is models.item_groups.head_item_mask
    assert verdict.beyond.HEAD_FRACTION is stages.HEAD_FRACTION \
        is models.item_groups.HEAD_FRACTION
    for function in (verdict.report.write_report, verdict.beyond.item_groups,
                     verdict.popularity.popularity_table, verdict.popularity.tail_session_tests):
        default = inspect.signature(function).parameters["head_fraction"].default
        assert default is models.item_groups.HEAD_FRACTION, function.__name__
    # And the same items: the stages' head group is the report's head, on sparse counts too.
    targets = np.repeat(np.arange(1, 11), [9, 1, 8, 1, 0, 3, 3, 2, 7, 4])
    popularity = np.bincount(targets, minlength=31)  # 20 of the 30 items never a target
    groups = stages.popularity_groups(targets, 31, tail_quantile=0.5)
    assert np.array_equal(groups == stages.HEAD, item_groups(popularity)["head"])
    assert np.flatnonzero(groups == stages.HEAD).tolist() == [1, 3]


def test_item_groups_partition_the_catalog_and_cold_is_never_a_training_target():
    groups = item_groups(POPULARITY, 0.2)
    assert np.flatnonzero(groups["head"]).tolist() == [3, 9]
    assert np.flatnonzero(groups["cold"]).tolist() == [5]
    assert np.flatnonzero(groups["tail"]).tolist() == [1, 2, 4, 6, 7, 8, 10]
    # Mostly unseen items: the 20% "most popular" would include never-seen ids; they are cold.
    sparse = np.array([0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0])
    groups = item_groups(sparse, 0.2)
    assert np.flatnonzero(groups["head"]).tolist() == [2]
    assert np.flatnonzero(groups["cold"]).tolist() == [1, 3, 4, 5, 6, 7, 8, 9, 10]
    assert not groups["tail"].any()
    stacked = np.stack(list(groups.values()))
    assert (stacked.sum(axis=0)[1:] == 1).all() and not stacked[:, 0].any()


def test_group_metrics_on_hand_made_rows():
    targets = np.array([3, 9, 2, 5, 3])  # head = {3, 9}: rows 0, 1, 4; tail: row 2; cold: row 3
    ranks = np.array([1, 25, 4, 2, 10])
    out = group_metrics(ranks, targets, POPULARITY, head_fraction=0.2, k=20)
    assert out["head_recall_20"] == pytest.approx(2 / 3)
    assert out["head_mrr_20"] == pytest.approx((1 + 0 + 0.1) / 3)
    assert out["tail_recall_20"] == pytest.approx(1.0)
    assert out["tail_mrr_20"] == pytest.approx(0.25)
    assert out["cold_recall_20"] == pytest.approx(1.0)
    assert out["cold_mrr_20"] == pytest.approx(0.5)
    assert (out["n_head_rows"], out["n_tail_rows"], out["n_cold_rows"]) == (3, 1, 1)
    assert out["head_row_fraction"] == pytest.approx(0.6)
    assert out["cold_row_fraction"] == pytest.approx(0.2)
    assert (out["n_head_targets"], out["n_tail_targets"], out["n_cold_targets"]) == (2, 1, 1)
    assert (out["n_head_items"], out["n_tail_items"], out["n_cold_items"]) == (2, 7, 1)
    no_cold = group_metrics(ranks[:3], targets[:3], POPULARITY)
    assert np.isnan(no_cold["cold_recall_20"]) and no_cold["n_cold_rows"] == 0


def test_catalog_coverage_counts_distinct_real_items():
    topk = np.array([[1, 2, 3], [2, 3, 4], [0, 1, 2]], dtype=np.int32)  # 0 = padding
    exposure = exposure_counts(topk, n_items=11, k=3)
    assert exposure.tolist() == [1, 2, 3, 2, 1, 0, 0, 0, 0, 0, 0]
    assert catalog_coverage(exposure) == pytest.approx(4 / 10)
    assert catalog_coverage(exposure_counts(topk, n_items=11, k=1)) == pytest.approx(2 / 10)
    with pytest.raises(ValueError, match="top-k ids"):
        exposure_counts(np.array([[1, 11]]), n_items=11)


def test_beyond_mean_table_averages_seeds_with_intervals_and_counts():
    targets = np.array([3, 9, 2, 5, 3])
    seeds = [
        (np.array(ranks), exposure_counts(np.tile(np.arange(20) % m + 1, (5, 1)), 11))
        for ranks, m in (([1, 25, 4, 2, 10], 10), ([2, 2, 30, 1, 1], 5), ([3, 30, 1, 40, 2], 8))
    ]
    table = beyond_mean_table(
        {("d", "trm"): seeds}, {"d": targets}, {"d": POPULARITY}, {"d": 11}, head_fraction=0.2
    )
    row = table.iloc[0]
    head_recall = [2 / 3, 1.0, 2 / 3]  # rows 0, 1, 4 hit @20 in each seed: by hand
    cold_mrr = [1 / 2, 1 / 1, 0.0]  # row 3: ranks 2, 1, 40
    assert row["head_recall_20"] == pytest.approx(np.mean(head_recall))
    assert row["head_recall_20_std"] == pytest.approx(np.std(head_recall, ddof=1))
    half = sps.t.ppf(0.975, 2) * np.std(cold_mrr, ddof=1) / np.sqrt(3)
    assert row["cold_mrr_20"] == pytest.approx(0.5)
    assert row["cold_mrr_20_ci_low"] == pytest.approx(0.5 - half)
    assert row["cold_mrr_20_ci_high"] == pytest.approx(0.5 + half)
    assert row["coverage_20"] == pytest.approx((10 / 10 + 5 / 10 + 8 / 10) / 3)
    assert row["n_seeds"] == 3 and row["n_cold_rows"] == 1 and row["n_cold_items"] == 1
    assert row["n_head_rows"] == 3 and row["n_tail_rows"] == 1


# ---------------------------------------------------------------- Table 1


def test_results_frame_marks_best_and_carries_raw_and_adjusted_p_and_intervals():
    results = table_results()
    tests = paired_tests(results, baseline="trm")
    frame = results_table_frame(results, tests, baseline="trm")
    best = frame[frame["best"]]
    assert set(best["variant"]) == {"da"} and len(best) == len(METRICS)
    base = frame[frame["variant"] == "trm"]
    assert base["p_value"].isna().all() and not base["significant"].any()
    da = frame[(frame["variant"] == "da") & (frame["metric"] == "mrr_20")].iloc[0]
    expected = tests[(tests["variant"] == "da") & (tests["metric"] == "mrr_20")].iloc[0]
    assert da["p_value"] == expected["p_value"] and da["significant"]
    assert da["p_adjusted"] == pytest.approx(
        multipletests(tests["p_value"], method="holm")[1][expected.name])
    values = results.loc[results["variant"] == "da", "mrr_20"]
    low, high = sps.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sps.sem(values))
    assert (da["ci_low"], da["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert da["diff_ci_low"] == expected["ci_low"] and np.isnan(da["mde"])
    assert da["correction"] == "holm"


def test_markdown_bolds_best_shows_intervals_and_marks_only_adjusted_significance():
    markdown = results_table_markdown(table_results(), baseline="trm")
    cells = markdown_cells(markdown, "diginetica")
    assert cells["Metric"] == "R@20 / M@20"
    recall_da, mrr_da = cells["CORE-DA"].split(" / ")
    assert recall_da.startswith("**53.") and recall_da.endswith(f"]{BETTER}")
    assert mrr_da.startswith("**26.") and mrr_da.endswith(f"]{BETTER}")
    assert " ± " in recall_da and "** [" in recall_da
    assert "**" not in cells["CORE-HN"] and BETTER not in cells["CORE-HN"]
    assert WORSE not in cells["CORE-HN"]
    assert cells["CORE-ave"].count(WORSE) == 2 and "**" not in cells["CORE-ave"]
    assert BETTER not in cells["CORE-trm"] and WORSE not in cells["CORE-trm"]
    footnote = markdown.split("\n\n")[-1]
    assert "5 seeds" in footnote and "CORE-trm" in footnote and "p < 0.01" in footnote
    assert "Holm-adjusted" in footnote and "3 variants × 6 metrics = 18" in footnote


def test_a_raw_significant_difference_loses_its_mark_after_the_correction():
    # da - trm: diffs with raw p ~ 0.004 in every metric; 3 compared variants x 6 metrics.
    rows = []
    for variant, values in (("trm", [0.50, 0.52, 0.47, 0.55, 0.49]),
                            ("da", [0.51, 0.535, 0.475, 0.562, 0.498]),
                            ("ave", [0.45, 0.49, 0.44, 0.46, 0.47]),
                            ("hn", [0.50, 0.51, 0.48, 0.56, 0.49])):
        rows += [{"dataset": "d", "variant": variant, "seed": s, **dict.fromkeys(METRICS, v)}
                 for s, v in enumerate(values)]
    results = pd.DataFrame(rows)
    tests = paired_tests(results, baseline="trm")
    da = tests[tests["variant"] == "da"]
    assert (da["p_value"] < 0.01).all() and not da["significant"].any()
    cells = markdown_cells(results_table_markdown(results, tests, "trm"), "d")
    assert BETTER not in cells["CORE-DA"]
    raw = paired_tests(results, baseline="trm", correction="none")
    cells = markdown_cells(results_table_markdown(results, raw, "trm"), "d")
    assert cells["CORE-DA"].count(BETTER) == 2


def test_markdown_rejects_tests_against_another_baseline():
    results = table_results()
    with pytest.raises(ValueError, match="computed against"):
        results_table_markdown(results, paired_tests(results, baseline="ave"), baseline="trm")


# ---------------------------------------------------------------- files


def per_row_for(variants, n_rows=40, n_seeds=2, seed=2):
    rng = np.random.default_rng(seed)
    return {
        ("diginetica", v): [
            (rng.integers(1, 30, size=n_rows),
             exposure_counts(rng.integers(1, 11, size=(n_rows, 20)), 11))
            for _ in range(n_seeds)
        ]
        for v in variants
    }


def test_write_report_writes_every_file(tmp_path):
    results = table_results()
    targets = np.random.default_rng(3).integers(1, 11, size=40)
    per_row = per_row_for(("ave", "trm", "da", "hn"))
    paths = write_report(
        tmp_path / "report",
        TestResults(results, per_row, targets={"diginetica": targets},
                    popularity={"diginetica": POPULARITY}, n_items={"diginetica": 11}),
        baseline="trm",
        correction="bonferroni",
        baseline_note="strongest baseline on validation: ave 0.1, trm 0.2",
    )
    expected = {
        "results_md",
        "results_csv",
        "seed_results_csv",
        "anova_csv",
        "posthoc_csv",
        "seed_distributions_png",
        "beyond_mean_csv",
        "session_tests_csv",
        "popularity_csv",
        "tail_session_tests_csv",
    }
    assert set(paths) == expected and all(p.is_file() for p in paths.values())
    png = paths["seed_distributions_png"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    markdown = paths["results_md"].read_text()
    for heading in ("Repeated-measures ANOVA", "Friedman", "Post-hoc", "Session-level",
                    "not independent", "Beyond the mean", "t-tests", "randomization",
                    "bootstrap", "Wilcoxon, supplementary", "MDE", "Bonferroni-adjusted",
                    "strongest baseline on validation: ave 0.1, trm 0.2"):
        assert heading in markdown, heading
    assert len(pd.read_csv(paths["seed_results_csv"])) == len(results)
    results_csv = pd.read_csv(paths["results_csv"])
    assert {"p_value", "p_adjusted", "correction", "ci_low", "ci_high", "diff_ci_low",
            "diff_ci_high", "d_z", "mde"} <= set(results_csv.columns)
    assert (results_csv["correction"].dropna() == "bonferroni").all()
    not_significant = results_csv[results_csv["p_value"].notna() & ~results_csv["significant"]]
    assert len(not_significant) and not_significant["mde"].notna().all()
    anova_csv = pd.read_csv(paths["anova_csv"])
    assert len(anova_csv) == len(METRICS) and {"F_rm", "p_rm", "p_friedman"} <= set(anova_csv)
    assert len(pd.read_csv(paths["posthoc_csv"])) == 6 * len(METRICS)  # C(4, 2) pairs
    session = pd.read_csv(paths["session_tests_csv"])
    assert {"p_randomization", "p_randomization_adjusted", "ci_low", "ci_high",
            "p_wilcoxon_supplementary"} <= set(session.columns)
    beyond = pd.read_csv(paths["beyond_mean_csv"])
    assert len(beyond) == 4
    # the one cold item (id 5) is the target of exactly the rows the report counts
    assert (beyond["n_cold_rows"] == int((targets == 5).sum())).all()
    assert (beyond["n_cold_rows"] + beyond["n_head_rows"] + beyond["n_tail_rows"] == 40).all()
    beyond_md = section(markdown, "## Beyond the mean")
    cold_rows = [line for line in beyond_md.splitlines() if "| cold |" in line]
    assert len(cold_rows) == 4 and f"| {int((targets == 5).sum())} (" in cold_rows[0]
    popularity = pd.read_csv(paths["popularity_csv"])
    assert len(popularity) == 4 and {"arp_20", "tail_share_20", "gini_20"} <= set(popularity)
    tail_tests = pd.read_csv(paths["tail_session_tests_csv"])
    n_tail = int(item_groups(POPULARITY)["tail"][targets].sum())
    assert (tail_tests["n_rows"] == n_tail).all() and len(tail_tests) == 3 * 2
    assert "## Popularity view" in markdown and "tail-target rows" in markdown


def test_write_report_with_ablation_arms_writes_the_ablation_table(tmp_path):
    results = table_results().query("variant in ['trm', 'da']").assign(arm=FULL_ARM)
    arm = results[results["variant"] == "da"].assign(arm="da_gating=false")
    arm[list(METRICS)] -= 0.02
    frame = pd.concat([results, arm], ignore_index=True)
    skipped = {("diginetica", "da", "da_recent=false"): "the selected configuration already "
               "has da_recent=false, so this arm is the full model"}
    paths = write_report(tmp_path, TestResults(frame, skipped_arms=skipped))
    ablation = pd.read_csv(paths["ablation_csv"])
    assert set(ablation["variant"]) == {"da"}
    assert list(dict.fromkeys(ablation["arm"])) == [FULL_ARM, "da_gating=false",
                                                    "da_recent=false"]
    gating = ablation[ablation["arm"] == "da_gating=false"]
    assert gating["mean_diff"].to_numpy() == pytest.approx(-0.02)
    # the report's main tables use the full configurations only
    assert len(pd.read_csv(paths["results_csv"])) == 2 * len(METRICS)
    assert len(pd.read_csv(paths["seed_results_csv"])) == len(frame)
    markdown = section(paths["results_md"].read_text(), "## Ablation")
    assert "### CORE-DA" in markdown and "| full (selected) | R@20 |" in markdown
    assert "| da_gating=false | M@20 |" in markdown
    assert "Not retrained: da_recent=false" in markdown


def arm_rows(n_rows=400, n_seeds=3, seed=5):
    """Full-configuration ranks, and an arm's: the same rows, its tail-target rows pushed out
    of the top 20 in about half the cases; targets drawn over POPULARITY's items."""
    rng = np.random.default_rng(seed)
    targets = rng.integers(1, 11, size=n_rows)
    tail = item_groups(POPULARITY)["tail"][targets]
    full = [rng.integers(1, 15, size=n_rows) for _ in range(n_seeds)]
    worse = [np.where(tail & (rng.random(n_rows) < 0.5), 50, ranks) for ranks in full]
    exposure = exposure_counts(rng.integers(1, 11, size=(n_rows, 20)), 11)
    return targets, tail, [(r, exposure) for r in full], [(r, exposure) for r in worse]


def test_arm_session_tests_compare_each_arm_with_its_full_configuration_per_subset():
    targets, tail, full, worse = arm_rows()
    same = [(r.copy(), e) for r, e in full]
    per_row = {("diginetica", "da"): full}
    nudged = [(np.where(np.arange(len(r)) < 3, 50, r), e) for r, e in full]  # 3 rows worse
    arms = {("diginetica", "da", "da_gating=false"): worse,
            ("diginetica", "da", "da_recent=false"): same,
            ("diginetica", "da", "da_residual=false"): nudged}
    tests = arm_session_tests(per_row, arms, row_subsets={TAIL_TARGETS: {"diginetica": tail}},
                              n_resamples=2000, seed=1, correction="holm", alpha=0.01)
    assert list(tests.columns) == ARM_SESSION_COLUMNS
    assert len(tests) == 3 * 2 * 2  # arms x subsets x metrics (recall, MRR)
    gating = tests[tests["arm"] == "da_gating=false"].set_index(["subset", "metric"])
    # Δ = arm - full over the rows of each subset, the arm's rows averaged over seeds
    hits = lambda runs, rows: np.mean([(r[rows] <= 20) for r, _ in runs], axis=0)  # noqa: E731
    for subset, rows in ((ALL_ROWS, np.ones_like(tail)), (TAIL_TARGETS, tail)):
        expected = (hits(worse, rows) - hits(full, rows)).mean()
        assert gating.loc[(subset, "recall_20"), "mean_diff"] == pytest.approx(expected)
        assert gating.loc[(subset, "recall_20"), "n_rows"] == rows.sum()
    assert gating.loc[(TAIL_TARGETS, "recall_20"), "mean_diff"] < gating.loc[
        (ALL_ROWS, "recall_20"), "mean_diff"] < 0
    assert gating.loc[(TAIL_TARGETS, "recall_20"), "significant"]
    # an arm that changes little: not significant, with its minimum detectable effect
    small = tests[(tests["arm"] == "da_residual=false") & (tests["subset"] == ALL_ROWS)]
    assert (~small["significant"]).all() and (small["mde"] > 0).all()
    # an arm that changes nothing: no difference, no test
    unchanged = tests[tests["arm"] == "da_recent=false"]
    assert (unchanged["mean_diff"] == 0).all() and unchanged["p_randomization"].isna().all()
    # Holm within each subset's family: the defined comparisons of every arm and metric
    for _, family in tests.groupby("subset"):
        defined = family[family["p_randomization"].notna()]
        assert (family["family_size"] == len(defined)).all()
        adjusted = multipletests(defined["p_randomization"], method="holm")[1]
        assert defined["p_randomization_adjusted"].to_numpy() == pytest.approx(adjusted)
    with pytest.raises(ValueError, match="no full configuration"):
        arm_session_tests({}, arms)


def test_write_report_tests_the_arms_on_all_rows_and_tail_targets(tmp_path):
    targets, tail, full, worse = arm_rows()
    frame = table_results().query("variant in ['trm', 'da']").assign(arm=FULL_ARM)
    arm = frame[frame["variant"] == "da"].assign(arm="da_gating=false")
    per_row = {("diginetica", "trm"): full, ("diginetica", "da"): full}
    results = TestResults(pd.concat([frame, arm], ignore_index=True), per_row,
                          targets={"diginetica": targets},
                          popularity={"diginetica": POPULARITY}, n_items={"diginetica": 11},
                          arm_per_row={("diginetica", "da", "da_gating=false"): worse})
    paths = write_report(tmp_path, results)
    tests = pd.read_csv(paths["ablation_session_tests_csv"])
    assert set(tests["subset"]) == {ALL_ROWS, TAIL_TARGETS}
    assert (tests.loc[tests["subset"] == TAIL_TARGETS, "n_rows"] == tail.sum()).all()
    markdown = section(paths["results_md"].read_text(), "## Ablation at the session level")
    assert f"| diginetica | CORE-DA | da_gating=false | {TAIL_TARGETS} | R@20 | {tail.sum()} |" \
        in markdown
    with pytest.raises(ValueError, match="arm_per_row needs per_row"):
        TestResults(frame, arm_per_row={("diginetica", "da", "x"): worse})


def test_write_report_without_per_row_skips_row_level_outputs(tmp_path):
    two = table_results().query("variant in ['trm', 'da']")
    paths = write_report(tmp_path, TestResults(two))
    assert "beyond_mean_csv" not in paths and not (tmp_path / "beyond_mean.csv").exists()
    assert "ablation_csv" not in paths
    markdown = paths["results_md"].read_text()
    assert "Not computed: no dataset has more than two variants" in markdown
    assert "Session-level" not in markdown and "## Ablation" not in markdown
    with pytest.raises(ValueError, match="unknown correction"):
        write_report(tmp_path, TestResults(two), correction="sidak")
    with pytest.raises(ValueError, match="per_row needs targets, popularity and n_items"):
        TestResults(two, per_row_for(("trm", "da")))


def test_row_group_table_averages_each_user_group_over_seeds():
    from verdict.beyond import row_group_table

    groups = np.array(["known", "unknown", "known", "few"], dtype=object)
    seeds = [(np.array([1, 30, 2, 5]), np.zeros(11, dtype=int)),
             (np.array([3, 1, 40, 5]), np.zeros(11, dtype=int))]
    table = row_group_table({("d", "trm"): seeds}, {"d": groups}).set_index("group")
    assert list(table.index) == ["known", "unknown", "few"]
    assert table.loc["known", "n_rows"] == 2 and table.loc["known", "row_fraction"] == 0.5
    # known rows: seed 1 ranks (1, 2) -> recall 1, MRR 0.75; seed 2 ranks (3, 40) -> 0.5, 1/6
    assert table.loc["known", "recall_20"] == pytest.approx(0.75)
    assert table.loc["known", "mrr_20"] == pytest.approx((0.75 + 1 / 6) / 2)
    assert table.loc["unknown", "recall_20"] == pytest.approx(0.5)  # rank 30, then rank 1
    assert table.loc["few", "recall_20_std"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="group labels"):
        row_group_table({("d", "trm"): seeds}, {"d": groups[:3]})
