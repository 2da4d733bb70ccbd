"""Full-catalog ranking metrics: Recall@K (= HitRate@K), MRR@K and NDCG@K, K in {10, 20}.

The one place that names the metrics (``METRIC_NAMES``; validation and test results add a
``valid_`` / ``test_`` prefix) and turns target ranks into them (``row_metrics``): training,
search, selection and the test-stage statistics all read them from here.

A target's rank is the number of items scoring at least as high as it (itself included):
items tied with the target count against it (pessimistic ranks, the same rule for every model),
so a target that a model cannot score (a kNN model's zero, shared by thousands of items) is a
miss, never a lucky rank among the ties. CORE's scores are continuous, so exact ties there are
rare and this changes nothing measurable. No sort is needed. Items already in the session are
not masked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: the metric names load without torch
    from torch import Tensor

KS = (10, 20)
TOP_K = max(KS)
METRIC_NAMES = tuple(f"{name}_{k}" for k in KS for name in ("recall", "mrr", "ndcg"))
METRIC_LABELS = {
    f"{name}_{k}": f"{label}@{k}"
    for k in KS
    for name, label in (("recall", "R"), ("mrr", "M"), ("ndcg", "N"))
}


def rank_and_top_(
    scores: Tensor, targets: Tensor, k: int | None = TOP_K
) -> tuple[Tensor, Tensor | None]:
    """Ranks [B] (int64) of ``targets`` and the top-k item ids [B, k] (best first; None when
    ``k`` is None: validation needs ranks only, and top-k costs about as much as the count).

    Consumes ``scores`` (overwritten in place: counting through a float 0/1 buffer is several
    times faster on CPU than reducing a boolean comparison).

    Args:
        scores: full-catalog scores [B, N], overwritten.
        targets: target ids [B].
        k: how many top items to return (None: none).

    Returns:
        The 1-based ranks [B] and the top-k ids [B, k] (or None).
    """
    top = scores.topk(k, dim=1).indices if k else None
    target_scores = scores.gather(1, targets[:, None])
    at_least = scores.ge_(target_scores).sum(dim=1)  # the target itself included
    return at_least.long().clamp_(min=1), top


def row_metrics(ranks, k: int) -> dict[str, np.ndarray]:
    """Per-row recall@k, MRR@k and NDCG@k (one relevant item) from 1-based full-catalog ranks.

    Args:
        ranks: integer ranks of the targets, any shape (e.g. [n_seeds, n_rows]).
        k: the cut-off.

    Returns:
        ``{"recall_k": ..., "mrr_k": ..., "ndcg_k": ...}``, float64 arrays shaped like ``ranks``.
    """
    ranks = np.asarray(ranks)
    if not np.issubdtype(ranks.dtype, np.integer):
        raise ValueError(f"ranks must be integers, got dtype {ranks.dtype}")
    if ranks.size and ranks.min() < 1:
        raise ValueError(f"ranks are 1-based; found {int(ranks.min())}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hit = ranks <= k
    safe = np.where(hit, ranks, 1).astype(np.float64)  # no division or log of large ranks
    return {
        f"recall_{k}": hit.astype(np.float64),
        f"mrr_{k}": np.where(hit, 1.0 / safe, 0.0),
        f"ndcg_{k}": np.where(hit, 1.0 / np.log2(safe + 1.0), 0.0),
    }


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Averages over rows of every metric in ``METRIC_NAMES`` (fractions in [0, 1]).

    Args:
        ranks: 1-based integer target ranks, one per row.

    Returns:
        metric name -> mean over the rows.
    """
    per_row = {}
    for k in KS:
        per_row.update(row_metrics(ranks, k))
    return {name: float(per_row[name].mean()) for name in METRIC_NAMES}
