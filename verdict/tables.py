"""Seed-level tables of the test-stage report: Table 1 (the long CSV frame and its markdown),
a study's Table 1 across datasets, the protocol's opening lines, and the sections of the paired
t-tests, the omnibus tests, the post-hoc pairs and the ablation arms.

Formatting only: every number comes from ``verdict.seed_level``; cells are written by
``verdict.markdown``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from models.metrics import METRIC_LABELS
from verdict.markdown import (
    BETTER,
    COMPARISON_HEADER,
    CORRECTION_LABELS,
    MISSING,
    WORSE,
    adjusted_label,
    comparison_cells,
    family_text,
    interval,
    lower_first,
    markdown_table,
    notes_line,
    num,
    pct,
    variant_label,
)
from verdict.options import FULL_ARM, TABLE_METRICS
from verdict.seed_level import METRICS, paired_tests, summarize
from verdict.stats import ZERO_VARIANCE_NOTE

# ---------------------------------------------------------------- Table 1


def results_table_frame(
    seed_results: pd.DataFrame,
    tests: pd.DataFrame | None = None,
    baseline: str = "trm",
    metrics: Sequence[str] = METRICS,
) -> pd.DataFrame:
    """The table in long (CSV) form: one row per dataset, variant and metric.

    Args:
        seed_results: one row per (dataset, variant, seed), see ``verdict.seed_level``.
        tests: ``verdict.seed_level.paired_tests`` against ``baseline`` (computed when None).
        baseline: the baseline of the tests.
        metrics: the metrics kept.

    Returns:
        mean, std, n_seeds and the 95% interval of the mean; the comparison with the baseline
        (mean_diff with diff_ci_low / diff_ci_high, d_z, p_value, p_adjusted, correction,
        significant on the adjusted p, mde where not significant; nan / False on the baseline's
        own rows); best marks the highest mean per dataset and metric (all of them on a tie).
    """
    tests = _tests_for(seed_results, tests, baseline)
    summary = summarize(seed_results)
    summary = summary[summary["metric"].isin(metrics)]
    compared = tests.rename(columns={"ci_low": "diff_ci_low", "ci_high": "diff_ci_high"})
    merged = summary.merge(
        compared[["dataset", "variant", "metric", "mean_diff", "diff_ci_low", "diff_ci_high",
                  "d_z", "p_value", "p_adjusted", "correction", "significant", "mde"]],
        on=["dataset", "variant", "metric"],
        how="left",
    )
    merged["significant"] = merged["significant"].astype("boolean").fillna(False).astype(bool)
    top = merged.groupby(["dataset", "metric"], sort=False)["mean"].transform("max")
    merged["best"] = merged["mean"] == top
    columns = ["dataset", "variant", "metric", "mean", "std", "ci_low", "ci_high", "n_seeds",
               "mean_diff", "diff_ci_low", "diff_ci_high", "d_z", "p_value", "p_adjusted",
               "correction", "significant", "mde", "best"]
    return merged[columns].reset_index(drop=True)


def results_table_markdown(
    seed_results: pd.DataFrame, tests: pd.DataFrame | None = None, baseline: str = "trm"
) -> str:
    """Table 1 of the extension paper: datasets x variants, each cell "R@20 / M@20" in percent as
    mean ± std with the 95% interval of the mean, best bold per metric, significance vs the
    baseline (on the corrected p) marked; footnote below.

    Args:
        seed_results: one row per (dataset, variant, seed).
        tests: ``verdict.seed_level.paired_tests`` against ``baseline`` (computed when None).
        baseline: the baseline of the tests.
    """
    tests = _tests_for(seed_results, tests, baseline)
    frame = results_table_frame(seed_results, tests, baseline, TABLE_METRICS)
    variants = list(dict.fromkeys(frame["variant"]))
    metric_label = " / ".join(METRIC_LABELS[m] for m in TABLE_METRICS)
    cells = {(r.dataset, r.variant, r.metric): r for r in frame.itertuples(index=False)}
    body = []
    for dataset in dict.fromkeys(frame["dataset"]):
        row = [dataset, metric_label]
        for variant in variants:
            parts = [_cell(cells.get((dataset, variant, m))) for m in TABLE_METRICS]
            row.append(MISSING if all(p == MISSING for p in parts) else " / ".join(parts))
        body.append(row)
    header = ["Dataset", "Metric", *[variant_label(v) for v in variants]]
    return markdown_table(header, body) + "\n\n" + _footnote(frame, tests, baseline) + "\n"


def study_table_markdown(
    parts: Sequence[tuple[str, pd.DataFrame, pd.DataFrame, str]], *, alpha: float,
    correction: str,
) -> str:
    """A study's Table 1: one row per arm, one column per dataset, each cell test
    "R@20 / M@20" in percent as mean ± std over seeds; the best per dataset and metric in bold;
    † / ‡ where an arm is significantly better / worse than that dataset's baseline (paired
    t-test over seeds, corrected within the dataset); (b) marks the baseline.

    Args:
        parts: per dataset, (label, seed results of the full arms,
            ``verdict.seed_level.paired_tests`` against its baseline, the baseline).
        alpha: the significance level of the tests.
        correction: their correction (``verdict.options.CORRECTIONS``).
    """
    if not parts:
        return "No dataset of the study is complete yet."
    cells: dict[tuple[str, str], str] = {}
    variants: list[str] = []
    seeds = set()
    for label, seed_results, tests, baseline in parts:
        frame = results_table_frame(seed_results, tests, baseline, TABLE_METRICS)
        for variant in dict.fromkeys(frame["variant"]):
            if variant not in variants:
                variants.append(variant)
            rows = {r.metric: r for r in frame[frame["variant"] == variant].itertuples()}
            texts = []
            for metric in TABLE_METRICS:
                r = rows[metric]
                text = f"{pct(r.mean)} ± {pct(r.std)}"
                text = f"**{text}**" if r.best else text
                if r.significant:
                    text += BETTER if r.mean_diff > 0 else WORSE
                texts.append(text)
                seeds.add(int(r.n_seeds))
            mark = " (b)" if variant == baseline else ""
            cells[(label, variant)] = " / ".join(texts) + mark
    header = ["Arm", *[f"{label} R@20 / M@20" for label, *_ in parts]]
    body = [[variant_label(v), *[cells.get((label, v), MISSING) for label, *_ in parts]]
            for v in variants]
    n_seeds = "–".join(map(str, sorted({min(seeds), max(seeds)})))
    note = (f"Test {' / '.join(METRIC_LABELS[m] for m in TABLE_METRICS)} in percent, mean ± std "
            f"over {n_seeds} seeds. **Bold**: best per dataset and metric. (b): the dataset's "
            f"baseline. {BETTER} / {WORSE}: significantly better / worse than it (paired "
            f"t-test over seeds, {adjusted_label(correction)} p < {alpha:g} within the "
            "dataset); no mark: not significant.")
    return markdown_table(header, body) + "\n\n" + note


def progress_table_markdown(parts: Sequence[tuple[str, pd.DataFrame]]) -> str:
    """The arms of a study's unfinished datasets that have finished every seed run: test
    "R@20 / M@20" mean ± std per arm and dataset, without tests or marks (the dataset's baseline
    and the correction family are fixed only when every arm is done).

    Args:
        parts: per dataset, (label, seed results of its finished full arms).
    """
    cells: dict[tuple[str, str], str] = {}
    variants: list[str] = []
    for label, seed_results in parts:
        summary = summarize(seed_results)
        for variant in dict.fromkeys(summary["variant"]):
            if variant not in variants:
                variants.append(variant)
            rows = {r.metric: r for r in summary[summary["variant"] == variant].itertuples()}
            cells[(label, variant)] = " / ".join(
                f"{pct(rows[m].mean)} ± {pct(rows[m].std)}" for m in TABLE_METRICS
            ) + f" ({int(rows[TABLE_METRICS[0]].n_seeds)})"
    header = ["Arm", *[f"{label} R@20 / M@20 (seeds)" for label, _ in parts]]
    body = [[variant_label(v), *[cells.get((label, v), MISSING) for label, _ in parts]]
            for v in variants]
    return markdown_table(header, body)


def _cell(row) -> str:
    if row is None:
        return MISSING
    text = f"{pct(row.mean)} ± {pct(row.std)}"
    if row.best:
        text = f"**{text}**"
    text += f" {interval(row.ci_low, row.ci_high)}"
    if row.significant:
        text += BETTER if row.mean_diff > 0 else WORSE
    return text


def _footnote(frame: pd.DataFrame, tests: pd.DataFrame, baseline: str) -> str:
    seeds = sorted(set(frame["n_seeds"]))
    n_seeds = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    alpha = tests["alpha"].iloc[0] if len(tests) else 0.01
    correction = tests["correction"].iloc[0] if len(tests) else "holm"
    lines = [
        f"Test {' / '.join(METRIC_LABELS[m] for m in TABLE_METRICS)} in percent, mean ± std "
        f"(ddof=1) over {n_seeds} seeds per variant, [95% t-interval of the mean]. **Bold**: "
        f"best per dataset and metric. {BETTER} / {WORSE}: significantly better / worse than "
        f"{variant_label(baseline)} (baseline) in a paired t-test over seeds paired by seed "
        f"value, {adjusted_label(correction)} p < {alpha:g} "
        f"({lower_first(family_text(tests))}); no mark: not significant."
    ]
    undefined = tests[(tests["note"] == ZERO_VARIANCE_NOTE) & tests["metric"].isin(TABLE_METRICS)]
    if len(undefined):
        which = ", ".join(
            f"{r.dataset}/{r.variant}/{METRIC_LABELS[r.metric]}"
            for r in undefined.itertuples(index=False)
        )
        lines.append(f"t-test undefined (differences with zero variance across seeds): {which}.")
    return "\n".join(lines)


def _tests_for(seed_results: pd.DataFrame, tests: pd.DataFrame | None, baseline: str):
    """The given seed-level tests (checked to be against this baseline) or freshly computed ones."""
    if tests is None:
        return paired_tests(seed_results, baseline)
    used = set(tests["baseline"])
    if used and used != {baseline}:
        raise ValueError(f"tests were computed against {sorted(used)}, not {baseline!r}")
    return tests


# ---------------------------------------------------------------- sections


def protocol_markdown(
    datasets: Sequence[str], *, baseline: str, baseline_note: str, n_seeds: int,
    correction: str, alpha: float, notes: Sequence[str] = (),
) -> str:
    """The report's opening lines: dataset(s), baseline and why, seeds, level and correction.

    Args:
        datasets: the datasets reported.
        baseline: the baseline variant.
        baseline_note: how the baseline was chosen (empty: given on the command line).
        n_seeds: seeds per variant.
        correction: one of ``verdict.options.CORRECTIONS``.
        alpha: the significance level.
        notes: further lines on how the results were made (training rows, unequal arms, ...).
    """
    why = baseline_note or "given with --baseline"
    return "\n".join([
        f"- Dataset: {', '.join(datasets)}; {n_seeds} seeds per variant, paired by seed value.",
        f"- Baseline: {variant_label(baseline)} ({why}).",
        f"- Significance: {CORRECTION_LABELS[correction]}-adjusted p < {alpha:g}, within each "
        "table's family of comparisons (stated under each table); raw and adjusted p side by "
        "side.",
        "- Intervals: 95%. MDE: the smallest difference the test detects with 80% power at the "
        "per-comparison level the correction guarantees (alpha / family size), from the "
        "standard deviation of the paired differences; given for results that are not "
        "significant. An MDE larger than the differences that matter means: use more seeds.",
        *(f"- {note}" for note in notes),
    ])


def comparisons_markdown(tests: pd.DataFrame) -> str:
    """Seed-level comparisons with the baseline: difference with interval, d_z, raw and adjusted
    p, significance and MDE, for ``TABLE_METRICS`` (all metrics are in results.csv).

    Args:
        tests: ``verdict.seed_level.paired_tests``.
    """
    title = "## Paired t-tests vs the baseline (seed level)"
    shown = tests[tests["metric"].isin(TABLE_METRICS)]
    if shown.empty:
        return f"{title}\n\nNo variant besides the baseline."
    correction = shown["correction"].iloc[0]
    rows = [
        [r.dataset, variant_label(r.variant), METRIC_LABELS[r.metric], str(r.n_pairs),
         *comparison_cells(r, correction)]
        for r in shown.itertuples(index=False)
    ]
    header = ["Dataset", "Variant", "Metric", "Seeds paired", "Δ vs baseline (points) [95% CI]",
              *COMPARISON_HEADER[1:]]
    note = (f"Δ = variant − baseline. {family_text(tests)}. All metrics in results.csv."
            + notes_line(shown))
    return f"{title}\n\n{note}\n\n{markdown_table(header, rows)}"


def anova_markdown(omnibus: pd.DataFrame) -> str:
    """Repeated-measures ANOVA (seed as subject) and Friedman's test per dataset and metric,
    for ``TABLE_METRICS`` (the one-way ANOVA and every metric are in anova.csv).

    Args:
        omnibus: ``verdict.seed_level.anova``.
    """
    title = "## Repeated-measures ANOVA and Friedman test across variants (seed as subject)"
    if omnibus.empty:
        return f"{title}\n\nNot computed: no dataset has more than two variants."
    note = (
        "Every variant is trained with the same seeds, so a seed that is good for one is often "
        "good for all: the repeated-measures ANOVA removes that shared seed effect before "
        "comparing variants; Friedman's test does the same on ranks within each seed. "
        "Per-metric p-values, uncorrected; the pairs are compared in the post-hoc table. "
        "The one-way ANOVA, which ignores the pairing, is in anova.csv for reference."
    )
    shown = omnibus[omnibus["metric"].isin(TABLE_METRICS)]
    rows = [
        [r.dataset, METRIC_LABELS[r.metric], str(r.n_variants), str(r.n_seeds),
         f"{num(r.F_rm)} ({num(r.df_num)}, {num(r.df_den)})", num(r.p_rm),
         num(r.friedman_chi2), num(r.p_friedman), r.note or ""]
        for r in shown.itertuples(index=False)
    ]
    header = ["Dataset", "Metric", "Variants", "Seeds", "F (df)", "p (RM ANOVA)",
              "Friedman χ²", "p (Friedman)", "Note"]
    return f"{title}\n\n{note}\n\n{markdown_table(header, rows)}"


def posthoc_markdown(posthoc: pd.DataFrame) -> str:
    """All-pairs paired t-tests with the correction, for ``TABLE_METRICS``.

    Args:
        posthoc: ``verdict.seed_level.posthoc_tests``.
    """
    title = "## Post-hoc: every pair of variants (seed level)"
    if posthoc.empty:
        return f"{title}\n\nNot computed: no dataset has more than two variants."
    shown = posthoc[posthoc["metric"].isin(TABLE_METRICS)]
    correction = shown["correction"].iloc[0]
    rows = [
        [r.dataset, variant_label(r.variant_a), variant_label(r.variant_b),
         METRIC_LABELS[r.metric], *comparison_cells(r, correction)]
        for r in shown.itertuples(index=False)
    ]
    header = ["Dataset", "A", "B", "Metric", "Δ A − B (points) [95% CI]", *COMPARISON_HEADER[1:]]
    note = f"Δ = A − B. {_pair_family_text(posthoc)}. All metrics in posthoc.csv."
    return f"{title}\n\n{note}{notes_line(shown)}\n\n{markdown_table(header, rows)}"


def _pair_family_text(posthoc: pd.DataFrame) -> str:
    pairs = posthoc.assign(pair=posthoc["variant_a"] + "/" + posthoc["variant_b"])
    return family_text(pairs, "pair", "pair")


def ablation_markdown(ablation: pd.DataFrame) -> str:
    """Per variant: the full (selected) configuration and each ablation arm, mean ± std with
    95% interval, the difference arm − full with its interval, d_z, raw and adjusted p and MDE,
    for ``TABLE_METRICS``.

    Args:
        ablation: ``verdict.seed_level.ablation_tests``.
    """
    title = "## Ablation: each arm vs the full model (seed level)"
    if ablation.empty:
        return f"{title}\n\nNo arm applies to any compared variant."
    tested = ablation[ablation["arm"] != FULL_ARM]
    correction = ablation["correction"].iloc[0]
    note = (
        "Each arm retrains the variant's selected configuration with one change, over the same "
        "seeds, tested once; full: the selected configuration itself. Δ = arm − full, paired "
        f"t-test over seeds paired by seed value. {_arm_family_text(tested)}. "
        "All metrics in ablation.csv."
    )
    sections = [f"{title}\n\n{note}"]
    header = ["Arm", "Metric", "Seeds", "Mean ± std", "95% CI", "Δ vs full (points) [95% CI]",
              *COMPARISON_HEADER[1:]]
    for (dataset, variant), per_variant in ablation.groupby(["dataset", "variant"], sort=False):
        shown = per_variant[per_variant["metric"].isin(TABLE_METRICS)]
        rows, skipped = [], []
        for r in shown.itertuples(index=False):
            if r.n_seeds == 0:
                if r.metric == TABLE_METRICS[0]:
                    skipped.append(f"{r.arm}: {r.note}")
                continue
            arm = f"{FULL_ARM} (selected)" if r.arm == FULL_ARM else r.arm
            head = [arm, METRIC_LABELS[r.metric], str(r.n_seeds),
                    f"{pct(r.mean)} ± {pct(r.std)}", interval(r.ci_low, r.ci_high)]
            if r.arm == FULL_ARM:
                rows.append([*head, MISSING, MISSING, MISSING, MISSING, MISSING, MISSING])
            else:
                diff = r._replace(ci_low=r.diff_ci_low, ci_high=r.diff_ci_high)
                cells = comparison_cells(diff, correction)
                rows.append([*head, *cells])
        text = f"### {variant_label(variant)} ({dataset})\n\n{markdown_table(header, rows)}"
        if skipped:
            text += "\n\nNot retrained: " + "; ".join(skipped) + "."
        sections.append(text)
    return "\n\n".join(sections)


def _arm_family_text(tested: pd.DataFrame) -> str:
    arms = tested[tested["n_seeds"] > 0]
    arms = arms.assign(arm_key=arms["variant"] + ":" + arms["arm"])
    return family_text(arms, "arm", "arm_key")
