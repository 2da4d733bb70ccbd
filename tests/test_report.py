"""hpo.report: head/tail split, coverage, the Table-1 markdown and the files written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hpo.report import (
    BETTER,
    WORSE,
    beyond_mean_table,
    catalog_coverage,
    head_item_mask,
    head_tail_metrics,
    results_table_frame,
    results_table_markdown,
    write_report,
)
from hpo.stats import METRICS, paired_tests

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


def test_head_items_are_most_popular_with_ties_to_lower_id():
    assert np.flatnonzero(head_item_mask(POPULARITY, 0.2)).tolist() == [3, 9]
    # 5 head items: 3, 9, 1, 10, then 6 and 7 tie at 3 -> 6 (lower id) wins; padding never head.
    assert np.flatnonzero(head_item_mask(POPULARITY, 0.5)).tolist() == [1, 3, 6, 9, 10]
    with pytest.raises(ValueError, match="head_fraction"):
        head_item_mask(POPULARITY, 1.0)


def test_head_tail_metrics_on_hand_made_rows():
    targets = np.array([3, 9, 2, 5, 3])  # head = {3, 9}: rows 0, 1, 4
    ranks = np.array([1, 25, 4, 2, 10])
    out = head_tail_metrics(ranks, targets, POPULARITY, head_fraction=0.2, k=20)
    assert out["head_recall_20"] == pytest.approx(2 / 3)
    assert out["head_mrr_20"] == pytest.approx((1 + 0 + 0.1) / 3)
    assert out["tail_recall_20"] == pytest.approx(1.0)
    assert out["tail_mrr_20"] == pytest.approx((0.25 + 0.5) / 2)
    assert out["head_row_fraction"] == pytest.approx(0.6)
    assert out["tail_row_fraction"] == pytest.approx(0.4)
    assert out["n_head_items"] == 2


def test_catalog_coverage_counts_distinct_real_items():
    topk = np.array([[1, 2, 3], [2, 3, 4], [0, 1, 2]], dtype=np.int32)  # 0 = padding
    assert catalog_coverage(topk, n_items=11) == pytest.approx(4 / 10)
    with pytest.raises(ValueError, match="top-k ids"):
        catalog_coverage(np.array([[1, 11]]), n_items=11)


def test_beyond_mean_table_averages_seeds():
    targets = np.array([3, 9, 2, 5, 3])
    seeds = [
        (np.array([1, 25, 4, 2, 10]), np.tile(np.arange(20) % 10 + 1, (5, 1))),
        (np.array([2, 2, 30, 1, 1]), np.tile(np.arange(20) % 5 + 1, (5, 1))),
    ]
    table = beyond_mean_table(
        {("d", "trm"): seeds}, {"d": targets}, {"d": POPULARITY}, {"d": 11}, head_fraction=0.2
    )
    row = table.iloc[0]
    per_seed = [head_tail_metrics(r, targets, POPULARITY, 0.2) for r, _ in seeds]
    head_recall = [p["head_recall_20"] for p in per_seed]
    assert row["head_recall_20"] == pytest.approx(np.mean(head_recall))
    assert row["head_recall_20_std"] == pytest.approx(np.std(head_recall, ddof=1))
    assert row["coverage_20"] == pytest.approx((10 / 10 + 5 / 10) / 2)
    assert row["n_seeds"] == 2 and row["head_row_fraction"] == pytest.approx(0.6)


def test_results_frame_marks_best_and_carries_seed_level_p_values():
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


def test_markdown_bolds_best_and_marks_only_significant_variants():
    markdown = results_table_markdown(table_results(), baseline="trm")
    cells = markdown_cells(markdown, "diginetica")
    assert cells["Metric"] == "R@20 / M@20"
    recall_da, mrr_da = cells["CORE-DA"].split(" / ")
    assert recall_da.startswith("**53.") and recall_da.endswith(f"**{BETTER}")
    assert mrr_da.startswith("**26.") and mrr_da.endswith(f"**{BETTER}")
    assert " ± " in recall_da
    assert "**" not in cells["CORE-HN"] and BETTER not in cells["CORE-HN"]
    assert WORSE not in cells["CORE-HN"]
    assert cells["CORE-ave"].count(WORSE) == 2 and "**" not in cells["CORE-ave"]
    assert BETTER not in cells["CORE-trm"] and WORSE not in cells["CORE-trm"]
    footnote = markdown.split("\n\n")[-1]
    assert "5 seeds" in footnote and "CORE-trm" in footnote and "p < 0.01" in footnote


def test_markdown_rejects_tests_against_another_baseline():
    results = table_results()
    with pytest.raises(ValueError, match="computed against"):
        results_table_markdown(results, paired_tests(results, baseline="ave"), baseline="trm")


def test_write_report_writes_every_file(tmp_path):
    results = table_results()
    rng = np.random.default_rng(2)
    targets = rng.integers(1, 11, size=40)
    per_row = {
        ("diginetica", v): [
            (rng.integers(1, 30, size=40), rng.integers(1, 11, size=(40, 20))) for _ in range(2)
        ]
        for v in ("ave", "trm", "da", "hn")
    }
    paths = write_report(
        tmp_path / "report",
        results,
        baseline="trm",
        per_row=per_row,
        targets_by_dataset={"diginetica": targets},
        popularity_by_dataset={"diginetica": POPULARITY},
        n_items_by_dataset={"diginetica": 11},
    )
    expected = {
        "results_md",
        "results_csv",
        "seed_results_csv",
        "anova_csv",
        "seed_distributions_png",
        "beyond_mean_csv",
        "session_tests_csv",
    }
    assert set(paths) == expected and all(p.is_file() for p in paths.values())
    png = paths["seed_distributions_png"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    markdown = paths["results_md"].read_text()
    for heading in ("ANOVA", "Session-level", "not independent", "Beyond the mean", "t-tests"):
        assert heading in markdown
    assert len(pd.read_csv(paths["seed_results_csv"])) == len(results)
    assert len(pd.read_csv(paths["beyond_mean_csv"])) == 4
    assert len(pd.read_csv(paths["anova_csv"])) == len(METRICS)


def test_write_report_without_per_row_skips_row_level_outputs(tmp_path):
    two = table_results().query("variant in ['trm', 'da']")
    paths = write_report(tmp_path, two)
    assert "beyond_mean_csv" not in paths and not (tmp_path / "beyond_mean.csv").exists()
    markdown = paths["results_md"].read_text()
    assert "Not computed: no dataset has more than two variants" in markdown
    assert "Session-level" not in markdown
