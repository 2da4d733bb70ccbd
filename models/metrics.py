"""Full-catalog ranking metrics: Recall@K (= HitRate@K), MRR@K and NDCG@K, K in {10, 20}.

A target's rank is 1 + the number of items with a strictly higher score, so ties are resolved
in the target's favour and no sort is needed. Items already in the session are not masked.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

KS = (10, 20)
TOP_K = max(KS)
METRIC_NAMES = tuple(f"{name}_{k}" for k in KS for name in ("recall", "mrr", "ndcg"))


def rank_and_top_(
    scores: Tensor, targets: Tensor, k: int | None = TOP_K
) -> tuple[Tensor, Tensor | None]:
    """Ranks [B] (int64) of ``targets`` and the top-k item ids [B, k] (best first; None when
    ``k`` is None: validation needs ranks only, and top-k costs about as much as the count).

    Consumes ``scores`` (overwritten in place: counting through a float 0/1 buffer is several
    times faster on CPU than reducing a boolean comparison)."""
    top = scores.topk(k, dim=1).indices if k else None
    target_scores = scores.gather(1, targets[:, None])
    higher = scores.gt_(target_scores).sum(dim=1)
    return higher.long() + 1, top


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """Averages over rows of Recall@K, MRR@K and NDCG@K (fractions in [0, 1])."""
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {}
    for k in KS:
        hit = ranks <= k
        metrics[f"recall_{k}"] = float(hit.mean())
        metrics[f"mrr_{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean())
        metrics[f"ndcg_{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    return {name: metrics[name] for name in METRIC_NAMES}
