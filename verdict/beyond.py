"""What a mean hides: metrics on popular (head), other seen (tail) and never-seen (cold) target
items, and how much of the catalog the top-k lists cover.

Item groups come from training-target counts (``train_popularity``: how often each item id is a
training target; index 0 is padding). They partition the catalog:

- ``head``: the most popular ``HEAD_FRACTION`` (20%) of the items that occur as a training target
  (``models.item_groups.head_item_mask``, the same definition, the same function, as the
  diffusion augmentation's head: ``models.diffusion.stages.popularity_groups``);
- ``tail``: every other item that occurs as a training target;
- ``cold``: items that never occur as a training target (popularity 0).

Pure functions over numpy/pandas; per-row metrics come from ``models.metrics.row_metrics``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from models.item_groups import HEAD_FRACTION, head_item_mask
from models.metrics import row_metrics
from verdict.results import PerRow, checked_exposure
from verdict.stats import CONFIDENCE, mean_interval

GROUPS = ("head", "tail", "cold")
TAIL_TARGETS = "tail targets"  # the name of the test rows whose target is a tail item


def item_groups(train_popularity, head_fraction: float = HEAD_FRACTION) -> dict[str, np.ndarray]:
    """The head, tail and cold masks over item ids (disjoint; together every id >= 1).

    Args:
        train_popularity: training-target count per item id, [n_items], padding at 0.
        head_fraction: the head's share of the targeted items (``head_item_mask``).

    Returns:
        ``{"head": mask, "tail": mask, "cold": mask}``, boolean [n_items] each.
    """
    popularity = np.asarray(train_popularity)
    head = head_item_mask(popularity, head_fraction)
    catalog = np.arange(len(popularity)) >= 1
    cold = catalog & (popularity == 0)
    return {"head": head, "tail": catalog & ~head & ~cold, "cold": cold}


def tail_target_rows(targets, train_popularity,
                     head_fraction: float = HEAD_FRACTION) -> np.ndarray:
    """Which test rows have a tail item as their target (``item_groups``).

    Args:
        targets: the test targets [n_rows].
        train_popularity: training-target count per item id, [n_items], padding at 0.
        head_fraction: the head's share of the targeted items.

    Returns:
        Boolean [n_rows].
    """
    return item_groups(train_popularity, head_fraction)["tail"][np.asarray(targets)]


def group_metrics(
    ranks, targets, train_popularity, *, head_fraction: float = HEAD_FRACTION, k: int = 20
) -> dict[str, float]:
    """Recall@k and MRR@k over the test rows of each item group, with the groups' sizes (one seed).

    Args:
        ranks: 1-based target rank of each test row, [n_rows].
        targets: target item id of each test row, [n_rows].
        train_popularity: training-target count per item id, padding at 0.
        head_fraction: see ``head_item_mask``.
        k: the metrics' cut-off.

    Returns:
        Per group g in ``GROUPS``: ``g_recall_k`` and ``g_mrr_k`` (nan when the group has no
        row), ``n_g_rows`` (test rows whose target is in g), ``g_row_fraction``, ``n_g_targets``
        (distinct target items among those rows) and ``n_g_items`` (catalog items in g).
    """
    ranks, targets = np.asarray(ranks), np.asarray(targets)
    if ranks.shape != targets.shape or ranks.ndim != 1:
        raise ValueError(f"ranks {ranks.shape} and targets {targets.shape} must be equal 1-D")
    groups = item_groups(train_popularity, head_fraction)
    n_items = len(groups["head"])
    if targets.size and (targets.min() < 1 or targets.max() >= n_items):
        raise ValueError(f"targets must be item ids in [1, {n_items - 1}]")
    metrics = row_metrics(ranks, k)
    out: dict[str, float] = {}
    for group, items in groups.items():
        rows = items[targets]
        for name in (f"recall_{k}", f"mrr_{k}"):
            values = metrics[name][rows]
            out[f"{group}_{name}"] = float(values.mean()) if values.size else float("nan")
        out[f"n_{group}_rows"] = int(rows.sum())
        out[f"{group}_row_fraction"] = float(rows.mean()) if rows.size else float("nan")
        out[f"n_{group}_targets"] = int(np.unique(targets[rows]).size)
        out[f"n_{group}_items"] = int(items.sum())
    return out


def catalog_coverage(exposure) -> float:
    """Share of the catalog (ids 1..n_items-1) that appears in at least one top-k list.

    Args:
        exposure: top-k slots per item id, [n_items] (``exposure_counts``; index 0 ignored).
    """
    exposure = np.asarray(exposure)
    return float(np.count_nonzero(exposure[1:]) / (len(exposure) - 1))


def beyond_mean_table(
    per_row: PerRow,
    targets_by_dataset: Mapping[str, np.ndarray],
    popularity_by_dataset: Mapping[str, np.ndarray],
    n_items_by_dataset: Mapping[str, int],
    *,
    head_fraction: float = HEAD_FRACTION,
    k: int = 20,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Per (dataset, variant): head / tail / cold recall and MRR and top-k coverage, as mean, std
    and t-interval of the mean over seeds, with the groups' row and item counts.

    Args:
        per_row: (dataset, variant) -> one (ranks [n_rows], exposure [n_items]) pair per seed
            (``exposure_counts`` at cut-off ``k``).
        targets_by_dataset: the test targets of each dataset.
        popularity_by_dataset: training-target counts of each dataset, [n_items].
        n_items_by_dataset: catalog size (with padding) of each dataset.
        head_fraction: see ``head_item_mask``.
        k: the metrics' cut-off.
        confidence: confidence level of the intervals.

    Returns:
        One row per (dataset, variant): ``n_seeds``; for each metric column m (``g_recall_k``,
        ``g_mrr_k`` per group, ``coverage_k``) m, ``m_std``, ``m_ci_low``, ``m_ci_high``; and the
        counts of ``group_metrics`` (data, not model: the same for every seed).
    """
    rows = []
    measured = [f"{g}_{name}_{k}" for g in GROUPS for name in ("recall", "mrr")]
    counts = [f"{prefix}{g}{suffix}" for g in GROUPS
              for prefix, suffix in (("n_", "_rows"), ("", "_row_fraction"),
                                     ("n_", "_targets"), ("n_", "_items"))]
    for (dataset, variant), seeds in per_row.items():
        n_items = n_items_by_dataset[dataset]
        popularity = popularity_by_dataset[dataset]
        if len(popularity) != n_items:
            raise ValueError(
                f"{dataset}: train_popularity has {len(popularity)} entries, n_items is {n_items}"
            )
        per_seed = pd.DataFrame(
            {
                **group_metrics(ranks, targets_by_dataset[dataset], popularity,
                                 head_fraction=head_fraction, k=k),
                f"coverage_{k}": catalog_coverage(checked_exposure(exposure, n_items)),
            }
            for ranks, exposure in seeds
        )
        row = {"dataset": dataset, "variant": variant, "n_seeds": len(per_seed)}
        for name in (*measured, f"coverage_{k}"):
            values = per_seed[name].to_numpy(dtype=np.float64)
            defined = not np.isnan(values).any()
            row[name] = float(values.mean())
            row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            low, high = mean_interval(values, confidence) if defined else (np.nan, np.nan)
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = low, high
        row.update({name: per_seed[name].iloc[0] for name in counts})
        rows.append(row)
    return pd.DataFrame(rows)


