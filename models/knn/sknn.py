"""SKNN: session-based k-nearest neighbours (Jannach & Ludewig, RecSys 2017; Ludewig et al.,
UMUAI 2021; session-rec's ``algorithms/knn/sknn.py``, ``ContextKNN``)."""

from __future__ import annotations

import numpy as np

from models.knn.base import Expansion, Neighbours, Query, SessionKNN
from models.knn.config import SIMILARITIES


class SKNN(SessionKNN):
    """Sessions as sets of items; an item scores the summed similarity of the neighbours that
    hold it.

    With q the current session's distinct items and s a candidate's:

        cosine(q, s)  = |q ∩ s| / (sqrt(|q|) * sqrt(|s|))
        jaccard(q, s) = |q ∩ s| / |q ∪ s|
        score(i)      = sum over the k neighbours n with i in n of sim(q, n)

    session-rec codes cosine as ``li / sqrt(la) * sqrt(lb)`` (an operator-precedence slip:
    |q ∩ s| * sqrt(|q|) / sqrt(|s|)); for one current session that is the true cosine times
    |q|, so neighbours and item ranking are the same. Its final division of the scores by
    their maximum (``normalize``) changes no ranking and is left out.

    Args:
        n_items, k, sample_size, sampling, seed: see ``SessionKNN``.
        similarity: "cosine" or "jaccard".
    """

    variant = "sknn"

    def __init__(self, n_items: int, *, k: int, sample_size: int, sampling: str,
                 similarity: str, seed: int = 0) -> None:
        super().__init__(n_items, k=k, sample_size=sample_size, sampling=sampling, seed=seed)
        if similarity not in SIMILARITIES["sknn"]:
            raise ValueError(f"sknn similarity must be one of {SIMILARITIES['sknn']}, "
                             f"got {similarity!r}")
        self.similarity = similarity

    @property
    def params(self) -> dict:
        """The model's hyperparameters, its own added to the base's."""
        return {**super().params, "similarity": self.similarity}

    def _similarity(self, dot: np.ndarray, rows: np.ndarray, sessions: np.ndarray,
                    query: Query, norm: np.ndarray) -> np.ndarray:
        # Binary weights: dot = |q ∩ s|, norm = sqrt(|q|).
        if self.similarity == "cosine":
            return self._cosine(dot, rows, sessions, norm)
        return dot / (query.count[rows] + self.index.sizes[sessions] - dot)

    def _item_scores(self, query: Query, neighbours: Neighbours,
                     expansion: Expansion) -> np.ndarray:
        return neighbours.similarity[expansion.pair]
