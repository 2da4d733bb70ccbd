"""The popularity view of the test report: how much each variant recommends what is already
popular, and whether it does better on tail targets.

From each seed's top-k lists (k = 20), kept as the number of slots each item holds
(``verdict.results.exposure_counts``), and the training-target counts (``train_popularity``, the
same counts ``verdict.beyond`` groups items by):

- ARP, average recommendation popularity (Abdollahpouri et al. 2019, "Managing Popularity Bias
  in Recommender Systems with Personalized Re-ranking"): the mean training-target count of the
  items in all top-k slots, which is the paper's mean over test rows of each list's mean when
  every list holds k real items (always here: only padding scores -inf);
- tail share: the share of all top-k slots that hold a tail item (``verdict.beyond.item_groups``:
  an item that occurs as a training target and is not head, the head being the most popular
  20% of the targeted items, ``models.item_groups``; the same items as the tail rows of the
  beyond-the-mean table);
- Gini index of item exposure over the catalog (ids 1..n_items-1, every item counted, the never
  recommended ones at 0): with x_(1) <= ... <= x_(n) the number of top-k slots each item holds,
  G = sum_i (2i - n - 1) x_(i) / (n sum_i x_i); 0 when every item is recommended equally often,
  (n - 1) / n when one item takes every slot. No library we depend on computes it (scipy,
  statsmodels and pandas do not), so it is this one numpy line, checked by hand in the tests.

Each is averaged over seeds (mean, sample std, t-interval). ``tail_session_tests`` runs the
session-level tests of ``verdict.session_level`` on the test rows whose target is a tail item
only, corrected within each dataset's table as the all-rows session tests are.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from models.item_groups import HEAD_FRACTION
from verdict.beyond import TAIL_TARGETS, item_groups, tail_target_rows
from verdict.results import PerRow, checked_exposure
from verdict.session_level import session_tests
from verdict.stats import CONFIDENCE, mean_interval

POPULARITY_METRICS = ("arp", "tail_share", "gini")


def average_recommendation_popularity(exposure, train_popularity) -> float:
    """ARP: the mean training-target count of the items in the top-k slots (padding slots, at
    index 0, are not items).

    Args:
        exposure: top-k slots per item id [n_items] (``verdict.results.exposure_counts``).
        train_popularity: training-target count per item id [n_items] (padding at 0).

    Returns:
        ARP in training rows (nan without a slot).
    """
    slots = checked_exposure(exposure, len(train_popularity))[1:].astype(np.float64)
    popularity = np.asarray(train_popularity, dtype=np.float64)[1:]
    total = slots.sum()
    return float(slots @ popularity / total) if total else float("nan")


def tail_share(exposure, tail_mask) -> float:
    """The share of top-k slots (padding excluded) that hold a tail item.

    Args:
        exposure: top-k slots per item id [n_items] (``verdict.results.exposure_counts``).
        tail_mask: boolean [n_items], True for tail items.

    Returns:
        A fraction in [0, 1] (nan when there is no slot).
    """
    tail_mask = np.asarray(tail_mask)
    slots = checked_exposure(exposure, len(tail_mask))
    total = slots[1:].sum()
    return float(slots[1:][tail_mask[1:]].sum() / total) if total else float("nan")


def gini(values) -> float:
    """Gini index of non-negative values: sum_i (2i - n - 1) x_(i) / (n sum x), x sorted
    ascending, i = 1..n.

    Args:
        values: non-negative numbers (e.g. exposure counts), at least one.

    Returns:
        G in [0, (n - 1) / n]; 0 when all values are equal (also all zero).
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0:
        raise ValueError("gini needs at least one value")
    if np.any(x < 0):
        raise ValueError("gini needs non-negative values")
    if total == 0:
        return 0.0
    rank = np.arange(1, n + 1)
    return float(((2 * rank - n - 1) * x).sum() / (n * total))


def exposure_gini(exposure) -> float:
    """Gini index of how many top-k slots each catalog item (ids 1..n_items-1) holds.

    Args:
        exposure: top-k slots per item id [n_items] (``verdict.results.exposure_counts``; padding
            at 0 ignored).

    Returns:
        The Gini index (``gini``) of the exposure counts.
    """
    return gini(np.asarray(exposure)[1:])