def row_group_table(
    per_row: PerRow,
    groups_by_dataset: Mapping[str, np.ndarray],
    *,
    k: int = 20,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Recall and MRR per group of test rows (e.g. the session's user: known, with few
    training rows, unknown), per (dataset, variant): mean, std and interval over seeds.

    Args:
        per_row: (dataset, variant) -> one (ranks [n_rows], exposure) pair per seed.
        groups_by_dataset: one group label per test row of each dataset; datasets without an
            entry are left out.
        k: the metrics' cut-off.
        confidence: confidence level of the intervals.

    Returns:
        One row per (dataset, variant, group): ``n_rows``, ``row_fraction``, ``n_seeds`` and,
        for ``recall_k`` and ``mrr_k``, the value, ``_std``, ``_ci_low`` and ``_ci_high``.
    """
    rows = []
    for (dataset, variant), seeds in per_row.items():
        if dataset not in groups_by_dataset:
            continue
        labels = np.asarray(groups_by_dataset[dataset])
        per_seed = [row_metrics(np.asarray(ranks), k) for ranks, _ in seeds]
        for group in dict.fromkeys(labels.tolist()):
            mask = labels == group
            row = {"dataset": dataset, "variant": variant, "group": group,
                   "n_rows": int(mask.sum()), "row_fraction": float(mask.mean()),
                   "n_seeds": len(per_seed)}
            for name in (f"recall_{k}", f"mrr_{k}"):
                if len(per_seed[0][name]) != len(labels):
                    raise ValueError(f"{dataset}: {len(labels)} group labels for "
                                     f"{len(per_seed[0][name])} test rows")
                values = np.array([metrics[name][mask].mean() for metrics in per_seed])
                row[name] = float(values.mean())
                row[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = mean_interval(values, confidence)
            rows.append(row)
    return pd.DataFrame(rows)
