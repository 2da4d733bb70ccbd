"""Tables of the test-stage report: the long (CSV) frames and their markdown sections.

Formatting only: every number comes from ``hpo.stats`` or ``hpo.beyond``; metrics are
fractions and are shown in percent (differences in percentage points).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from hpo.beyond import GROUPS
from hpo.stats import (
    FULL_ARM,
    METRICS,
    ZERO_VARIANCE_NOTE,
    paired_tests,
    summarize,
)
from models.metrics import METRIC_LABELS
from models.registry import LABELS as VARIANT_LABELS

TABLE_METRICS = ("recall_20", "mrr_20")
BETTER, WORSE = "†", "‡"
MISSING = "–"
CORRECTION_LABELS = {
    "holm": "Holm",
    "bonferroni": "Bonferroni",
    "fdr_bh": "Benjamini-Hochberg (FDR)",
    "none": "no correction",
}


def variant_label(variant: str) -> str:
    """The paper's name of a variant (CORE-DA for da), or the name itself.

    Args:
        variant: a variant (space) name.
    """
    return VARIANT_LABELS.get(variant, variant)


# ---------------------------------------------------------------- Table 1


def results_table_frame(
    seed_results: pd.DataFrame,
    tests: pd.DataFrame | None = None,
    baseline: str = "trm",
    metrics: Sequence[str] = METRICS,
) -> pd.DataFrame:
    """The table in long (CSV) form: one row per dataset, variant and metric.

    Args:
        seed_results: one row per (dataset, variant, seed), see ``hpo.stats``.
        tests: ``hpo.stats.paired_tests`` against ``baseline`` (computed when None).
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
        tests: ``hpo.stats.paired_tests`` against ``baseline`` (computed when None).
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
        parts: per dataset, (label, seed results of the full arms, ``hpo.stats.paired_tests``
            against its baseline, the baseline).
        alpha: the significance level of the tests.
        correction: their correction (``hpo.stats.CORRECTIONS``).
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
            f"t-test over seeds, {_adjusted_label(correction)} p < {alpha:g} within the "
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
        f"value, {_adjusted_label(correction)} p < {alpha:g} "
        f"({_lower_first(family_text(tests))}); no mark: not significant."
    ]
    undefined = tests[(tests["note"] == ZERO_VARIANCE_NOTE) & tests["metric"].isin(TABLE_METRICS)]
    if len(undefined):
        which = ", ".join(
            f"{r.dataset}/{r.variant}/{METRIC_LABELS[r.metric]}"
            for r in undefined.itertuples(index=False)
        )
        lines.append(f"t-test undefined (differences with zero variance across seeds): {which}.")
    return "\n".join(lines)


