"""Figures of the test-stage report: the per-seed scores of every variant."""

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
