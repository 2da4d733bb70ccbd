"""CORE's preprocessing protocol (SPEC §1), written once.

Every raw-log reader and the synthetic generator hand an event frame to ``build_dataset``, so the
filtering, temporal split, train-only numbering and prefix expansion rules cannot drift apart.

Event frame columns: ``session`` (sortable key), ``item`` (any hashable raw id), ``time``
(orders clicks inside a session; ties keep input order) and optionally ``session_time`` (dates
the session; defaults to ``time``). A session is dated by its LAST click (max ``session_time``),
as in the GRU4Rec / SR-GNN preprocessing scripts CORE's files descend from.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from data.arrays import pad_rows, positions_within, segment_starts
from data.dataset import MAX_SEQ_LENGTH, SPLITS, SessionDataset, Split
from data.errors import DataError

REQUIRED_COLUMNS = ("session", "item", "time")
MIN_ITEM_SUPPORT = 5
MIN_SESSION_LENGTH = 2
TRAIN_PERCENT, VALID_PERCENT = 80, 10  # test gets the rest

Log = Callable[[str], None]


def build_dataset(
    events: pd.DataFrame, name: str, *, max_len: int = MAX_SEQ_LENGTH, log: Log | None = None
) -> SessionDataset:
    """Apply the whole protocol to an event frame and return the three expanded splits."""
    report = _Reporter(log)
    frame = _normalise(events)
    report("input (rows with a missing field dropped)", frame)
    frame = _drop_short_sessions(frame)
    report("sessions of length 1 dropped", frame)
    support = frame["item"].map(frame["item"].value_counts())
    frame = frame[support.to_numpy() >= MIN_ITEM_SUPPORT]
    report(f"items seen < {MIN_ITEM_SUPPORT} times dropped", frame)
    frame = _drop_short_sessions(frame)
    report(f"sessions with < {MIN_SESSION_LENGTH} items dropped", frame)
    if frame.empty:
        raise DataError(f"{name}: no session survives the filters")

    parts = dict(zip(SPLITS, _temporal_split(frame), strict=True))
    vocabulary = pd.Index(pd.unique(parts["train"]["item"].to_numpy()))  # first-seen order
    splits = {}
    for split_name, part in parts.items():
        ids = vocabulary.get_indexer(part["item"].to_numpy()) + 1  # 0 = unseen in train
        part = _drop_short_sessions(part.assign(item=ids)[ids > 0])
        report(f"{split_name}: items unseen in train removed, short sessions dropped", part)
        if part.empty:
            raise DataError(f"{name}: the {split_name} split is empty; the log is too small")
        splits[split_name] = expand_sessions(
            part["item"].to_numpy(np.int32), _run_lengths(part["session"].to_numpy()), max_len
        )
    dataset = SessionDataset(name, len(vocabulary) + 1, **splits)
    report.done(dataset.summary())
    return dataset


def expand_sessions(items: np.ndarray, lengths: np.ndarray, max_len: int = MAX_SEQ_LENGTH) -> Split:
    """Session [v1..vm] -> m-1 rows ``v1..v(m-i) -> v(m-i+1)``, i = 1..m-1 (longest first, as in
    CORE's files); prefixes keep their last ``max_len`` items."""
    lengths = np.asarray(lengths, dtype=np.int64)
    rows_per_session = lengths - 1
    session_of_row = np.repeat(np.arange(len(lengths)), rows_per_session)
    prefix_len = rows_per_session[session_of_row] - positions_within(rows_per_session)
    first = segment_starts(lengths)[session_of_row]
    targets = items[first + prefix_len].astype(np.int64)
    kept = np.minimum(prefix_len, max_len)  # gather only what is kept: no quadratic blow-up
    flat = items[np.repeat(first + prefix_len - kept, kept) + positions_within(kept)]
    prefixes, kept = pad_rows(flat, kept, max_len)
    return Split(prefixes, kept, targets)


def _normalise(events: pd.DataFrame) -> pd.DataFrame:
    missing = [column for column in REQUIRED_COLUMNS if column not in events.columns]
    if missing:
        raise DataError(f"event frame lacks column(s) {missing}; it has {list(events.columns)}")
    columns = [*REQUIRED_COLUMNS, "session_time"]
    frame = events.reindex(columns=columns)
    if "session_time" not in events.columns:
        frame["session_time"] = frame["time"]
    frame = frame.dropna()
    frame["order"] = np.arange(len(frame))  # tie-break: input order
    return frame


def _drop_short_sessions(frame: pd.DataFrame) -> pd.DataFrame:
    sizes = frame.groupby("session", sort=False)["item"].transform("size")
    return frame[sizes.to_numpy() >= MIN_SESSION_LENGTH]


def _temporal_split(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Sessions sorted by date (ties by key), then cut 80/10/10 by session count."""
    date = frame.groupby("session", sort=False)["session_time"].transform("max")
    frame = frame.assign(date=date.to_numpy()).sort_values(
        ["date", "session", "time", "order"], kind="stable", ignore_index=True
    )
    keys = frame["session"].to_numpy()
    rank = np.cumsum(np.concatenate(([False], keys[1:] != keys[:-1])))
    n_sessions = int(rank[-1]) + 1
    cut_train = n_sessions * TRAIN_PERCENT // 100
    cut_valid = n_sessions * (TRAIN_PERCENT + VALID_PERCENT) // 100
    bounds = np.searchsorted(rank, [cut_train, cut_valid])
    return frame[: bounds[0]], frame[bounds[0] : bounds[1]], frame[bounds[1] :]


def _run_lengths(keys: np.ndarray) -> np.ndarray:
    """Lengths of the runs of equal consecutive keys (sessions are contiguous here)."""
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return np.diff(np.append(starts, len(keys)))


class _Reporter:
    """Stage lines with counts, so long preprocessing runs show progress and what each rule did."""

    def __init__(self, log: Log | None) -> None:
        self.log = log

    def __call__(self, stage: str, frame: pd.DataFrame) -> None:
        if self.log is not None:
            self.log(
                f"{stage}: {len(frame):,} events, {frame['session'].nunique():,} sessions, "
                f"{frame['item'].nunique():,} items"
            )

    def done(self, summary: str) -> None:
        if self.log is not None:
            self.log(f"done: {summary}")
