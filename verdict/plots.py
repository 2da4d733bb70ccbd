"""Figures of the verdict: the per-seed scores of every variant (the test-stage report) and the
sensitivity of searched parameters (a study's search trials)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from models.metrics import METRIC_LABELS
from verdict.markdown import variant_label
from verdict.options import TABLE_METRICS
from verdict.seed_level import check_seed_results


def plot_seed_distributions(
    seed_results: pd.DataFrame, path: str | Path, metrics: Sequence[str] = TABLE_METRICS
) -> Path:
    """Per-variant box plot of the per-seed test values with every seed drawn as a point.

    One panel per (dataset, metric); the points matter because there are only a few seeds.

    Args:
        seed_results: one row per (dataset, variant, seed), see
            ``verdict.seed_level.check_seed_results``.
        path: the PNG file to write.
        metrics: the metrics drawn, one panel column each.

    Returns:
        The path written.
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
            ax.set_xticks(positions, [variant_label(v) for v in variants], rotation=30, ha="right")
            ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} (%)")
            ax.set_title(f"{dataset}: {METRIC_LABELS.get(metric, metric)} over seeds")
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


SENSITIVITY_COLUMNS = ("dataset", "space", "trial_id", "parameter", "value", "metric", "score",
                       "epochs", "completed", "selected")


def sensitivity_frame(
    searches: Sequence[tuple[str, str, pd.DataFrame, dict]], parameters: Sequence[str]
) -> pd.DataFrame:
    """The points of a sensitivity plot: one row per (search trial, parameter) of every search
    that sampled the parameter.

    Args:
        searches: (dataset label, space name, trials table, search record) of each finished
            search (``verdict.study_results.StudyResults.trials`` and ``.search``); the record
            names the search's metric (``budget.metric``), its epoch cap and its selected trial.
        parameters: the searched parameters drawn (``param.<name>`` columns of the trials).

    Returns:
        ``SENSITIVITY_COLUMNS``: ``score`` is the trial's best value of the search's ``metric`` over
        the epochs it ran (``epochs``), ``completed`` whether it ran to the epoch cap (the others
        were stopped by ASHA or patience), ``selected`` whether it is the search's selection.
    """
    rows = []
    for label, space, trials, record in searches:
        name = record["budget"]["metric"]
        metric = f"best_{name}"
        cap = record["budget"]["max_epochs"]
        chosen = record["selection"]["trial_id"]
        for parameter in parameters:
            column = f"param.{parameter}"
            if column not in trials.columns:
                continue
            for row in trials.to_dict("records"):
                value, score = row.get(column), row.get(metric)
                if pd.isna(value) or pd.isna(score):
                    continue  # not sampled in this trial (a conditional parameter) or no epoch
                rows.append((label, space, str(row["trial_id"]), parameter, float(value),
                             name, float(score), int(row["epochs"]), int(row["epochs"]) >= cap,
                             str(row["trial_id"]) == str(chosen)))
    return pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))


def plot_sensitivity(points: pd.DataFrame, path: str | Path) -> Path:
    """Each searched parameter against the trials' validation score, one panel per (dataset,
    parameter), one colour per space: filled points ran to the epoch cap, hollow ones were
    stopped early (the number beside each is its epochs), the selected trial is ringed.

    A stopped trial's score is its best over fewer epochs, so the hollow points sit low for
    want of epochs as much as for their value; compare filled points with filled points.

    Args:
        points: ``sensitivity_frame``'s rows (at least one).
        path: the PNG file to write.

    Returns:
        The path written.

    Raises:
        ValueError: no points.
    """
    if points.empty:
        raise ValueError("no search trial sampled the parameters: nothing to plot")
    datasets = list(dict.fromkeys(points["dataset"]))
    parameters = list(dict.fromkeys(points["parameter"]))
    spaces = list(dict.fromkeys(points["space"]))
    colours = {s: f"C{i}" for i, s in enumerate(spaces)}
    fig = Figure(figsize=(4.2 * len(parameters), 3.2 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), len(parameters), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, parameter in enumerate(parameters):
            ax = axes[row][col]
            here = points[(points["dataset"] == dataset) & (points["parameter"] == parameter)]
            for space in spaces:
                mine = here[here["space"] == space]
                if mine.empty:
                    continue
                full = mine[mine["completed"]]
                ax.scatter(full["value"], 100 * full["score"], s=30, color=colours[space],
                           label=variant_label(space), zorder=3)
                early = mine[~mine["completed"]]
                ax.scatter(early["value"], 100 * early["score"], s=30, facecolors="none",
                           edgecolors=colours[space], zorder=3)
                for point in early.itertuples(index=False):
                    ax.annotate(str(point.epochs), (point.value, 100 * point.score), fontsize=7,
                                xytext=(3, 3), textcoords="offset points")
                best = mine[mine["selected"]]
                ax.scatter(best["value"], 100 * best["score"], s=140, facecolors="none",
                           edgecolors="black", linewidths=1.2, zorder=2)
            values = here["value"]
            if not values.empty and values.min() > 0 and values.max() / values.min() > 20:
                ax.set_xscale("log")
            ax.set_xlabel(parameter)
            metrics = dict.fromkeys(here["metric"])
            ax.set_ylabel("best " + " / ".join(_metric_label(m) for m in metrics) + " (%)")
            ax.set_title(f"{dataset}: {parameter}", fontsize=10)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle("Search trials: filled ran every epoch, hollow were stopped early (epochs "
                 "beside), ringed = selected", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


def _metric_label(metric: str) -> str:
    """``valid_mrr_20`` -> ``valid MRR@20``."""
    split, _, name = metric.partition("_")
    return f"{split} {METRIC_LABELS.get(name, name)}" if name else metric
