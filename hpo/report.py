"""The selection-then-test report: the paper's Table 1 with seeds and significance, plus what a
mean hides (head vs tail items, catalog coverage), written as files the lead logs to MLflow.

Pure functions over pandas/numpy; every metric comes from `hpo.stats.row_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hpo.stats import (
    METRICS,
    ZERO_VARIANCE_NOTE,
    anova,
    check_seed_results,
    paired_tests,
    row_level_tests,
    row_metrics,
    summarize,
)
from models.metrics import METRIC_LABELS

TABLE_METRICS = ("recall_20", "mrr_20")
VARIANT_LABELS = {
    "ave": "CORE-ave",
    "trm": "CORE-trm",
    "da": "CORE-DA",
    "hn": "CORE-HN",
    "dahn": "CORE-DAHN",
    "enhanced": "CORE-trm-enhanced",
    "contrastive": "CORE-trm-contrastive",
}
BETTER, WORSE = "†", "‡"
MISSING = "–"


# ---------------------------------------------------------------- beyond the mean


def head_item_mask(train_popularity, head_fraction: float = 0.2) -> np.ndarray:
    """Boolean [n_items]: True for the most popular round(head_fraction * catalog) items.

    The catalog is ids >= 1 (0 is padding); ties in popularity go to the lower id.
    """
    if not 0.0 < head_fraction < 1.0:
        raise ValueError(f"head_fraction must be in (0, 1), got {head_fraction}")
    popularity = np.asarray(train_popularity)
    if popularity.ndim != 1 or len(popularity) < 2:
        raise ValueError("train_popularity must be 1-D with padding at 0 and >= 1 item")
    ids = np.arange(1, len(popularity))
    n_head = max(1, round(head_fraction * len(ids)))
    by_popularity = ids[np.lexsort((ids, -popularity[1:]))]
    mask = np.zeros(len(popularity), dtype=bool)
    mask[by_popularity[:n_head]] = True
    return mask


def head_tail_metrics(
    ranks, targets, train_popularity, head_fraction: float = 0.2, k: int = 20
) -> dict[str, float]:
    """Recall@k and MRR@k over rows whose target is a head item vs a tail item (one seed)."""
    ranks, targets = np.asarray(ranks), np.asarray(targets)
    if ranks.shape != targets.shape or ranks.ndim != 1:
        raise ValueError(f"ranks {ranks.shape} and targets {targets.shape} must be equal 1-D")
    head = head_item_mask(train_popularity, head_fraction)
    if targets.min() < 1 or targets.max() >= len(head):
        raise ValueError(f"targets must be item ids in [1, {len(head) - 1}]")
    row_is_head = head[targets]
    metrics = row_metrics(ranks, k)
    out: dict[str, float] = {}
    for name in (f"recall_{k}", f"mrr_{k}"):
        out[f"head_{name}"] = _masked_mean(metrics[name], row_is_head)
        out[f"tail_{name}"] = _masked_mean(metrics[name], ~row_is_head)
    out["head_row_fraction"] = float(row_is_head.mean())
    out["tail_row_fraction"] = 1.0 - out["head_row_fraction"]
    out["n_head_items"] = int(head.sum())
    return out


def catalog_coverage(topk, n_items: int) -> float:
    """Share of the catalog (ids 1..n_items-1) that appears in at least one top-k list."""
    seen = np.unique(np.asarray(topk))
    if seen.size and (seen.min() < 0 or seen.max() >= n_items):
        raise ValueError(f"top-k ids must lie in [0, {n_items - 1}]")
    return float(np.count_nonzero(seen >= 1) / (n_items - 1))


def beyond_mean_table(
    per_row: Mapping[tuple[str, str], Sequence[tuple[np.ndarray, np.ndarray]]],
    targets_by_dataset: Mapping[str, np.ndarray],
    popularity_by_dataset: Mapping[str, np.ndarray],
    n_items_by_dataset: Mapping[str, int],
    head_fraction: float = 0.2,
    k: int = 20,
) -> pd.DataFrame:
    """Head/tail recall and MRR and top-k coverage per (dataset, variant): mean and std over seeds.

    per_row maps (dataset, variant) to one (ranks, topk) pair per seed.
    """
    rows = []
    for (dataset, variant), seeds in per_row.items():
        n_items = n_items_by_dataset[dataset]
        popularity = popularity_by_dataset[dataset]
        if len(popularity) != n_items:
            raise ValueError(
                f"{dataset}: train_popularity has {len(popularity)} entries, n_items is {n_items}"
            )
        per_seed = pd.DataFrame(
            {
                **head_tail_metrics(
                    ranks, targets_by_dataset[dataset], popularity, head_fraction, k
                ),
                f"coverage_{k}": catalog_coverage(np.asarray(topk)[:, :k], n_items),
            }
            for ranks, topk in seeds
        )
        row = {"dataset": dataset, "variant": variant, "n_seeds": len(per_seed)}
        for name in (
            f"head_recall_{k}",
            f"tail_recall_{k}",
            f"head_mrr_{k}",
            f"tail_mrr_{k}",
            f"coverage_{k}",
        ):
            row[name] = per_seed[name].mean()
            row[f"{name}_std"] = per_seed[name].std(ddof=1)  # nan for one seed
        row["head_row_fraction"] = per_seed["head_row_fraction"].iloc[0]  # data, not model
        row["n_head_items"] = per_seed["n_head_items"].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def session_tests(
    per_row: Mapping[tuple[str, str], Sequence[tuple[np.ndarray, np.ndarray]]],
    baseline: str,
    k: int = 20,
) -> pd.DataFrame:
    """`row_level_tests` for each dataset in per_row, seeds of a variant stacked."""
    frames = []
    for dataset in dict.fromkeys(d for d, _ in per_row):
        ranks_by_variant = {
            variant: np.stack([np.asarray(ranks) for ranks, _ in seeds])
            for (d, variant), seeds in per_row.items()
            if d == dataset
        }
        frames.append(row_level_tests(ranks_by_variant, baseline, k).assign(dataset=dataset))
    out = pd.concat(frames, ignore_index=True)
    return out[["dataset", *[c for c in out.columns if c != "dataset"]]]


# ---------------------------------------------------------------- Table 1


def results_table_frame(
    seed_results: pd.DataFrame,
    tests: pd.DataFrame | None = None,
    baseline: str = "trm",
    metrics: Sequence[str] = METRICS,
) -> pd.DataFrame:
    """The table in long (CSV) form: one row per dataset, variant and metric.

    best marks the highest mean per dataset and metric (all of them on an exact tie); p_value and
    significant are the seed-level paired t-test vs the baseline (nan / False on its own row).
    """
    tests = _tests_for(seed_results, tests, baseline)
    summary = summarize(seed_results)
    summary = summary[summary["metric"].isin(metrics)]
    merged = summary.merge(
        tests[["dataset", "variant", "metric", "mean_diff", "p_value", "significant"]],
        on=["dataset", "variant", "metric"],
        how="left",
    )
    merged["significant"] = merged["significant"].fillna(False).astype(bool)
    top = merged.groupby(["dataset", "metric"], sort=False)["mean"].transform("max")
    merged["best"] = merged["mean"] == top
    return merged[
        [
            "dataset",
            "variant",
            "metric",
            "mean",
            "std",
            "n_seeds",
            "mean_diff",
            "p_value",
            "significant",
            "best",
        ]
    ].reset_index(drop=True)


def results_table_markdown(
    seed_results: pd.DataFrame, tests: pd.DataFrame | None = None, baseline: str = "trm"
) -> str:
    """Table 1 of the extension paper: datasets x variants, each cell "R@20 / M@20" in percent as
    mean ± std, best bold per metric, significance vs the baseline marked; footnote below."""
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
    header = ["Dataset", "Metric", *[_variant_label(v) for v in variants]]
    return _markdown_table(header, body) + "\n\n" + _footnote(frame, tests, baseline) + "\n"


def _cell(row) -> str:
    if row is None:
        return MISSING
    text = f"{_pct(row.mean)} ± {_pct(row.std)}"
    if row.best:
        text = f"**{text}**"
    if row.significant:
        text += BETTER if row.mean_diff > 0 else WORSE
    return text


def _footnote(frame: pd.DataFrame, tests: pd.DataFrame, baseline: str) -> str:
    seeds = sorted(set(frame["n_seeds"]))
    n_seeds = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    alpha = tests["alpha"].iloc[0] if len(tests) else 0.01
    lines = [
        f"Test {' / '.join(METRIC_LABELS[m] for m in TABLE_METRICS)} in percent, mean ± std "
        f"(ddof=1) over {n_seeds} seeds per variant. **Bold**: best per dataset and metric. "
        f"{BETTER} / {WORSE}: significantly better / worse than {_variant_label(baseline)} "
        f"(baseline) in a paired t-test over seeds paired by seed value, p < {alpha:g}; "
        "no mark: not significant."
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


# ---------------------------------------------------------------- plot


def plot_seed_distributions(
    seed_results: pd.DataFrame, path: str | Path, metrics: Sequence[str] = TABLE_METRICS
) -> Path:
    """Per-variant box plot of the per-seed test values with every seed drawn as a point.

    One panel per (dataset, metric); the points matter because there are only a few seeds.
    """
    frame = check_seed_results(seed_results)
    datasets = list(dict.fromkeys(frame["dataset"]))
    fig = Figure(figsize=(4.5 * len(metrics), 3.5 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(metrics), squeeze=False)
    for row, dataset in enumerate(datasets):
        per_dataset = frame[frame["dataset"] == dataset]
        variants = list(dict.fromkeys(per_dataset["variant"]))
        positions = np.arange(1, len(variants) + 1)
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            values = [
                100 * per_dataset.loc[per_dataset["variant"] == v, metric].to_numpy()
                for v in variants
            ]
            ax.boxplot(values, positions=positions, widths=0.5, showfliers=False)
            for pos, vals in zip(positions, values, strict=True):
                jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
                ax.scatter(pos + np.asarray(jitter), vals, s=18, zorder=3, color="tab:blue")
            ax.set_xticks(positions, [_variant_label(v) for v in variants], rotation=30, ha="right")
            ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%)")
            ax.set_title(f"{dataset}: {METRIC_LABELS.get(metric, metric)} over seeds")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


# ---------------------------------------------------------------- files


def write_report(
    out_dir: str | Path,
    seed_results: pd.DataFrame,
    baseline: str = "trm",
    per_row: Mapping[tuple[str, str], Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
    targets_by_dataset: Mapping[str, np.ndarray] | None = None,
    popularity_by_dataset: Mapping[str, np.ndarray] | None = None,
    n_items_by_dataset: Mapping[str, int] | None = None,
    alpha: float = 0.01,
    head_fraction: float = 0.2,
) -> dict[str, Path]:
    """Write results.md, results.csv, seed_results.csv, anova.csv, seed_distributions.png and,
    with per_row, beyond_mean.csv and session_tests.csv; return their paths by name."""
    check_seed_results(seed_results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tests = paired_tests(seed_results, baseline, alpha)
    omnibus = anova(seed_results)
    paths = {
        "seed_results_csv": out_dir / "seed_results.csv",
        "results_csv": out_dir / "results.csv",
        "anova_csv": out_dir / "anova.csv",
        "results_md": out_dir / "results.md",
    }
    seed_results.to_csv(paths["seed_results_csv"], index=False)
    results_table_frame(seed_results, tests, baseline).to_csv(paths["results_csv"], index=False)
    omnibus.to_csv(paths["anova_csv"], index=False)
    sections = [
        "# Test results (selection-then-test)",
        results_table_markdown(seed_results, tests, baseline),
        _seed_tests_section(tests),
        _anova_section(omnibus),
    ]
    if per_row is not None:
        if (
            targets_by_dataset is None
            or popularity_by_dataset is None
            or n_items_by_dataset is None
        ):
            raise ValueError(
                "per_row needs targets_by_dataset, popularity_by_dataset and n_items_by_dataset"
            )
        session = session_tests(per_row, baseline)
        beyond = beyond_mean_table(
            per_row, targets_by_dataset, popularity_by_dataset, n_items_by_dataset, head_fraction
        )
        paths["session_tests_csv"] = out_dir / "session_tests.csv"
        paths["beyond_mean_csv"] = out_dir / "beyond_mean.csv"
        session.to_csv(paths["session_tests_csv"], index=False)
        beyond.to_csv(paths["beyond_mean_csv"], index=False)
        sections += [_session_section(session), _beyond_section(beyond, head_fraction)]
    paths["results_md"].write_text("\n\n".join(s.strip() for s in sections) + "\n")
    paths["seed_distributions_png"] = plot_seed_distributions(
        seed_results, out_dir / "seed_distributions.png"
    )
    return paths


def _seed_tests_section(tests: pd.DataFrame) -> str:
    title = "## Paired t-tests vs the baseline (seed level)"
    shown = tests[tests["metric"].isin(TABLE_METRICS)]
    if shown.empty:
        return f"{title}\n\nNo variant besides the baseline."
    rows = [
        [
            r.dataset,
            _variant_label(r.variant),
            METRIC_LABELS[r.metric],
            str(r.n_pairs),
            _signed_pct(r.mean_diff),
            _num(r.t),
            _num(r.p_value),
            "yes" if r.significant else "no",
        ]
        for r in shown.itertuples(index=False)
    ]
    header = [
        "Dataset",
        "Variant",
        "Metric",
        "Seeds paired",
        "Δ vs baseline (points)",
        "t",
        "p",
        f"p < {shown['alpha'].iloc[0]:g}",
    ]
    return f"{title}\n\nAll metrics in results.csv.\n\n{_markdown_table(header, rows)}"


def _anova_section(omnibus: pd.DataFrame) -> str:
    title = "## One-way ANOVA across variants (per-seed values)"
    if omnibus.empty:
        return f"{title}\n\nNot computed: no dataset has more than two variants."
    rows = [
        [r.dataset, METRIC_LABELS[r.metric], str(r.n_variants), _num(r.F), _num(r.p_value)]
        for r in omnibus.itertuples(index=False)
    ]
    return f"{title}\n\n" + _markdown_table(["Dataset", "Metric", "Variants", "F", "p"], rows)


def _session_section(session: pd.DataFrame) -> str:
    title = "## Session-level tests (test rows; supplementary)"
    note = (
        "Each test row's metric is averaged over a variant's seeds, then compared with the "
        "baseline's row by row (paired t-test and Wilcoxon signed-rank). Rows come from one test "
        "split and share the seeds' randomness, so these p-values are not independent of the "
        "seed-level test and are much smaller; use them only when seeds are few."
    )
    rows = [
        [
            r.dataset,
            _variant_label(r.variant),
            METRIC_LABELS.get(r.metric, r.metric),
            str(r.n_rows),
            f"{r.n_seeds} / {r.n_seeds_baseline}",
            _signed_pct(r.mean_diff),
            _num(r.p_ttest),
            _num(r.p_wilcoxon),
        ]
        for r in session.itertuples(index=False)
    ]
    header = [
        "Dataset",
        "Variant",
        "Metric",
        "Rows",
        "Seeds (variant / baseline)",
        "Δ vs baseline (points)",
        "p (t-test)",
        "p (Wilcoxon)",
    ]
    return f"{title}\n\n{note}\n\n{_markdown_table(header, rows)}"


def _beyond_section(beyond: pd.DataFrame, head_fraction: float) -> str:
    title = "## Beyond the mean: head vs tail target items, catalog coverage"
    note = (
        f"Head: the {head_fraction:.0%} most popular items by training popularity; tail: the "
        "rest. Recall/MRR@20 over test rows whose target is in that bucket; coverage: share of "
        "the catalog appearing in any top-20 list. Mean ± std over seeds, percent. A variant "
        "that gains only on head items recommends what is already popular."
    )
    columns = ["head_recall_20", "tail_recall_20", "head_mrr_20", "tail_mrr_20", "coverage_20"]
    rows = [
        [
            r["dataset"],
            _variant_label(r["variant"]),
            _pct(r["head_row_fraction"]),
            *[f"{_pct(r[c])} ± {_pct(r[c + '_std'])}" for c in columns],
        ]
        for _, r in beyond.iterrows()
    ]
    header = [
        "Dataset",
        "Variant",
        "Head rows (%)",
        "Head R@20",
        "Tail R@20",
        "Head M@20",
        "Tail M@20",
        "Coverage@20",
    ]
    return f"{title}\n\n{note}\n\n{_markdown_table(header, rows)}"


# ---------------------------------------------------------------- formatting


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _variant_label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


def _pct(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:.2f}"


def _signed_pct(fraction: float) -> str:
    return "n/a" if math.isnan(fraction) else f"{100 * fraction:+.2f}"


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(values[mask].mean()) if mask.any() else float("nan")
