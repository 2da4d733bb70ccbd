"""V-SKNN: vector multiplication session-based kNN (Ludewig & Jannach, UMUAI 2018, "Evaluation
of session-based recommendation algorithms"; Ludewig et al., UMUAI 2021; session-rec's
``algorithms/knn/vsknn.py``, ``VMContextKNN``)."""

from __future__ import annotations

import numpy as np

from models.knn.base import Expansion, Neighbours, Query, SessionKNN
from models.knn.config import SIMILARITIES, WEIGHTINGS


def position_weight(name: str, position: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Weight of a current-session item whose last click is at 1-based ``position`` of
    ``length`` clicks (session-rec's ``weighting``; the last click has position = length):

        same       1
        div        p / L
        linear     max(0, 1 - 0.1 (L - p))      (the last 10 clicks, linearly)
        log        1 / log10(L - p + 1.7)
        quadratic  (p / L)^2

    session-rec's linear is ``1 - 0.1 (L - p) if p <= 10 else 0``: equal to this for sessions
    of up to 10 clicks; longer ones would weigh their last clicks 0 and their first negatively.

    Args:
        name: one of ``WEIGHTINGS``.
        position: 1-based positions p of the items' last clicks.
        length: the sessions' lengths L, broadcast against ``position``.

    Returns:
        float weights, the shape of ``position``.
    """
    p = position.astype(np.float64)
    length = length.astype(np.float64)
    if name == "same":
        return np.ones_like(p)
    if name == "div":
        return p / length
    if name == "linear":
        return np.maximum(0.0, 1.0 - 0.1 * (length - p))
    if name == "log":
        return 1.0 / np.log10(length - p + 1.7)
    if name == "quadratic":
        return (p / length) ** 2
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {name!r}")


def score_decay(name: str, step: np.ndarray) -> np.ndarray:
    """Decay of a neighbour's item scores by ``step``, how far back (1 = the last click) the
    most recent click of the current session whose item the neighbour holds is (session-rec's
    ``weighting_score``, its ``<name>_score`` methods):

        same       1
        div        1 / step
        linear     max(0, 1 - 0.1 step)
        log        1 / log10(step + 1.7)
        quadratic  1 / step^2

    session-rec's linear is ``1 - 0.1 step if step <= 100 else 0``, negative for steps 11..100
    (a neighbour matched only by an old click would lower scores): clipped at 0 here.

    Args:
        name: one of ``WEIGHTINGS``.
        step: how far back each matching click is (>= 1).

    Returns:
        float decays, the shape of ``step``.
    """
    step = step.astype(np.float64)
    if name == "same":
        return np.ones_like(step)
    if name == "div":
        return 1.0 / step
    if name == "linear":
        return np.maximum(0.0, 1.0 - 0.1 * step)
    if name == "log":
        return 1.0 / np.log10(step + 1.7)
    if name == "quadratic":
        return 1.0 / (step * step)
    raise ValueError(f"weighting_score must be one of {WEIGHTINGS}, got {name!r}")


class VSKNN(SessionKNN):
    """SKNN with the current session as a vector of position weights, scores decayed by how
    recent the click that matched the neighbour is, and optionally IDF-weighted.

    With w_p = ``position_weight(weighting, p, L)`` for the distinct items q of the current
    session (p: last click of the item, L: clicks), s a candidate's distinct items:

        vec(q, s)    = sum_{i in q ∩ s} w_i / |q|
        cosine(q, s) = sum_{i in q ∩ s} w_i / (sqrt(sum_{i in q} w_i^2) * sqrt(|s|))
        score(i)     = sum over the k neighbours n with i in n of
                       sim(q, n) * decay(step_n) * (1 + idf_weighting * idf(i))

    where step_n = L - max{p_j : j in q ∩ n} + 1 (``score_decay``) and idf(i) = log(number of
    training sessions / clicks of i in them). Neighbours are the k most similar (sim > 0 in
    session-rec; a neighbour whose weights all underflow contributes ~0 here).

    Args:
        n_items, k, sample_size, sampling, seed: see ``SessionKNN``.
        similarity: "vec" (session-rec's default) or "cosine".
        weighting: the position weights, one of ``WEIGHTINGS``.
        weighting_score: the score decay, one of ``WEIGHTINGS``.
        idf_weighting: weight of the IDF term, >= 0 (session-rec: False or a number; 0 = off).
    """

    variant = "vsknn"

    def __init__(self, n_items: int, *, k: int, sample_size: int, sampling: str,
                 similarity: str, weighting: str, weighting_score: str,
                 idf_weighting: float, seed: int = 0) -> None:
        super().__init__(n_items, k=k, sample_size=sample_size, sampling=sampling, seed=seed)
        if similarity not in SIMILARITIES["vsknn"]:
            raise ValueError(f"vsknn similarity must be one of {SIMILARITIES['vsknn']}, "
                             f"got {similarity!r}")
        for key, value in (("weighting", weighting), ("weighting_score", weighting_score)):
            if value not in WEIGHTINGS:
                raise ValueError(f"{key} must be one of {WEIGHTINGS}, got {value!r}")
        if not idf_weighting >= 0:
            raise ValueError(f"idf_weighting must be >= 0, got {idf_weighting}")
        self.similarity = similarity
        self.weighting = weighting
        self.weighting_score = weighting_score
        self.idf_weighting = float(idf_weighting)
        self._item_factor: np.ndarray | None = None

    @property
    def params(self) -> dict:
        """The model's hyperparameters, its own added to the base's."""
        return {**super().params, "similarity": self.similarity, "weighting": self.weighting,
                "weighting_score": self.weighting_score, "idf_weighting": self.idf_weighting}

    def _fitted(self) -> None:
        self._item_factor = (1.0 + self.idf_weighting * self.index.idf()
                             if self.idf_weighting else None)

    def _query_weights(self, query: Query) -> np.ndarray:
        return position_weight(self.weighting, query.pos, query.length[query.rows])

    def _similarity(self, dot: np.ndarray, rows: np.ndarray, sessions: np.ndarray,
                    query: Query, norm: np.ndarray) -> np.ndarray:
        if self.similarity == "vec":
            return self._vec(dot, rows, query)
        return self._cosine(dot, rows, sessions, norm)

    def _item_scores(self, query: Query, neighbours: Neighbours,
                     expansion: Expansion) -> np.ndarray:
        shared = query.position_of(expansion.rows, expansion.items, self.n_items)
        step = query.length[neighbours.rows] - expansion.per_pair_max(shared) + 1
        pair = neighbours.similarity * score_decay(self.weighting_score, step)
        values = pair[expansion.pair]
        if self._item_factor is not None:
            values = values * self._item_factor[expansion.items]
        return values
