"""Row-level tables of the test-stage report: the markdown sections of the session-level
tests, the beyond-the-mean table (head / tail / cold targets, coverage), the users' groups and
the popularity view.

Formatting only: every number comes from ``verdict.session_level``, ``verdict.beyond`` or
``verdict.popularity``; cells are written by ``verdict.markdown``.
"""

from __future__ import annotations

import pandas as pd

from models.metrics import METRIC_LABELS
from verdict.beyond import GROUPS
from verdict.markdown import (
    FAMILY,
    adjusted_label,
    family_text,
    fixed_cell,
    interval,
    lower_first,
    markdown_table,
    mde_cell,
    notes_line,
    num,
    pct,
    signed_pct,
    spread_cell,
    variant_label,
)


def session_markdown(session: pd.DataFrame) -> str:
    """Session-level tests: randomization p (raw and adjusted), bootstrap interval, t-test,
    Wilcoxon (supplementary) and MDE.

    Args:
        session: ``verdict.session_level.session_tests``.
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
        f"{adjusted_label(correction)} p decides significance, and a percentile bootstrap "
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
            mde_cell(r),
        ]
        for r in session.itertuples(index=False)
    ]
    header = ["Dataset", "Variant", "Metric", "Rows", "Seeds (variant / baseline)",
              "Δ vs baseline (points) [bootstrap 95% CI]", "d_z", "p (randomization)",
              f"p adj. ({correction})", "significant", "p (t-test)",
              "p (Wilcoxon, supplementary)", "MDE (points)"]
    return f"{title}\n\n{note}{notes_line(session)}\n\n{markdown_table(header, rows)}"


def arm_session_markdown(tests: pd.DataFrame, head_fraction: float) -> str:
    """Each ablation arm against the full configuration at the session level, on all test rows
    and on tail targets: randomization p (raw and adjusted), bootstrap interval, MDE.

    Args:
        tests: ``verdict.session_level.arm_session_tests``.
        head_fraction: the head's share of the targeted items (for the tail's definition).
    """
    title = "## Ablation at the session level: all test rows and tail targets (supplementary)"
    if tests.empty:
        return f"{title}\n\nNo ablation arm was retrained."
    correction = tests["correction"].iloc[0]
    n_resamples = int(tests["n_resamples"].iloc[0])
    seed = int(tests["resample_seed"].iloc[0])
    families = [f"{subset}: "
                f"{lower_first(family_text(part, 'arm', 'arm_key').removeprefix(FAMILY))}"
                for subset, part in tests.assign(
                    arm_key=tests["variant"] + ":" + tests["arm"]).groupby("subset", sort=False)]
    note = (
        "The arms of the seed-level ablation table, compared with the full (selected) "
        "configuration row by row, as the session-level tests compare variants: each row's "
        "metric averaged over the seeds, a paired randomization test whose "
        f"{adjusted_label(correction)} p decides significance, and a percentile bootstrap "
        f"interval of Δ = arm − full ({n_resamples:,} resamples each, seed {seed}). Tail "
        "targets: the rows whose target is a tail item (an item that occurs as a training "
        f"target outside the most popular {head_fraction:.0%}; the popularity view's tail), "
        "where a component against popularity bias should show if anywhere. Rows share the "
        "seeds' randomness, so use these only beside the seed-level table. Correction family "
        "per dataset, by rows: " + "; ".join(families) + "."
    )
    rows = [
        [
            r.dataset, variant_label(r.variant), r.arm, r.subset,
            METRIC_LABELS.get(r.metric, r.metric), str(r.n_rows),
            f"{signed_pct(r.mean_diff)} {interval(r.ci_low, r.ci_high, signed=True)}",
            num(r.d_z), num(r.p_randomization), num(r.p_randomization_adjusted),
            "yes" if r.significant else "no", mde_cell(r),
        ]
        for r in tests.itertuples(index=False)
    ]
    header = ["Dataset", "Variant", "Arm", "Rows", "Metric", "n", "Δ vs full (points) "
              "[bootstrap 95% CI]", "d_z", "p (randomization)", f"p adj. ({correction})",
              "significant", "MDE (points)"]
    return f"{title}\n\n{note}{notes_line(tests)}\n\n{markdown_table(header, rows)}"


def beyond_markdown(beyond: pd.DataFrame, head_fraction: float, k: int = 20) -> str:
    """Head / tail / cold recall and MRR per variant, with each group's rows and items, and
    catalog coverage.

    Args:
        beyond: ``verdict.beyond.beyond_mean_table``.
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
                *[spread_cell(r, f"{group}_{name}_{k}") for name in ("recall", "mrr")],
            ])
    header = ["Dataset", "Variant", "Group", "Rows", "Items", f"R@{k}", f"M@{k}"]
    coverage = [[r["dataset"], variant_label(r["variant"]), spread_cell(r, f"coverage_{k}")]
                for _, r in beyond.iterrows()]
    coverage_note = (f"Coverage@{k}: share of the catalog that appears in at least one top-{k} "
                     "list, percent.")
    return (f"{title}\n\n{note}\n\n{markdown_table(header, rows)}\n\n{coverage_note}\n\n"
            + markdown_table(["Dataset", "Variant", f"Coverage@{k}"], coverage))


