"""The session-kNN pipeline shared by SKNN, V-SKNN, STAN and VSTAN, vectorised over a batch.

For each current session (a row of a split: its prefix), as session-rec does it
(``algorithms/knn/*.py``, Ludewig et al., UMUAI 2021):

1. candidates: the training sessions sharing at least one item with it;
2. sampling: ``sample_size`` of them, the most recent ("recent") or a random sample
   ("random"); all when ``sample_size`` is 0 or not smaller than their number;
3. neighbours: the ``k`` sampled candidates most similar to it (the variant's similarity);
4. scores: every item of a neighbour gets the neighbour's similarity times the variant's
   weights, summed over the neighbours; items no neighbour holds score 0.

Batched: the current sessions of a block become a sparse [rows x items] matrix of item
weights, the candidates and their weighted overlaps one sparse product with the item ->
session incidence matrix; sampling and the top-k are one sort of the candidate entries by
(row, key); scores one sorted segment-sum (``np.add.reduceat``) of the neighbours' items,
written into the dense output. No Python loop runs over rows; blocks of rows bound the memory
(``BLOCK_CELLS``).

Ties: neighbours are ranked by their similarity rounded to float32 (so that floating-point
noise never decides between equally similar sessions), ties going to the newer session.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from data.dataset import Split
from models.knn.config import SAMPLINGS
from models.knn.sessions import SessionIndex

# Cells (rows x catalog) scored at once: 2^22 (16 MiB of float32 output) bounds the sparse
# intermediates of a block.
BLOCK_CELLS = 1 << 22
# Weights of current-session items below this are raised to it: a weight that underflows to
# 0 (e.g. exp(-40 / 0.00001)) must not make the sparse product drop the candidate, which
# session-rec would still sample; such a candidate's similarity stays ~1e-308.
_TINY = np.finfo(np.float64).tiny
_MASK32 = np.uint64(0xFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 values (wrapping arithmetic): a fast, well-mixed
    hash used for reproducible random sampling."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _row_top(rows: np.ndarray, keys: np.ndarray, limit: int, n_rows: int) -> np.ndarray:
    """Which entries are among the ``limit`` largest ``keys`` of their row (all entries of a row
    with at most ``limit``).

    Args:
        rows: int row of each entry.
        keys: uint64 key of each entry, distinct within a row.
        limit: entries kept per row (>= 1).
        n_rows: number of rows.

    Returns:
        bool mask over the entries.
    """
    counts = np.bincount(rows, minlength=n_rows)
    keep = np.ones(len(rows), dtype=bool)
    if not len(rows) or counts.max() <= limit:
        return keep
    full = np.flatnonzero(counts[rows] > limit)
    order = full[np.lexsort((keys[full], rows[full]))]  # by row, then key ascending
    sorted_rows = rows[order]
    row_end = np.searchsorted(sorted_rows, sorted_rows, side="right")
    keep[order[row_end - np.arange(len(order)) > limit]] = False
    return keep


@dataclass(frozen=True)
class Query:
    """A block of current sessions: their distinct items, each with its last click's position.

    Attributes:
        rows: int64 row of each (row, item) entry, entries sorted by (row, item),
        items: int64 item id,
        pos: int64 1-based position of the item's last click in the row's prefix,
        key: int64 ``rows * n_items + items`` (sorted; for look-ups).
        length: int64 [B], clicks in each prefix (repeats counted): session-rec's
            len(session_items).
        count: int64 [B], distinct items in each prefix.
    """

    rows: np.ndarray
    items: np.ndarray
    pos: np.ndarray
    key: np.ndarray
    length: np.ndarray
    count: np.ndarray

    @classmethod
    def encode(cls, prefixes: np.ndarray, lengths: np.ndarray, n_items: int) -> Query:
        """The query of right-padded ``prefixes`` [B, max_len] with ``lengths`` [B].

        Raises:
            ValueError: an item id outside 1..n_items-1 within a prefix's length.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        b, column = np.nonzero(np.arange(prefixes.shape[1]) < lengths[:, None])
        items = prefixes[b, column].astype(np.int64)
        if len(items) and (items.min() < 1 or items.max() >= n_items):
            raise ValueError(f"prefix item ids must be in 1..{n_items - 1}; found "
                             f"{items.min() if items.min() < 1 else items.max()}")
        key = b * n_items + items
        order = np.argsort(key, kind="stable")  # clicks of an item stay in order
        key = key[order]
        last = np.append(key[1:] != key[:-1], True)
        rows = b[order][last]
        return cls(rows=rows, items=items[order][last], pos=column[order][last] + 1,
                   key=key[last], length=lengths,
                   count=np.bincount(rows, minlength=len(lengths)))

    def position_of(self, rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """int64 1-based position of each (row, item)'s last click in the row, 0 if absent."""
        key = rows * n_items + items
        if not len(self.key):
            return np.zeros(len(key), dtype=np.int64)
        at = np.minimum(np.searchsorted(self.key, key), len(self.key) - 1)
        return np.where(self.key[at] == key, self.pos[at], 0)


@dataclass(frozen=True)
class Neighbours:
    """The neighbours of a block of current sessions, one entry per (row, neighbour).

    Attributes:
        rows: int64 row; sessions: int64 training session index; similarity: float64.
    """

    rows: np.ndarray
    sessions: np.ndarray
    similarity: np.ndarray


class SessionKNN:
    """Base of the session-kNN models: fit on the training split, score full catalogs.

    Subclasses define the current-session item weights (``_query_weights``), the similarity
    (``_similarity``) and the weights of a neighbour's items (``_item_scores``).

    Args:
        n_items: catalog size (max item id + 1; id 0 is padding).
        k: neighbours per current session (session-rec's ``k``).
        sample_size: candidates considered (``sample_size``; 0 = all).
        sampling: "recent" (the most recent candidates) or "random" (a uniform random sample:
            each (current session, candidate) pair gets a pseudo-random key hashed from
            ``seed``, the session's items and the candidate, and the sample is the candidates
            with the largest keys; the same session always gets the same sample, whatever the
            batch it comes in; session-rec draws with Python's ``random.sample``).
        seed: seeds "random" sampling.
    """

    variant = ""

    def __init__(self, n_items: int, *, k: int, sample_size: int, sampling: str,
                 seed: int = 0) -> None:
        if n_items < 2:
            raise ValueError(f"n_items must be >= 2, got {n_items}")
        if k < 1 or sample_size < 0 or sampling not in SAMPLINGS:
            raise ValueError(f"need k >= 1, sample_size >= 0 and sampling in {SAMPLINGS}; got "
                             f"k={k}, sample_size={sample_size}, sampling={sampling!r}")
        self.n_items = n_items
        self.k = k
        self.sample_size = sample_size
        self.sampling = sampling
        self.seed = seed
        self.index: SessionIndex | None = None
        self._postings: sp.csr_matrix | None = None

    @property
    def params(self) -> dict:
        """The model's hyperparameters (the keys of ``KNN_DEFAULTS[variant]``)."""
        return {"k": self.k, "sample_size": self.sample_size, "sampling": self.sampling}

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={value!r}" for key, value in self.params.items())
        return f"{type(self).__name__}({params})"

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, train: Split) -> SessionKNN:
        """Indexes the training sessions rebuilt from ``train`` (the only neighbours ever used).

        Args:
            train: the training split, in CORE's prefix layout (``rebuild_sessions``).

        Returns:
            self.

        Raises:
            ValueError: rows not in CORE's layout, or an item id >= n_items.
        """
        self.index = SessionIndex.from_split(train, self.n_items)
        recent = self.sampling == "recent" and self.sample_size > 0
        self._postings = (self.index.recent_postings(self.sample_size) if recent
                          else self.index.postings)
        self._fitted()
        return self

    def _fitted(self) -> None:
        """Hook: precomputations from ``self.index`` (e.g. IDF)."""

    # -- scoring ----------------------------------------------------------------------------

    def scores(self, prefixes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Full-catalog scores of a batch of current sessions.

        Args:
            prefixes: int [B, max_len] item ids, right-padded with 0 (rows of a Split).
            lengths: int [B], the real items of each row (a row of length 0 gets zeros).

        Returns:
            float32 [B, n_items]: column 0 (padding) is -inf, items no neighbour holds 0.
        """
        prefixes, lengths = self._check_batch(prefixes, lengths)
        out = np.empty((len(lengths), self.n_items), dtype=np.float32)
        block = max(1, BLOCK_CELLS // self.n_items)
        for start in range(0, len(lengths), block):
            stop = min(start + block, len(lengths))
            query = Query.encode(prefixes[start:stop], lengths[start:stop], self.n_items)
            neighbours = self._neighbours(query)
            self._score_block(query, neighbours, out[start:stop])
        out[:, 0] = -np.inf
        return out

    def neighbours(self, prefixes: np.ndarray, lengths: np.ndarray) -> Neighbours:
        """The neighbours of a batch of current sessions (what ``scores`` sums over).

        Args:
            prefixes: int [B, max_len] item ids, right-padded with 0.
            lengths: int [B].

        Returns:
            ``Neighbours``: per row at most ``k`` training sessions and their similarities.
        """
        prefixes, lengths = self._check_batch(prefixes, lengths)
        return self._neighbours(Query.encode(prefixes, lengths, self.n_items))

    def _check_batch(self, prefixes, lengths) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(train) first")
        prefixes = np.asarray(prefixes)
        lengths = np.asarray(lengths, dtype=np.int64)
        if prefixes.ndim != 2 or lengths.shape != (len(prefixes),):
            raise ValueError(f"need prefixes [B, max_len] and lengths [B]; got "
                             f"{prefixes.shape} and {lengths.shape}")
        if len(lengths) and (lengths.min() < 0 or lengths.max() > prefixes.shape[1]):
            raise ValueError(f"lengths must be in 0..{prefixes.shape[1]}")
        return prefixes, lengths

    def _neighbours(self, query: Query) -> Neighbours:
        """Candidates -> sample -> top-k, for every row of the block at once."""
        n_rows = len(query.length)
        weights = np.maximum(self._query_weights(query), _TINY)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(query.count, out=indptr[1:])
        matrix = sp.csr_matrix((weights, query.items, indptr), shape=(n_rows, self.n_items))
        # overlap[b, s] = sum of the weights of the items row b shares with session s
        overlap = (matrix @ self._postings).tocsr()
        rows = np.repeat(np.arange(n_rows), np.diff(overlap.indptr))
        sessions = overlap.indices.astype(np.int64)
        dot = overlap.data
        if self.sample_size:
            keep = _row_top(rows, self._sampling_keys(query, rows, sessions),
                            self.sample_size, n_rows)
            rows, sessions, dot = rows[keep], sessions[keep], dot[keep]
        weights_sq = np.bincount(query.rows, weights=weights * weights, minlength=n_rows)
        similarity = self._similarity(dot, rows, sessions, query, np.sqrt(weights_sq))
        rank = similarity.astype(np.float32).view(np.uint32).astype(np.uint64)
        keep = _row_top(rows, (rank << np.uint64(32)) | sessions.astype(np.uint64),
                        self.k, n_rows)
        return Neighbours(rows=rows[keep], sessions=sessions[keep],
                          similarity=similarity[keep])

    def _sampling_keys(self, query: Query, rows: np.ndarray, sessions: np.ndarray) -> np.ndarray:
        """uint64 keys of the candidates: the sample is each row's largest. "recent": the
        session index; "random": a hash of (seed, the row's distinct items with their last
        positions, the session) in the upper 32 bits, the session index in the lower (distinct
        keys within a row)."""
        session_keys = sessions.astype(np.uint64)
        if self.sampling == "recent":
            return session_keys
        seed = _mix(np.array([self.seed % 2**64], dtype=np.uint64))[0]
        row_hash = np.full(len(query.length), seed, dtype=np.uint64)
        first = np.zeros(len(query.count), dtype=np.int64)
        np.cumsum(query.count[:-1], out=first[1:])
        # Fold each row's (item, last position) entries, in item order, into its hash.
        for column in range(int(query.count.max(initial=0))):
            has = query.count > column
            at = (first + column)[has]
            token = (query.items[at].astype(np.uint64) << np.uint64(16)) ^ query.pos[
                at].astype(np.uint64)
            row_hash[has] = _mix(row_hash[has] ^ token)
        mixed = _mix(row_hash[rows] ^ _mix(session_keys))
        return (mixed & ~_MASK32) | session_keys

    def _score_block(self, query: Query, neighbours: Neighbours, out: np.ndarray) -> None:
        """Writes into ``out`` (float32 [B, n_items], C-contiguous) the item scores of the
        block: the sums over the neighbours of the weights of their items (``_item_scores``),
        added up in float64."""
        index = self.index
        starts = index.indptr[neighbours.sessions]
        sizes = index.indptr[neighbours.sessions + 1] - starts
        pair = np.repeat(np.arange(len(starts)), sizes)
        segment = np.zeros(len(starts), dtype=np.int64)
        np.cumsum(sizes[:-1], out=segment[1:])
        entry = np.repeat(starts - segment, sizes) + np.arange(len(pair))
        rows = neighbours.rows[pair]
        items = index.items[entry].astype(np.int64)
        values = self._item_scores(query, neighbours, Expansion(
            pair=pair, segment=segment, rows=rows, items=items,
            last_pos=index.last_pos[entry].astype(np.int64)))
        cell = rows * self.n_items + items
        order = np.argsort(cell, kind="stable")
        cell = cell[order]
        first = np.flatnonzero(np.append(True, cell[1:] != cell[:-1]))
        if not out.flags.c_contiguous:
            raise ValueError("the score block must be C-contiguous")
        flat = out.reshape(-1)  # a view, not a copy
        flat.fill(0.0)
        if len(cell):
            flat[cell[first]] = np.add.reduceat(values[order], first)

    # -- what a variant defines --------------------------------------------------------------

    def _query_weights(self, query: Query) -> np.ndarray:
        """float64 weight of each (row, item) entry of ``query`` in the similarity."""
        return np.ones(len(query.items))

    def _similarity(self, dot: np.ndarray, rows: np.ndarray, sessions: np.ndarray,
                    query: Query, norm: np.ndarray) -> np.ndarray:
        """float64 similarity of each candidate (row, session) from ``dot``, the weighted
        overlap, and ``norm`` [B], the L2 norm of each row's item weights."""
        raise NotImplementedError

    def _item_scores(self, query: Query, neighbours: Neighbours,
                     expansion: Expansion) -> np.ndarray:
        """float64 score each (row, neighbour, item of the neighbour) entry adds to the item."""
        raise NotImplementedError

    # -- helpers of the variants ------------------------------------------------------------

    def _cosine(self, dot, rows, sessions, norm) -> np.ndarray:
        """sum_{i in s ∩ q} w_i / (sqrt(sum_{i in q} w_i^2) * sqrt(|s|)); |s| distinct items."""
        return dot / (norm[rows] * np.sqrt(self.index.sizes[sessions]))

    @staticmethod
    def _vec(dot, rows, query) -> np.ndarray:
        """sum_{i in s ∩ q} w_i / |q| (|q|: distinct items of the current session)."""
        return dot / query.count[rows]

    def _recency(self, sessions: np.ndarray, scale: float) -> np.ndarray:
        """exp(-(1 - t_s) / scale): decay by the age of session s at time 1 (t_s = s / n)."""
        return np.exp(-(1.0 - self.index.time[sessions]) / scale)


@dataclass(frozen=True)
class Expansion:
    """The items of every neighbour of a block, one entry per (neighbour pair, distinct item).

    Attributes:
        pair: int64 index into the block's ``Neighbours`` of each entry; entries of a pair are
            contiguous and ``segment`` [n_pairs] holds where each pair's run starts.
        rows: int64 row of the entry (``Neighbours.rows[pair]``).
        items: int64 item id.
        last_pos: int64 1-based position of the item's last click in the neighbour session.
    """

    pair: np.ndarray
    segment: np.ndarray
    rows: np.ndarray
    items: np.ndarray
    last_pos: np.ndarray

    def per_pair_max(self, values: np.ndarray) -> np.ndarray:
        """The maximum of ``values`` (one per entry) over each pair's entries."""
        if not len(self.segment):
            return np.zeros(0, dtype=values.dtype)
        return np.maximum.reduceat(values, self.segment)
