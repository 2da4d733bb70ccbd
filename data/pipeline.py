"""CORE's preprocessing protocol (SPEC §1), written once.

Every raw-log reader and the synthetic generator hand an event frame to ``build_dataset``, so the
filtering, temporal split, train-only numbering and prefix expansion rules cannot drift apart.

Event frame columns: ``session`` (sortable key), ``item`` (any hashable raw id), ``time``
(orders clicks inside a session; ties keep input order), optionally ``session_time`` (dates the
session; defaults to ``time``) and optionally ``user`` (raw user id, one per session; missing =
unknown). A session is dated by its LAST click (max ``session_time``), as in the GRU4Rec / SR-GNN
preprocessing scripts CORE's files descend from.

Users are numbered 1..n_users in order of first appearance over the train sessions (in date
order), then over valid, then test (so a user first seen in test still gets an id); 0 means
unknown. Item metadata (a frame indexed by raw item id) is mapped through the same vocabulary as
the item ids, so the written ``.item`` file describes exactly the items the ids stand for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from data.arrays import pad_rows, positions_within, segment_starts
from data.dataset import MAX_SEQ_LENGTH, SPLITS, SessionDataset, Split
from data.errors import DataError
from data.items import FIELD_TYPES, TEXT_TYPES, ItemTable

REQUIRED_COLUMNS = ("session", "item", "time")
MIN_ITEM_SUPPORT = 5
MIN_SESSION_LENGTH = 2
TRAIN_PERCENT, VALID_PERCENT = 80, 10  # test gets the rest

Log = Callable[[str], None]


@dataclass(frozen=True)
class Built:
    """A processed dataset plus the raw ids behind its numbering, for writing side files
    (users, links) in the dataset's ids."""

    dataset: SessionDataset
    item_ids: pd.Index  # raw item id of dataset item id i + 1 at position i
    user_ids: pd.Index | None  # raw user id of dataset user id i + 1 at position i; None: no users

    def item_id_of(self, raw: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
        """Dataset item ids of raw ids (0 for ids that are not in the dataset)."""
        return self.item_ids.get_indexer(raw) + 1

    def user_id_of(self, raw: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
        """Dataset user ids of raw ids (0 for users that are not in the dataset)."""
        if self.user_ids is None:
            raise DataError("this dataset was built without users")
        return self.user_ids.get_indexer(raw) + 1


def build_dataset(events: pd.DataFrame, name: str, **options) -> SessionDataset:
    """Apply the whole protocol to an event frame and return the three expanded splits.

    Args:
        events: the event frame (see the module docstring); a ``user`` column gives the splits
            ``users``.
        name: the dataset's name.
        **options: ``max_len``, ``log``, ``items`` and ``item_types``, as ``build`` takes them.

    Returns:
        The dataset.
    """
    return build(events, name, **options).dataset


def build(
    events: pd.DataFrame,
    name: str,
    *,
    max_len: int = MAX_SEQ_LENGTH,
    log: Log | None = None,
    items: pd.DataFrame | None = None,
    item_types: Mapping[str, str] | None = None,
) -> Built:
    """``build_dataset`` that also returns the raw ids behind the item and user numbering.

    Args:
        events: the event frame (see the module docstring).
        name: the dataset's name.
        max_len: prefix window; longer prefixes keep their last ``max_len`` items.
        log: receives one line per stage with the counts left.
        items: optional item metadata, indexed by raw item id (same dtype as ``events.item``),
            one column per field; missing values become empty text. Becomes ``dataset.items``.
        item_types: field -> ``token`` / ``token_seq`` / ``float``; default ``token_seq``.

    Returns:
        The dataset and the raw ids (``Built``).
    """
    types = _check_item_metadata(items, item_types) if items is not None else None
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
    kept = {}
    for split_name, part in parts.items():
        ids = vocabulary.get_indexer(part["item"].to_numpy()) + 1  # 0 = unseen in train
        part = _drop_short_sessions(part.assign(item=ids)[ids > 0])
        report(f"{split_name}: items unseen in train removed, short sessions dropped", part)
        if part.empty:
            raise DataError(f"{name}: the {split_name} split is empty; the log is too small")
        kept[split_name] = part
    user_ids = _user_vocabulary(kept) if "user" in frame.columns else None
    splits = {}
    for split_name, part in kept.items():
        lengths = _run_lengths(part["session"].to_numpy())
        split = expand_sessions(part["item"].to_numpy(np.int32), lengths, max_len)
        if user_ids is not None:
            first = segment_starts(lengths)
            session_users = user_ids.get_indexer(part["user"].to_numpy()[first]) + 1
            split = replace(split, users=np.repeat(session_users, lengths - 1).astype(np.int64))
        splits[split_name] = split
    n_items = len(vocabulary) + 1
    table = None if items is None else _item_table(items, types, vocabulary, n_items, name)
    dataset = SessionDataset(name, n_items, **splits, items=table)
    report.done(dataset.summary())
    return Built(dataset, vocabulary, user_ids)


def _user_vocabulary(parts: dict[str, pd.DataFrame]) -> pd.Index:
    """Known users in first-seen order over train, then valid, then test (unknown ones excluded:
    they map to 0)."""
    users = pd.concat([part["user"] for part in parts.values()], ignore_index=True)
    return pd.Index(pd.unique(users[users.notna()].to_numpy()))


def _check_item_metadata(items: pd.DataFrame, item_types: Mapping[str, str] | None) -> dict:
    """Field types of ``items``; errors before any work when the metadata cannot be used."""
    if items.index.has_duplicates:
        repeated = _plain(items.index[items.index.duplicated()][0])
        raise DataError(f"item metadata repeats raw item id {repeated!r}")
    names = [str(column) for column in items.columns]
    if "item_id" in names or len(set(names)) != len(names):
        raise DataError(f"item metadata columns {names} repeat a name or use 'item_id'")
    types = {name: "token_seq" for name in names} | dict(item_types or {})
    unknown = set(types) - set(names)
    bad = {name: kind for name, kind in types.items() if kind not in FIELD_TYPES}
    if unknown or bad:
        raise DataError(
            f"item_types name unknown column(s) {sorted(unknown)} or bad type(s) {bad} "
            f"(types: {FIELD_TYPES})"
        )
    if not any(types[name] in TEXT_TYPES for name in names):
        raise DataError(f"item metadata has no token/token_seq column: {types}")
    return {name: types[name] for name in names}


def _item_table(
    items: pd.DataFrame, types: dict, vocabulary: pd.Index, n_items: int, name: str
) -> ItemTable:
    """Metadata rows of the dataset's items, in dataset ids; items without a row stay empty."""
    rows = items.index.get_indexer(vocabulary)  # -1: no metadata for that raw id
    found = np.flatnonzero(rows >= 0)
    if len(vocabulary) and not len(found):
        raise DataError(
            f"{name}: no item of the log has a row in the item metadata; do the raw ids match? "
            f"(log ids like {_plain(vocabulary[0])!r}, metadata ids like "
            f"{_plain(items.index[0]) if len(items) else None!r})"
        )
    selected = items.iloc[rows[found]]
    columns = {
        str(column): values.astype(object).where(values.notna(), "").tolist()
        for column, values in selected.items()
    }
    return ItemTable.from_columns(n_items, found + 1, columns, types)


def expand_sessions(items: np.ndarray, lengths: np.ndarray, max_len: int = MAX_SEQ_LENGTH) -> Split:
    """Session [v1..vm] -> m-1 rows ``v1..v(m-i) -> v(m-i+1)``, i = 1..m-1 (longest first, as in
    CORE's files); prefixes keep their last ``max_len`` items.

    Args:
        items: the sessions' items, concatenated in session order.
        lengths: session lengths (>= 2).
        max_len: prefix window.

    Returns:
        The rows (a ``Split``).
    """
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
    has_users = "user" in events.columns
    columns = [*REQUIRED_COLUMNS, "session_time", *(["user"] if has_users else [])]
    frame = events.reindex(columns=columns)
    if "session_time" not in events.columns:
        frame["session_time"] = frame["time"]
    # a missing user is unknown (0), not a reason to drop a click
    frame = frame.dropna(subset=[*REQUIRED_COLUMNS, "session_time"])
    if has_users:
        per_session = frame.groupby("session", sort=False)["user"].nunique()
        if (per_session > 1).any():
            session = per_session.index[np.flatnonzero(per_session.to_numpy() > 1)[0]]
            raise DataError(
                f"session {_plain(session)!r} has clicks of {per_session[session]} different "
                "users; a session belongs to one user"
            )
        # a session with some unknown clicks belongs to its known user
        frame["user"] = frame.groupby("session", sort=False)["user"].transform("first")
    frame["order"] = np.arange(len(frame))  # tie-break: input order
    return frame


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, for readable messages."""
    return value.item() if isinstance(value, np.generic) else value


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
