"""What the verdict is given: the test results of the selected configurations retrained over
seeds (``TestResults``), and how a seed run's top-k lists become the exposure counts that every
list metric is computed from (``exposure_counts``).

``hpo.seed_runs`` makes them from its Ray Tune results, ``verdict.study_results`` from a study's
exported files; ``verdict.report.write_report`` reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# (dataset, variant) -> one (ranks [n_rows], exposure [n_items]) pair per seed, in seed order.
PerRow = Mapping[tuple[str, str], Sequence[tuple[np.ndarray, np.ndarray]]]
# (dataset, variant, arm) -> the same, for the ablation arms (never the full arm).
ArmPerRow = Mapping[tuple[str, str, str], Sequence[tuple[np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class TestResults:
    """The test stage's results, as the report reads them.

    Attributes:
        seed_results: one row per (dataset, variant, seed) with every metric of
            ``models.metrics.METRIC_NAMES`` (fractions); an ``arm`` column (``FULL_ARM`` for
            the selected configurations, ``KEY=VALUE`` for an ablation arm) adds the ablation
            table; other columns (best epoch, run ids) are kept in seed_results.csv only.
        per_row: the selected configurations' per-row results, (dataset, variant) -> one
            (ranks, exposure) pair per seed (``exposure_counts``), or None: they add the
            session-level tests, the beyond-the-mean table and the popularity view.
        targets: dataset -> its test targets [n_rows] (needed with ``per_row``).
        popularity: dataset -> its training-target count per item id [n_items] (with
            ``per_row``).
        n_items: dataset -> its catalog size with the padding id 0 (with ``per_row``).
        row_groups: dataset -> a group label per test row (the session's user: known / few /
            unknown), for datasets with users; with ``per_row``, adds the users' table.
        skipped_arms: (dataset, variant, arm) -> why that ablation arm was not retrained (the
            selected configuration already is the arm).
        arm_per_row: the ablation arms' per-row results, (dataset, variant, arm) -> one (ranks,
            exposure) pair per seed, or None: with ``per_row``, they add the arms' session-level
            tests against the full configuration, on all test rows and on tail targets.

    Raises:
        ValueError: ``per_row`` without ``targets``, ``popularity`` and ``n_items``;
            ``arm_per_row`` without ``per_row``.
    """

    __test__ = False  # a name pytest would otherwise try to collect as a test class

    seed_results: pd.DataFrame
    per_row: PerRow | None = None
    targets: Mapping[str, np.ndarray] | None = None
    popularity: Mapping[str, np.ndarray] | None = None
    n_items: Mapping[str, int] | None = None
    row_groups: Mapping[str, np.ndarray] | None = None
    skipped_arms: Mapping[tuple[str, str, str], str] | None = None
    arm_per_row: ArmPerRow | None = None

    def __post_init__(self) -> None:
        if self.per_row is not None and (
            self.targets is None or self.popularity is None or self.n_items is None
        ):
            raise ValueError("per_row needs targets, popularity and n_items")
        if self.arm_per_row and self.per_row is None:
            raise ValueError("arm_per_row needs per_row (the full configurations' rows)")


def exposure_counts(topk, n_items: int, k: int = 20) -> np.ndarray:
    """How many top-k slots each item id holds over all rows of one seed: what every list
    metric of the report (coverage, ARP, tail share, exposure Gini) is computed from, and what a
    study keeps of the lists (``verdict.study_results``), instead of the lists themselves.

    Args:
        topk: recommended item ids, [n_rows, >= k] (0 = padding).
        n_items: catalog size including the padding id 0.
        k: the cut-off.

    Returns:
        int64 [n_items]: slots per item id; index 0 counts padding slots (never an item).

    Raises:
        ValueError: an id outside [0, n_items - 1].
    """
    top = np.asarray(topk)[:, :k].ravel()
    if top.size and (top.min() < 0 or top.max() >= n_items):
        raise ValueError(f"top-k ids must lie in [0, {n_items - 1}]")
    return np.bincount(top, minlength=n_items).astype(np.int64)


def checked_exposure(exposure, n_items: int) -> np.ndarray:
    """``exposure`` (``exposure_counts``) as an array, checked against the catalog size.

    Args:
        exposure: top-k slots per item id.
        n_items: catalog size including the padding id 0.

    Raises:
        ValueError: its length is not ``n_items``.
    """
    exposure = np.asarray(exposure)
    if exposure.shape != (n_items,):
        raise ValueError(f"exposure counts must be [n_items={n_items}], got {exposure.shape}")
    return exposure