def family_text(tests: pd.DataFrame, unit: str = "variant", first: str = "variant") -> str:
    """How the correction's family was made, e.g. "correction family: 2 variants × 6 metrics =
    12 comparisons" (one family per dataset).

    Args:
        tests: a comparison table with dataset, ``first``, metric, family_size and correction.
        unit: what ``first`` counts, singular ("variant"; an s is added for more than one).
        first: the column whose distinct values make one factor of the family.
    """
    if tests.empty:
        return "No comparisons"
    if tests["correction"].iloc[0] == "none":
        return "No correction for multiple comparisons"
    parts = []
    for dataset, per_dataset in tests.groupby("dataset", sort=False):
        n_first = per_dataset[first].nunique()
        n_metrics = per_dataset["metric"].nunique()
        size = int(per_dataset["family_size"].iloc[0])
        text = f"{_count(n_first, unit)} × {_count(n_metrics, 'metric')}"
        if size != n_first * n_metrics:
            text += f", less {n_first * n_metrics - size} undefined,"
        parts.append((dataset, f"{text} = {size} comparisons"))
    if len(parts) == 1:
        return f"Correction family: {parts[0][1]}"
    return "Correction family per dataset: " + "; ".join(f"{d}: {t}" for d, t in parts)


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
    datasets: Sequence[str], baseline: str, baseline_note: str, n_seeds: int,
    correction: str, alpha: float, notes: Sequence[str] = (),
) -> str:
    """The report's opening lines: dataset(s), baseline and why, seeds, level and correction.

    Args:
        datasets: the datasets reported.
        baseline: the baseline variant.
        baseline_note: how the baseline was chosen (empty: given on the command line).
        n_seeds: seeds per variant.
        correction: one of ``hpo.stats.CORRECTIONS``.
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
        tests: ``hpo.stats.paired_tests``.
    """
    title = "## Paired t-tests vs the baseline (seed level)"
    shown = tests[tests["metric"].isin(TABLE_METRICS)]
    if shown.empty:
        return f"{title}\n\nNo variant besides the baseline."
    correction = shown["correction"].iloc[0]
    rows = [
        [r.dataset, variant_label(r.variant), METRIC_LABELS[r.metric], str(r.n_pairs),
         *_comparison_cells(r, correction)]
        for r in shown.itertuples(index=False)
    ]
    header = ["Dataset", "Variant", "Metric", "Seeds paired", "Δ vs baseline (points) [95% CI]",
              *_COMPARISON_HEADER[1:]]
    note = (f"Δ = variant − baseline. {family_text(tests)}. All metrics in results.csv."
            + _notes_line(shown))
    return f"{title}\n\n{note}\n\n{markdown_table(header, rows)}"


def anova_markdown(omnibus: pd.DataFrame) -> str:
    """Repeated-measures ANOVA (seed as subject) and Friedman's test per dataset and metric.

    Args:
        omnibus: ``hpo.stats.anova``.
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
        posthoc: ``hpo.stats.posthoc_tests``.
    """
    title = "## Post-hoc: every pair of variants (seed level)"
    if posthoc.empty:
        return f"{title}\n\nNot computed: no dataset has more than two variants."
    shown = posthoc[posthoc["metric"].isin(TABLE_METRICS)]
    correction = shown["correction"].iloc[0]
    rows = [
        [r.dataset, variant_label(r.variant_a), variant_label(r.variant_b),
         METRIC_LABELS[r.metric], *_comparison_cells(r, correction)]
        for r in shown.itertuples(index=False)
    ]
    header = ["Dataset", "A", "B", "Metric", "Δ A − B (points) [95% CI]", *_COMPARISON_HEADER[1:]]
    note = f"Δ = A − B. {_pair_family_text(posthoc)}. All metrics in posthoc.csv."
    return f"{title}\n\n{note}{_notes_line(shown)}\n\n{markdown_table(header, rows)}"


def _pair_family_text(posthoc: pd.DataFrame) -> str:
    pairs = posthoc.assign(pair=posthoc["variant_a"] + "/" + posthoc["variant_b"])
    return family_text(pairs, "pair", "pair")