def popularity_metrics(
    exposure, train_popularity, head_fraction: float = HEAD_FRACTION
) -> dict[str, float]:
    """ARP, tail share and exposure Gini of one seed's top-k lists.

    Args:
        exposure: top-k slots per item id [n_items] (``verdict.results.exposure_counts``).
        train_popularity: training-target count per item id [n_items].
        head_fraction: the head's share of the targeted items (``verdict.beyond.head_item_mask``).

    Returns:
        ``{"arp": ..., "tail_share": ..., "gini": ...}``.
    """
    popularity = np.asarray(train_popularity)
    tail = item_groups(popularity, head_fraction)["tail"]
    return {
        "arp": average_recommendation_popularity(exposure, popularity),
        "tail_share": tail_share(exposure, tail),
        "gini": exposure_gini(checked_exposure(exposure, len(popularity))),
    }


def popularity_table(
    per_row: PerRow,
    popularity_by_dataset: Mapping[str, np.ndarray],
    *,
    head_fraction: float = HEAD_FRACTION,
    k: int = 20,
    confidence: float = CONFIDENCE,
) -> pd.DataFrame:
    """Per (dataset, variant): ARP, tail share and exposure Gini of the top-k lists, as mean,
    sample std and t-interval over seeds.

    Args:
        per_row: (dataset, variant) -> one (ranks, exposure [n_items]) pair per seed
            (``verdict.results.exposure_counts`` at cut-off ``k``).
        popularity_by_dataset: training-target counts of each dataset [n_items].
        head_fraction: see ``verdict.beyond.head_item_mask``.
        k: the cut-off the exposure was counted at (names the columns).
        confidence: confidence level of the intervals.

    Returns:
        One row per (dataset, variant): ``n_seeds`` and, for each of ``POPULARITY_METRICS`` m,
        ``m_k``, ``m_k_std``, ``m_k_ci_low``, ``m_k_ci_high``; with ``catalog_arp`` (the mean
        training-target count over catalog items, a reference) and ``catalog_tail_share`` (the
        tail's share of the catalog).
    """
    rows = []
    for (dataset, variant), seeds in per_row.items():
        popularity = np.asarray(popularity_by_dataset[dataset])
        per_seed = pd.DataFrame(
            popularity_metrics(exposure, popularity, head_fraction) for _, exposure in seeds
        )
        tail = item_groups(popularity, head_fraction)["tail"]
        row = {"dataset": dataset, "variant": variant, "n_seeds": len(per_seed)}
        for name in POPULARITY_METRICS:
            values = per_seed[name].to_numpy(dtype=np.float64)
            column = f"{name}_{k}"
            row[column] = float(values.mean())
            row[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
            defined = len(values) > 1 and not np.isnan(values).any()
            low, high = mean_interval(values, confidence) if defined else (np.nan, np.nan)
            row[f"{column}_ci_low"], row[f"{column}_ci_high"] = low, high
        row["catalog_arp"] = float(popularity[1:].mean())
        row["catalog_tail_share"] = float(tail[1:].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def tail_session_tests(
    per_row: PerRow,
    targets_by_dataset: Mapping[str, np.ndarray],
    popularity_by_dataset: Mapping[str, np.ndarray],
    baseline: str,
    *,
    head_fraction: float = HEAD_FRACTION,
    k: int = 20,
    **options,
) -> pd.DataFrame:
    """``verdict.session_level.session_tests`` on the test rows whose target is a tail item:
    the same paired randomization test, bootstrap interval, t-test and correction within each
    dataset's family (variants x metrics), on that subset of rows.

    Args:
        per_row: (dataset, variant) -> one (ranks [n_rows], exposure) pair per seed.
        targets_by_dataset: the test targets of each dataset [n_rows].
        popularity_by_dataset: training-target counts of each dataset [n_items].
        baseline: the variant compared with.
        head_fraction: see ``verdict.beyond.head_item_mask``.
        k: the metrics' cut-off.
        **options: alpha, correction, n_resamples, seed, confidence, power of
            ``verdict.session_level.row_level_tests``.

    Returns:
        ``session_tests``' columns with ``subset`` ("tail targets") after ``dataset``; datasets
        with fewer than 2 tail rows are left out (empty frame when none is left).
    """
    subset: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for (dataset, variant), seeds in per_row.items():
        tail = tail_target_rows(targets_by_dataset[dataset], popularity_by_dataset[dataset],
                                head_fraction)
        if tail.sum() < 2:
            continue
        subset[(dataset, variant)] = [
            (np.asarray(ranks)[tail], None) for ranks, _ in seeds  # the tests use ranks only
        ]
    if not subset:
        return pd.DataFrame(columns=["dataset", "subset"])
    out = session_tests(subset, baseline, k=k, **options)
    out.insert(1, "subset", TAIL_TARGETS)
    return out
