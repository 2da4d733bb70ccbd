"""The selection-then-test report: computes the tables (``verdict.seed_level``,
``verdict.session_level``, ``verdict.beyond``, ``verdict.popularity``), renders them
(``verdict.tables``, ``verdict.row_tables``, ``verdict.plots``) and writes the files the test
stage logs to MLflow.

Files: results.md, results.csv, seed_results.csv, anova.csv, posthoc.csv, seed_distributions.png;
with per-row results session_tests.csv, beyond_mean.csv, popularity.csv and
tail_session_tests.csv (and user_groups.csv with row groups); with ablation arms ablation.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from models.item_groups import HEAD_FRACTION
from verdict.beyond import TAIL_TARGETS, beyond_mean_table, row_group_table, tail_target_rows
from verdict.markdown import variant_label
from verdict.options import DEFAULT_ALPHA, FULL_ARM, check_correction
from verdict.plots import plot_seed_distributions
from verdict.popularity import popularity_table, tail_session_tests
from verdict.results import TestResults
from verdict.row_tables import (
    arm_session_markdown,
    beyond_markdown,
    popularity_markdown,
    row_groups_markdown,
    session_markdown,
)
from verdict.seed_level import (
    METRICS,
    ablation_tests,
    anova,
    check_seed_results,
    paired_tests,
    posthoc_tests,
)
from verdict.session_level import N_RESAMPLES, arm_session_tests, session_tests
from verdict.tables import (
    ablation_markdown,
    anova_markdown,
    comparisons_markdown,
    posthoc_markdown,
    protocol_markdown,
    results_table_frame,
    results_table_markdown,
)


def _deterministic_notes(seed_results: pd.DataFrame) -> list[str]:
    """A sentence naming the variants whose seed runs agree exactly on every metric (nothing in
    them is random: a kNN model with "recent" sampling), for the report's opening lines: their
    spread is 0, and a paired test between two of them is undefined, not significant.

    Args:
        seed_results: one row per (dataset, variant, seed) with every metric.
    """
    fixed = [f"{variant_label(v)} ({d})" for (d, v), rows in
             seed_results.groupby(["dataset", "variant"], sort=False)
             if len(rows) > 1 and (rows[list(METRICS)].nunique() == 1).all()]
    if not fixed:
        return []
    return ["Deterministic: the seed runs of " + ", ".join(fixed) + " agree exactly (nothing "
            "in them depends on the seed), so their spread is 0; a paired t-test between two "
            "such arms is undefined and reported as such."]


def split_arms(seed_results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The selected configurations' rows, and all rows when ablation arms are present.

    Args:
        seed_results: per-seed results, with or without an ``arm`` column.

    Returns:
        (rows of the full configurations without the ``arm`` column, the whole frame or None
        when there is no arm besides ``FULL_ARM``).
    """
    if "arm" not in seed_results.columns:
        return seed_results, None
    full = seed_results[seed_results["arm"] == FULL_ARM].drop(columns="arm")
    has_arms = (seed_results["arm"] != FULL_ARM).any()
    return full.reset_index(drop=True), seed_results if has_arms else None