def session_markdown(session: pd.DataFrame) -> str:
    """Session-level tests: randomization p (raw and adjusted), bootstrap interval, t-test,
    Wilcoxon (supplementary) and MDE.

    Args:
        session: ``hpo.stats.session_tests``.
    """
    title = "## Session-level tests (test rows; supplementary)"
    if session.empty:
        return f"{title}\n\nNo variant besides the baseline."
    correction = session["correction"].iloc[0]
    n_resamples = int(session["n_resamples"].iloc[0])
    seed = int(session["resample_seed"].iloc[0])
    note = (
        "Each test row's metric is averaged over a variant's seeds, then compared with the "
        "baseline's row by row: a paired randomization (sign-flip) test, whose "
        f"{_adjusted_label(correction)} p decides significance, and a percentile bootstrap "
        f"interval of the mean difference ({n_resamples:,} resamples each, seed {seed}), with "
        "the paired t-test beside them. Wilcoxon's signed-rank test is supplementary only: at "
        "thousands of sessions it does not keep its error rate. Rows come from one test split "
        "and share the seeds' randomness, so these p-values are not independent of the "
        "seed-level test and are much smaller; use them only when seeds are few. "
        f"{family_text(session)}."
    )
    rows = [
        [
            r.dataset,
            variant_label(r.variant),
            METRIC_LABELS.get(r.metric, r.metric),
            str(r.n_rows),
            f"{r.n_seeds} / {r.n_seeds_baseline}",
            f"{signed_pct(r.mean_diff)} {interval(r.ci_low, r.ci_high, signed=True)}",
            num(r.d_z),
            num(r.p_randomization),
            num(r.p_randomization_adjusted),
            "yes" if r.significant else "no",
            num(r.p_ttest),
            num(r.p_wilcoxon_supplementary),
            _mde_cell(r),
        ]
        for r in session.itertuples(index=False)
    ]
    header = ["Dataset", "Variant", "Metric", "Rows", "Seeds (variant / baseline)",
              "Δ vs baseline (points) [bootstrap 95% CI]", "d_z", "p (randomization)",
              f"p adj. ({correction})", "significant", "p (t-test)",
              "p (Wilcoxon, supplementary)", "MDE (points)"]
    return f"{title}\n\n{note}{_notes_line(session)}\n\n{markdown_table(header, rows)}"


def beyond_markdown(beyond: pd.DataFrame, head_fraction: float, k: int = 20) -> str:
    """Head / tail / cold recall and MRR per variant, with each group's rows and items, and
    catalog coverage.

    Args:
        beyond: ``hpo.beyond.beyond_mean_table``.
        head_fraction: the head's share of the items that occur as training targets.
        k: the metrics' cut-off.
    """
    title = "## Beyond the mean: head, tail and cold target items, catalog coverage"
    note = (
        f"Head: the most popular {head_fraction:.0%} of the items that occur as a training "
        "target, by training-target count (the head the diffusion augmentation conditions on); "
        "tail: the other items that occur as a training target; cold: items that never do. "
        f"R@{k} / M@{k} over the test rows whose target is in the group, mean ± std over seeds "
        "[95% interval], percent. Rows: test rows in the group (share of all test rows); items: "
        "distinct target items among them (catalog items per group in beyond_mean.csv). A "
        "variant that gains only on head items recommends what is already popular; cold items "
        "can only be reached through what the model learnt from them as inputs."
    )
    rows = []
    for _, r in beyond.iterrows():
        for group in GROUPS:
            rows.append([
                r["dataset"], variant_label(r["variant"]), group,
                f"{int(r[f'n_{group}_rows'])} ({pct(r[f'{group}_row_fraction'])}%)",
                str(int(r[f"n_{group}_targets"])),
                *[_spread_cell(r, f"{group}_{name}_{k}") for name in ("recall", "mrr")],
            ])
    header = ["Dataset", "Variant", "Group", "Rows", "Items", f"R@{k}", f"M@{k}"]
    coverage = [[r["dataset"], variant_label(r["variant"]), _spread_cell(r, f"coverage_{k}")]
                for _, r in beyond.iterrows()]
    coverage_note = (f"Coverage@{k}: share of the catalog that appears in at least one top-{k} "
                     "list, percent.")
    return (f"{title}\n\n{note}\n\n{markdown_table(header, rows)}\n\n{coverage_note}\n\n"
            + markdown_table(["Dataset", "Variant", f"Coverage@{k}"], coverage))


