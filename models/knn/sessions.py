"""The training sessions of a kNN model: rebuilt from CORE's prefix rows, then indexed.

CORE's training split holds "prefix -> next item" rows, not sessions: a session [v1 .. vm]
of the training file gave m - 1 consecutive rows, longest prefix first,

    v1 .. v(m-1) -> vm,   v1 .. v(m-2) -> v(m-1),   ...,   v1 -> v2,

each prefix cut to its last ``max_len`` (50) items. A row of length 1 ends a session. The
session is rebuilt as [prefix of its length-1 row] + the targets of its rows in reverse
order. A split cut to its last rows (``SessionDataset.with_train_tail``) may start inside a
session: its first group of rows then rebuilds a shorter session [v1 .. vj+1], which is what
those rows say.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from data.dataset import Split

# Rows checked at a time against the rebuilt sessions (bounds the [rows, max_len] gathers).
_CHECK_ROWS = 1 << 16


def rebuild_sessions(train: Split) -> tuple[np.ndarray, np.ndarray]:
    """The sessions behind CORE's prefix rows (see the module docstring), in file order.

    Checks that every row is the windowed prefix of its rebuilt session: row i of a group of
    g rows (0-based, longest first) must have length min(g - i, max_len) and hold items
    g - i - length + 1 .. g - i of the session (1-based), i.e. each row's prefix is the
    previous row's prefix minus its last item, up to the window.

    Args:
        train: the training split (rows in CORE's layout, oldest session first).

    Returns:
        ``(items, offsets)``: int32 item ids of all sessions concatenated, and int64
        offsets [n_sessions + 1]: session s is ``items[offsets[s]:offsets[s + 1]]`` (at least
        2 items each, clicks in order, repeats kept).

    Raises:
        ValueError: an empty split, or rows not in that layout (the first offending row named).
    """
    n = len(train)
    if n == 0:
        raise ValueError("the training split is empty: a kNN model needs training sessions")
    window = train.max_len
    lengths = train.lengths.astype(np.int64)
    bad = np.flatnonzero((lengths < 1) | (lengths > window))
    if len(bad):
        raise ValueError(f"training row {bad[0]} has length {lengths[bad[0]]}, outside "
                         f"1..{window}")
    ends = np.flatnonzero(lengths == 1)
    if not len(ends) or ends[-1] != n - 1:
        raise ValueError(
            f"training row {n - 1} (the last) has length {lengths[-1]}, not 1: in CORE's layout "
            "every session ends with its length-1 row (v1 -> v2)")
    starts = np.concatenate([[0], ends[:-1] + 1])
    rows_per = ends - starts + 1  # g rows make a session of g + 1 items
    offsets = np.zeros(len(ends) + 1, dtype=np.int64)
    np.cumsum(rows_per + 1, out=offsets[1:])
    session = np.repeat(np.arange(len(ends)), rows_per)
    # Row i of its group (0-based) predicts item j + 1 after a true prefix of j = g - i items.
    true_length = ends[session] - np.arange(n) + 1
    items = np.empty(offsets[-1], dtype=np.int64)
    items[offsets[session] + true_length] = train.targets
    items[offsets[:-1]] = train.prefixes[ends, 0]
    if items.min() < 1 or items.max() > np.iinfo(np.int32).max:
        first = int(np.flatnonzero((items < 1) | (items > np.iinfo(np.int32).max))[0])
        raise ValueError(f"training item id {items[first]} out of range 1..2^31-1")
    expected_length = np.minimum(true_length, window)
    bad = np.flatnonzero(lengths != expected_length)
    first_bad = int(bad[0]) if len(bad) else n
    columns = np.arange(window)
    for start in range(0, min(first_bad, n), _CHECK_ROWS):
        stop = min(start + _CHECK_ROWS, first_bad)
        length = lengths[start:stop, None]
        real = columns < length
        where = offsets[session[start:stop], None] + true_length[start:stop, None] - length
        expected = np.where(real, items[np.where(real, where + columns, 0)], 0)
        got = np.where(real, train.prefixes[start:stop], 0)
        wrong = np.flatnonzero((expected != got).any(axis=1))
        if len(wrong):
            first_bad = start + int(wrong[0])
            break
    if first_bad < n:
        r = first_bad
        s, j = session[r], true_length[r]
        want = items[offsets[s] + j - min(j, window) : offsets[s] + j].tolist()
        got = train.prefixes[r, : lengths[r]].tolist()
        raise ValueError(
            f"training row {r} is not in CORE's prefix layout: its prefix is {got}, but as row "
            f"{r - starts[s]} of the session ending at row {ends[s]} it should be {want} (a "
            "session [v1..vm] gives m-1 consecutive rows v1..v(m-1) -> vm, ..., v1 -> v2, each "
            "prefix the previous one minus its last item, cut to the last "
            f"{window} items)")
    return items.astype(np.int32), offsets


@dataclass(frozen=True)
class SessionIndex:
    """Training sessions as the kNN models read them.

    Time: session s of n (file order, oldest first) happens at ``time[s] = s / n``, so the
    split spans one time unit and the newest session is at (n - 1) / n; every session being
    recommended for (a validation or test row) is at time 1, after all of them. Sessions that
    share an item with a current session are its candidates; "recent" prefers higher s.

    Attributes:
        n_items: catalog size (ids 1..n_items-1, 0 = padding).
        n_sessions: number of training sessions.
        time: float64 [n_sessions], s / n_sessions.
        indptr: int64 [n_sessions + 1]: session s's distinct items are
            ``items[indptr[s]:indptr[s + 1]]``, in increasing id order.
        items: int32 distinct item ids of the sessions, concatenated.
        last_pos: int32, for each entry of ``items``, the 1-based position of the item's last
            click in its session.
        sizes: int64 [n_sessions], distinct items per session.
        events: int64 [n_items], clicks of each item in the training sessions.
        postings: float64 CSR [n_items, n_sessions], 1 where the session holds the item.
    """

    n_items: int
    n_sessions: int
    time: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    last_pos: np.ndarray
    sizes: np.ndarray
    events: np.ndarray
    postings: sp.csr_matrix

    @classmethod
    def from_split(cls, train: Split, n_items: int) -> SessionIndex:
        """The index of the sessions rebuilt from ``train`` (see ``rebuild_sessions``).

        Raises:
            ValueError: rows not in CORE's layout, or an item id >= ``n_items``.
        """
        clicks, offsets = rebuild_sessions(train)
        if clicks.max() >= n_items:
            raise ValueError(f"training item id {clicks.max()} >= n_items={n_items}")
        n_sessions = len(offsets) - 1
        lengths = np.diff(offsets)
        session = np.repeat(np.arange(n_sessions, dtype=np.int64), lengths)
        position = np.arange(len(clicks)) - offsets[session] + 1
        # Sort by (session, item); lexsort is stable, so clicks of an item stay in order and
        # the last of each (session, item) run is its last click.
        order = np.lexsort((clicks, session))
        key = session[order] * n_items + clicks[order]
        last = np.append(key[1:] != key[:-1], True)
        kept = order[last]
        s_of = session[kept]
        sizes = np.bincount(s_of, minlength=n_sessions)
        indptr = np.zeros(n_sessions + 1, dtype=np.int64)
        np.cumsum(sizes, out=indptr[1:])
        items = clicks[kept].astype(np.int32)
        postings = sp.csr_matrix(
            (np.ones(len(items)), (items, s_of)), shape=(n_items, n_sessions))
        postings.sort_indices()
        return cls(
            n_items=n_items,
            n_sessions=n_sessions,
            time=np.arange(n_sessions) / n_sessions,
            indptr=indptr,
            items=items,
            last_pos=position[kept].astype(np.int32),
            sizes=sizes.astype(np.int64),
            events=np.bincount(clicks, minlength=n_items).astype(np.int64),
            postings=postings,
        )

    def recent_postings(self, limit: int) -> sp.csr_matrix:
        """``postings`` keeping, for each item, only its ``limit`` most recent sessions.

        Enough to find the ``limit`` most recent sessions sharing any item with a current
        session, with their exact overlaps: such a session s holds, for every item i the two
        share, fewer than ``limit`` newer sessions with i (all of them would be newer shared
        candidates), so s is among item i's ``limit`` most recent.

        Args:
            limit: sessions kept per item (>= 1).
        """
        p = self.postings
        counts = np.diff(p.indptr)
        item = np.repeat(np.arange(self.n_items), counts)
        from_end = p.indptr[item + 1] - 1 - np.arange(p.nnz)
        keep = from_end < limit
        return sp.csr_matrix((p.data[keep], (item[keep], p.indices[keep])), shape=p.shape)

    def idf(self) -> np.ndarray:
        """float64 [n_items]: log(n_sessions / clicks of the item), 0 for items never clicked
        (session-rec's ``idf``: clicks are counted with repeats, sessions once)."""
        out = np.zeros(self.n_items)
        seen = self.events > 0
        out[seen] = np.log(self.n_sessions / self.events[seen])
        return out