def write_report(
    out_dir: str | Path,
    results: TestResults,
    *,
    baseline: str = "trm",
    alpha: float = DEFAULT_ALPHA,
    correction: str = "holm",
    baseline_note: str = "",
    resample_seed: int = 0,
    n_resamples: int = N_RESAMPLES,
    head_fraction: float = HEAD_FRACTION,
    protocol_notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the report's files; return their paths by name.

    Args:
        out_dir: the report directory (created).
        results: the seed runs' results (``TestResults``): per-seed metrics, and optionally
            per-row results, user groups and the ablation arms not retrained.
        baseline: the variant every other one is compared with.
        alpha: the significance level of every table.
        correction: one of ``verdict.options.CORRECTIONS``, applied within each table.
        baseline_note: how the baseline was chosen, for the report's opening lines.
        resample_seed: seed of the randomization and bootstrap tests.
        n_resamples: resamples of the randomization and bootstrap tests.
        head_fraction: the head's share of the items that occur as training targets
            (``models.item_groups``: the diffusion stages' head too).
        protocol_notes: further lines for the report's opening list (how the results were
            made: a training-row cut, arms compared although unequal, ...).

    Returns:
        results_md, results_csv, seed_results_csv, anova_csv, posthoc_csv,
        seed_distributions_png; session_tests_csv, beyond_mean_csv, popularity_csv and
        tail_session_tests_csv with per-row results (user_groups_csv with row groups);
        ablation_csv with arms; ablation_session_tests_csv with the arms' per-row results.

    Raises:
        ValueError: an unknown correction, or seed results that ``check_seed_results`` refuses.
    """
    check_correction(correction)
    seed_results, per_row = results.seed_results, results.per_row
    full, arms = split_arms(seed_results)
    check_seed_results(full)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = {"alpha": alpha, "correction": correction}
    tests = paired_tests(full, baseline, **options)
    omnibus = anova(full)
    posthoc = posthoc_tests(full, **options)
    paths = {name: out_dir / f"{name.removesuffix('_csv')}.csv"
             for name in ("seed_results_csv", "results_csv", "anova_csv", "posthoc_csv")}
    paths["results_md"] = out_dir / "results.md"
    seed_results.to_csv(paths["seed_results_csv"], index=False)
    results_table_frame(full, tests, baseline).to_csv(paths["results_csv"], index=False)
    omnibus.to_csv(paths["anova_csv"], index=False)
    posthoc.to_csv(paths["posthoc_csv"], index=False)
    n_seeds = int(full.groupby(["dataset", "variant"]).size().max())
    protocol_notes = [*protocol_notes, *_deterministic_notes(full)]
    sections = [
        "# Test results (selection-then-test)",
        protocol_markdown(list(dict.fromkeys(full["dataset"])), baseline=baseline,
                          baseline_note=baseline_note, n_seeds=n_seeds, correction=correction,
                          alpha=alpha, notes=protocol_notes),
        results_table_markdown(full, tests, baseline),
        comparisons_markdown(tests),
        anova_markdown(omnibus),
        posthoc_markdown(posthoc),
    ]
    if per_row is not None:
        session = session_tests(per_row, baseline, n_resamples=n_resamples, seed=resample_seed,
                                **options)
        beyond = beyond_mean_table(per_row, results.targets, results.popularity,
                                   results.n_items, head_fraction=head_fraction)
        paths["session_tests_csv"] = out_dir / "session_tests.csv"
        paths["beyond_mean_csv"] = out_dir / "beyond_mean.csv"
        session.to_csv(paths["session_tests_csv"], index=False)
        beyond.to_csv(paths["beyond_mean_csv"], index=False)
        popularity = popularity_table(per_row, results.popularity, head_fraction=head_fraction)
        tail_tests = tail_session_tests(
            per_row, results.targets, results.popularity, baseline, head_fraction=head_fraction,
            n_resamples=n_resamples, seed=resample_seed, **options,
        )
        paths["popularity_csv"] = out_dir / "popularity.csv"
        paths["tail_session_tests_csv"] = out_dir / "tail_session_tests.csv"
        popularity.to_csv(paths["popularity_csv"], index=False)
        tail_tests.to_csv(paths["tail_session_tests_csv"], index=False)
        sections += [session_markdown(session), beyond_markdown(beyond, head_fraction),
                     popularity_markdown(popularity, tail_tests, head_fraction)]
        if results.row_groups:
            groups = row_group_table(per_row, results.row_groups)
            paths["user_groups_csv"] = out_dir / "user_groups.csv"
            groups.to_csv(paths["user_groups_csv"], index=False)
            sections.append(row_groups_markdown(groups))
    if arms is not None or results.skipped_arms:
        source = arms if arms is not None else full.assign(arm=FULL_ARM)
        ablation = ablation_tests(source, skipped=results.skipped_arms, **options)
        paths["ablation_csv"] = out_dir / "ablation.csv"
        ablation.to_csv(paths["ablation_csv"], index=False)
        sections.append(ablation_markdown(ablation))
    if per_row is not None and results.arm_per_row:
        tails = {dataset: tail_target_rows(results.targets[dataset], results.popularity[dataset],
                                           head_fraction)
                 for dataset in dict.fromkeys(d for d, _, _ in results.arm_per_row)}
        arm_tests = arm_session_tests(per_row, results.arm_per_row,
                                      row_subsets={TAIL_TARGETS: tails},
                                      n_resamples=n_resamples, seed=resample_seed, **options)
        paths["ablation_session_tests_csv"] = out_dir / "ablation_session_tests.csv"
        arm_tests.to_csv(paths["ablation_session_tests_csv"], index=False)
        sections.append(arm_session_markdown(arm_tests, head_fraction))
    paths["results_md"].write_text("\n\n".join(s.strip() for s in sections) + "\n")
    paths["seed_distributions_png"] = plot_seed_distributions(
        full, out_dir / "seed_distributions.png"
    )
    return paths