def row_groups_markdown(groups: pd.DataFrame, k: int = 20) -> str:
    """Recall and MRR per group of test rows by the session's user (``hpo.beyond.row_group_table``).

    Args:
        groups: ``hpo.beyond.row_group_table``.
        k: the metrics' cut-off.
    """
    title = "## By the session's user: known, few training rows, unknown"
    note = (
        "known: the session's user has more than a few training rows; few: 1 to a few (a "
        "persona learnt from little data); unknown: no user, or a user without training rows "
        "(a persona model falls back to the personas nearest to the session's items). "
        f"R@{k} / M@{k} over the test rows of the group, mean ± std over seeds [95% interval], "
        "percent; all rows in user_groups.csv."
    )
    rows = [[r["dataset"], variant_label(r["variant"]), r["group"],
             f"{int(r['n_rows'])} ({pct(r['row_fraction'])}%)",
             *[_spread_cell(r, f"{name}_{k}") for name in ("recall", "mrr")]]
            for _, r in groups.iterrows()]
    header = ["Dataset", "Variant", "Users", "Rows", f"R@{k}", f"M@{k}"]
    return f"{title}\n\n{note}\n\n{markdown_table(header, rows)}"


def popularity_markdown(
    popularity: pd.DataFrame, tail_tests: pd.DataFrame, head_fraction: float, k: int = 20
) -> str:
    """The popularity view: ARP, tail share and exposure Gini of the top-k lists per variant,
    and the session-level tests on the tail-target rows.

    Args:
        popularity: ``hpo.popularity.popularity_table``.
        tail_tests: ``hpo.popularity.tail_session_tests``.
        head_fraction: the head's share of the items that occur as training targets.
        k: the lists' cut-off.
    """
    title = "## Popularity view: what the top-k lists expose, and the tail targets"
    note = (
        f"ARP@{k}: average recommendation popularity, the mean over test rows of the mean "
        f"training-target count of the top-{k} items (the catalog's mean in brackets). Tail "
        f"share: the share of top-{k} slots that hold a tail item (seen as a training target, "
        f"not among the most popular {head_fraction:.0%} of those; the tail's share of the "
        "catalog in brackets), percent. Gini: the Gini index of how often each catalog item is "
        f"in a top-{k} list (0: equal exposure, 1: one item takes every slot). Mean ± std over "
        "seeds [95% interval]; lower ARP and Gini, higher tail share: less popularity bias. All "
        "values in popularity.csv."
    )
    rows = []
    for _, r in popularity.iterrows():
        arp, gini = f"arp_{k}", f"gini_{k}"
        arp_cell = f"{_fixed(r, arp, 2)} (catalog {r['catalog_arp']:.2f})"
        gini_cell = _fixed(r, gini, 3)
        rows.append([
            r["dataset"], variant_label(r["variant"]), str(int(r["n_seeds"])), arp_cell,
            f"{_spread_cell(r, f'tail_share_{k}')} (catalog {pct(r['catalog_tail_share'])})",
            gini_cell,
        ])
    header = ["Dataset", "Variant", "Seeds", f"ARP@{k}", f"Tail share@{k} (%)",
              f"Gini@{k} (exposure)"]
    out = f"{title}\n\n{note}\n\n{markdown_table(header, rows)}"
    subtitle = "### Session-level tests on the tail-target rows"
    if tail_tests.empty or "variant" not in tail_tests.columns:
        return f"{out}\n\n{subtitle}\n\nNo tail-target rows, or no variant besides the baseline."
    correction = tail_tests["correction"].iloc[0]
    tests_note = (
        "The session-level tests above (paired randomization test deciding significance after "
        f"the {_adjusted_label(correction)} p, bootstrap interval, t-test) on the test rows "
        "whose target is a tail item only, each row averaged over a variant's seeds; all rows "
        f"in tail_session_tests.csv. {family_text(tail_tests)}."
    )
    test_rows = [
        [r.dataset, variant_label(r.variant), METRIC_LABELS.get(r.metric, r.metric),
         str(r.n_rows), f"{signed_pct(r.mean_diff)} {interval(r.ci_low, r.ci_high, signed=True)}",
         num(r.p_randomization), num(r.p_randomization_adjusted),
         "yes" if r.significant else "no", _mde_cell(r)]
        for r in tail_tests.itertuples(index=False)
    ]
    test_header = ["Dataset", "Variant", "Metric", "Tail rows",
                   "Δ vs baseline (points) [bootstrap 95% CI]", "p (randomization)",
                   f"p adj. ({correction})", "significant", "MDE (points)"]
    return (f"{out}\n\n{subtitle}\n\n{tests_note}{_notes_line(tail_tests)}\n\n"
            + markdown_table(test_header, test_rows))


