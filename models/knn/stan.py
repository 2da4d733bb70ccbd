"""STAN (Garg et al., "Sequence and Time Aware Neighborhood for Session-based
Recommendations: STAN", SIGIR 2019) and VSTAN (Ludewig et al., UMUAI 2021: STAN with V-SKNN's
match decay and IDF); session-rec's ``algorithms/knn/stan.py`` (``STAN``) and ``vstan.py``
(``VSKNN_STAN``)."""

from __future__ import annotations

import numpy as np

from models.knn.base import Expansion, Neighbours, Query, SessionKNN
from models.knn.config import SIMILARITIES


def _check_positive(**values: float) -> None:
    for key, value in values.items():
        if not (value > 0 and np.isfinite(value)):
            raise ValueError(f"{key} must be > 0 (finite), got {value}")


class STAN(SessionKNN):
    """Session kNN weighted by the recency of the current session's items (spw), of the
    neighbour sessions (snh) and by the distance of a neighbour's items to the shared item
    (inh).

    With L the current session's clicks and p_i the position of item i's last click in it:

        w_i        = exp((p_i - L) / lambda_spw)                       (1 for the last click)
        sim(q, s)  = sum_{i in q ∩ s} w_i / (sqrt(sum_{i in q} w_i^2) * sqrt(|s|))
                     * exp(-(t_q - t_s) / lambda_snh)
        score(i)   = sum over the k neighbours n with i in n of
                     sim(q, n) * exp(-|pos_n(i) - pos_n(i*)| / lambda_inh)

    t_q = 1 and t_s = s / n_sessions (``SessionIndex``: the training split spans one time unit;
    session-rec's lambda_snh is in days, see ``config.days_to_time``). pos_n(i) is the position
    of i's last click in n, i* the item of n, among those it shares with q, clicked last in n.
    Neighbours are the k candidates of highest sim, time decay included.

    Args:
        n_items, k, sample_size, sampling, seed: see ``SessionKNN``.
        lambda_spw, lambda_snh, lambda_inh: the decay scales (> 0; large = no decay).
    """

    variant = "stan"

    def __init__(self, n_items: int, *, k: int, sample_size: int, sampling: str,
                 lambda_spw: float, lambda_snh: float, lambda_inh: float, seed: int = 0) -> None:
        super().__init__(n_items, k=k, sample_size=sample_size, sampling=sampling, seed=seed)
        _check_positive(lambda_spw=lambda_spw, lambda_snh=lambda_snh, lambda_inh=lambda_inh)
        self.lambda_spw = float(lambda_spw)
        self.lambda_snh = float(lambda_snh)
        self.lambda_inh = float(lambda_inh)

    @property
    def params(self) -> dict:
        """The model's hyperparameters, its own added to the base's."""
        return {**super().params, "lambda_spw": self.lambda_spw,
                "lambda_snh": self.lambda_snh, "lambda_inh": self.lambda_inh}

    def _query_weights(self, query: Query) -> np.ndarray:
        return np.exp((query.pos - query.length[query.rows]) / self.lambda_spw)

    def _similarity(self, dot: np.ndarray, rows: np.ndarray, sessions: np.ndarray,
                    query: Query, norm: np.ndarray) -> np.ndarray:
        return self._cosine(dot, rows, sessions, norm) * self._recency(sessions,
                                                                       self.lambda_snh)

    def _item_scores(self, query: Query, neighbours: Neighbours,
                     expansion: Expansion) -> np.ndarray:
        shared = query.position_of(expansion.rows, expansion.items, self.n_items)
        return neighbours.similarity[expansion.pair] * self._inh(expansion, shared)

    def _inh(self, expansion: Expansion, shared: np.ndarray) -> np.ndarray:
        """exp(-|pos_n(i) - pos_n(i*)| / lambda_inh) of every expansion entry, given the
        position of each entry's item in the current session (``shared``, 0 = absent)."""
        anchor = expansion.per_pair_max(np.where(shared > 0, expansion.last_pos, 0))
        distance = np.abs(expansion.last_pos - anchor[expansion.pair])
        return np.exp(-distance / self.lambda_inh)


class VSTAN(STAN):
    """STAN plus V-SKNN's ideas: the neighbour's contribution decays with how far back the
    current session's click that matched it is (ipw), items are IDF-weighted, and the
    similarity may be V-SKNN's "vec".

    With STAN's w_i, sim (cosine, or vec = sum_{i in q ∩ s} w_i / |q|, times the same time
    decay) and item decay:

        score(i) = sum over the k neighbours n with i in n of
                   sim(q, n) * exp(-|pos_n(i) - pos_n(i*)| / lambda_inh)
                   * exp((max{p_j : j in q ∩ n} - L) / lambda_ipw)
                   * (1 + lambda_idf * idf(i))

    idf(i) = log(training sessions / clicks of i); lambda_idf = 0 turns IDF off (session-rec:
    None / False). session-rec's vstan accepts ``similarity`` but always computes cosine; it
    is honoured here.

    Args:
        n_items, k, sample_size, sampling, seed, lambda_spw, lambda_snh, lambda_inh: see STAN.
        similarity: "cosine" or "vec".
        lambda_ipw: scale of the match decay (> 0).
        lambda_idf: weight of the IDF term (>= 0).
    """

    variant = "vstan"

    def __init__(self, n_items: int, *, k: int, sample_size: int, sampling: str,
                 similarity: str, lambda_spw: float, lambda_snh: float, lambda_inh: float,
                 lambda_ipw: float, lambda_idf: float, seed: int = 0) -> None:
        super().__init__(n_items, k=k, sample_size=sample_size, sampling=sampling,
                         lambda_spw=lambda_spw, lambda_snh=lambda_snh, lambda_inh=lambda_inh,
                         seed=seed)
        if similarity not in SIMILARITIES["vstan"]:
            raise ValueError(f"vstan similarity must be one of {SIMILARITIES['vstan']}, "
                             f"got {similarity!r}")
        _check_positive(lambda_ipw=lambda_ipw)
        if not (lambda_idf >= 0 and np.isfinite(lambda_idf)):
            raise ValueError(f"lambda_idf must be >= 0, got {lambda_idf}")
        self.similarity = similarity
        self.lambda_ipw = float(lambda_ipw)
        self.lambda_idf = float(lambda_idf)
        self._item_factor: np.ndarray | None = None

    @property
    def params(self) -> dict:
        """The model's hyperparameters, its own added to the base's."""
        return {**super().params, "similarity": self.similarity,
                "lambda_ipw": self.lambda_ipw, "lambda_idf": self.lambda_idf}

    def _fitted(self) -> None:
        self._item_factor = (1.0 + self.lambda_idf * self.index.idf()
                             if self.lambda_idf else None)

    def _similarity(self, dot: np.ndarray, rows: np.ndarray, sessions: np.ndarray,
                    query: Query, norm: np.ndarray) -> np.ndarray:
        if self.similarity == "vec":
            return self._vec(dot, rows, query) * self._recency(sessions, self.lambda_snh)
        return super()._similarity(dot, rows, sessions, query, norm)

    def _item_scores(self, query: Query, neighbours: Neighbours,
                     expansion: Expansion) -> np.ndarray:
        shared = query.position_of(expansion.rows, expansion.items, self.n_items)
        last_match = expansion.per_pair_max(shared)
        ipw = np.exp((last_match - query.length[neighbours.rows]) / self.lambda_ipw)
        values = (neighbours.similarity * ipw)[expansion.pair] * self._inh(expansion, shared)
        if self._item_factor is not None:
            values = values * self._item_factor[expansion.items]
        return values