def row_groups_markdown(groups: pd.DataFrame, k: int = 20) -> str:
    """Recall and MRR per group of test rows by the session's user
    (``verdict.beyond.row_group_table``).

    Args:
        groups: ``verdict.beyond.row_group_table``.
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
             *[spread_cell(r, f"{name}_{k}") for name in ("recall", "mrr")]]
            for _, r in groups.iterrows()]
    header = ["Dataset", "Variant", "Users", "Rows", f"R@{k}", f"M@{k}"]
    return f"{title}\n\n{note}\n\n{markdown_table(header, rows)}"


def popularity_markdown(
    popularity: pd.DataFrame, tail_tests: pd.DataFrame, head_fraction: float, k: int = 20
) -> str:
    """The popularity view: ARP, tail share and exposure Gini of the top-k lists per variant,
    and the session-level tests on the tail-target rows.

    Args:
        popularity: ``verdict.popularity.popularity_table``.
        tail_tests: ``verdict.popularity.tail_session_tests``.
        head_fraction: the head's share of the items that occur as training targets (the tail
            is the rest of them).
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
        arp_cell = f"{fixed_cell(r, arp, 2)} (catalog {r['catalog_arp']:.2f})"
        gini_cell = fixed_cell(r, gini, 3)
        rows.append([
            r["dataset"], variant_label(r["variant"]), str(int(r["n_seeds"])), arp_cell,
            f"{spread_cell(r, f'tail_share_{k}')} (catalog {pct(r['catalog_tail_share'])})",
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
        f"the {adjusted_label(correction)} p, bootstrap interval, t-test) on the test rows "
        "whose target is a tail item only, each row averaged over a variant's seeds; all rows "
        f"in tail_session_tests.csv. {family_text(tail_tests)}."
    )
    test_rows = [
        [r.dataset, variant_label(r.variant), METRIC_LABELS.get(r.metric, r.metric),
         str(r.n_rows), f"{signed_pct(r.mean_diff)} {interval(r.ci_low, r.ci_high, signed=True)}",
         num(r.p_randomization), num(r.p_randomization_adjusted),
         "yes" if r.significant else "no", mde_cell(r)]
        for r in tail_tests.itertuples(index=False)
    ]
    test_header = ["Dataset", "Variant", "Metric", "Tail rows",
                   "Δ vs baseline (points) [bootstrap 95% CI]", "p (randomization)",
                   f"p adj. ({correction})", "significant", "MDE (points)"]
    return (f"{out}\n\n{subtitle}\n\n{tests_note}{notes_line(tail_tests)}\n\n"
            + markdown_table(test_header, test_rows))