def ablation_markdown(ablation: pd.DataFrame) -> str:
    """Per variant: the full (selected) configuration and each ablation arm, mean ± std with
    95% interval, the difference arm − full with its interval, d_z, raw and adjusted p and MDE,
    for ``TABLE_METRICS``.

    Args:
        ablation: ``hpo.stats.ablation_tests``.
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
              *_COMPARISON_HEADER[1:]]
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
                cells = _comparison_cells(diff, correction)
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


# ---------------------------------------------------------------- formatting

_COMPARISON_HEADER = ["Δ (points) [95% CI]", "d_z", "p", "p adj.", "significant",
                      "MDE (points)"]


def _comparison_cells(r, correction: str) -> list[str]:
    """Δ [CI], d_z, p, adjusted p, significant, MDE of a comparison row."""
    return [
        f"{signed_pct(r.mean_diff)} {interval(r.ci_low, r.ci_high, signed=True)}",
        num(r.d_z),
        num(r.p_value),
        num(r.p_adjusted) + ("" if correction == "none" else f" ({correction})"),
        "yes" if r.significant else "no",
        _mde_cell(r),
    ]


def _mde_cell(r) -> str:
    if r.significant:
        return ""
    return pct(r.mde) if not math.isnan(r.mde) else "n/a"


def _notes_line(frame: pd.DataFrame) -> str:
    notes = sorted({n for n in frame["note"].fillna("") if n})
    return ("\n\nUndefined: " + "; ".join(notes) + ".") if notes else ""


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _adjusted_label(correction: str) -> str:
    return "raw" if correction == "none" else f"{CORRECTION_LABELS[correction]}-adjusted"


def _spread_cell(row, name: str) -> str:
    if _missing(row[name]):
        return "n/a"
    text = f"{pct(row[name])} ± {pct(row[name + '_std'])}"
    spread = interval(row[name + "_ci_low"], row[name + "_ci_high"])
    return f"{text} {spread}" if spread else text


def _fixed(row, name: str, digits: int) -> str:
    """A non-percent value "mean ± std" with ``digits`` decimals ("n/a" when missing)."""
    if _missing(row[name]):
        return "n/a"
    std = row[name + "_std"]
    return f"{row[name]:.{digits}f}" + ("" if _missing(std) else f" ± {std:.{digits}f}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table.

    Args:
        header: the column titles.
        rows: the cells, as text, one sequence per row.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def pct(fraction: float) -> str:
    """A fraction in percent with 2 decimals ("n/a" for nan).

    Args:
        fraction: the value, e.g. 0.4512.
    """
    return "n/a" if _missing(fraction) else f"{100 * fraction:.2f}"


def signed_pct(fraction: float) -> str:
    """A difference of fractions in percentage points, signed ("n/a" for nan).

    Args:
        fraction: the difference, e.g. -0.0031.
    """
    return "n/a" if _missing(fraction) else f"{100 * fraction:+.2f}"


def interval(low: float, high: float, signed: bool = False) -> str:
    """An interval of fractions in percent, "[low, high]" ("" when undefined).

    Args:
        low: lower end.
        high: upper end.
        signed: write signs (for differences).
    """
    if _missing(low) or _missing(high):
        return ""
    fmt = signed_pct if signed else pct
    return f"[{fmt(low)}, {fmt(high)}]"


def num(value: float) -> str:
    """A statistic with 3 significant digits ("n/a" for nan).

    Args:
        value: the number.
    """
    return "n/a" if _missing(value) else f"{value:.3g}"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value)
