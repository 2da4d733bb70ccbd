"""Readers for the five benchmarks' raw logs: each turns its own format into the event frame
(``session``, ``item``, ``time`` [, ``session_time``]) of ``data.pipeline``, applying only the
dataset-specific rules of SPEC §1; everything shared happens in the pipeline. A log may be
gzip-compressed (``.gz``: pandas infers the compression from the file name).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataError

TMALL_MAX_SESSION_ID = 120_000
YOOCHOOSE_RECENT_FRACTION = 0.25
_MS_PER_HOUR = 3_600_000
_MS_PER_DAY = 24 * _MS_PER_HOUR
# RetailRocket session rules: "gap" reproduces CORE's released split byte for byte, "day" is
# CORE's published script (the paper's statistics table).
SESSION_RULES = ("gap", "day")
DEFAULT_SESSION_RULE = "gap"
DEFAULT_SESSION_GAP_HOURS = 8.0


def read_diginetica(path: Path) -> pd.DataFrame:
    """``train-item-views.csv``: clicks ordered by ``timeframe``; ``eventdate`` dates sessions.

    Args:
        path: the file.

    Returns:
        The event frame (session, item, time, session_time).
    """
    raw = _read(path, sep=";", columns=["session_id", "item_id", "timeframe", "eventdate"])
    return pd.DataFrame(
        {
            "session": raw["session_id"],
            "item": raw["item_id"],
            "time": _numeric(raw["timeframe"], path, "timeframe"),
            "session_time": _datetime(raw["eventdate"], path, "eventdate"),
        }
    )


def read_retailrocket(
    path: Path, rule: str = DEFAULT_SESSION_RULE, gap_hours: float | None = None
) -> pd.DataFrame:
    """``events.csv`` (or ``events.csv.gz``): ``view`` events only, cut into sessions per visitor.

    ``gap`` (default): a visitor's views, in time order (ties keep the file's order), start a new
    session after MORE than ``gap_hours`` without a view (8 h: exactly 8 h stays one session).
    Sessions are dated by their last view before any filtering (``session_time``), and sessions
    that end at the same millisecond keep the order of their visitors' first views in the file.
    With 8 h this reproduces CORE's released split byte for byte.

    ``day``: one session per visitor and UTC calendar day, dated by its last surviving view
    (CORE's published script; it gives the paper's statistics table, not the released files).

    Args:
        path: the raw log (``timestamp`` in ms since the epoch, ``visitorid``, ``event``,
            ``itemid``; other columns are ignored).
        rule: ``gap`` or ``day``.
        gap_hours: the ``gap`` rule's threshold in hours (default 8); not allowed with ``day``.

    Returns:
        The event frame of ``data.pipeline`` (``session``, ``item``, ``time`` and, for ``gap``,
        ``session_time``).
    """
    if rule not in SESSION_RULES:
        raise DataError(f"unknown session rule {rule!r}; known: {', '.join(SESSION_RULES)}")
    if rule == "day" and gap_hours is not None:
        raise DataError("a session gap applies to the 'gap' session rule only, not to 'day'")
    gap_hours = DEFAULT_SESSION_GAP_HOURS if gap_hours is None else gap_hours
    if not np.isfinite(gap_hours) or gap_hours <= 0:
        raise DataError(f"the session gap must be a positive number of hours, not {gap_hours}")
    raw = _read(path, sep=",", columns=["timestamp", "visitorid", "event", "itemid"])
    raw = raw[raw["event"] == "view"]
    stamp = _numeric(raw["timestamp"], path, "timestamp")
    if rule == "day":
        day = stamp // _MS_PER_DAY
        session = pd.DataFrame({"visitor": raw["visitorid"], "day": day}).groupby(
            ["visitor", "day"], sort=True
        )
        return pd.DataFrame({"session": session.ngroup(), "item": raw["itemid"], "time": stamp})
    known = raw["visitorid"].notna().to_numpy() & stamp.notna().to_numpy()
    return _gap_sessions(
        raw["visitorid"].to_numpy()[known],
        stamp.to_numpy()[known],
        raw["itemid"].to_numpy()[known],
        gap_hours * _MS_PER_HOUR,
    )


def _gap_sessions(
    visitor: np.ndarray, stamp: np.ndarray, item: np.ndarray, gap: float
) -> pd.DataFrame:
    """Sessions of the ``gap`` rule, numbered in the order that dates tie in: visitors by their
    first view in the file, then each visitor's sessions in time order.

    Args:
        visitor: visitor id per view, in file order (no missing values).
        stamp: time per view (no missing values).
        item: item id per view (missing ones are left to the pipeline to drop).
        gap: a larger difference between a visitor's consecutive views starts a new session.

    Returns:
        The event frame sorted by session then time (ties in file order), with ``session_time``
        = the session's last view.
    """
    first_seen = pd.factorize(visitor)[0]  # 0, 1, ... in order of first appearance
    order = np.lexsort((stamp, first_seen))  # stable: equal times keep the file's order
    visitor, stamp, item = first_seen[order], stamp[order], item[order]
    starts = np.ones(len(order), dtype=bool)
    starts[1:] = (visitor[1:] != visitor[:-1]) | (np.diff(stamp) > gap)
    session = np.cumsum(starts) - 1
    is_last = np.append(starts[1:], True)[: len(order)]  # each session's last view
    return pd.DataFrame(
        {"session": session, "item": item, "time": stamp, "session_time": stamp[is_last][session]}
    )


def read_yoochoose(path: Path) -> pd.DataFrame:
    """``yoochoose-clicks.dat`` (no header). Keeps the most recent quarter of sessions: sessions
    ranked by their last click, the latest 25% kept, before any filtering (so item support is
    counted on the data that is actually used).

    Args:
        path: the file.

    Returns:
        The event frame (session, item, time).
    """
    names = ["session", "timestamp", "item", "category"]
    raw = _read(path, sep=",", columns=names[:3], names=names)
    frame = pd.DataFrame(
        {
            "session": raw["session"],
            "item": raw["item"],
            "time": _datetime(raw["timestamp"], path, "timestamp"),
        }
    )
    last_click = frame.groupby("session")["time"].max().sort_values(kind="stable")
    recent = last_click.index[len(last_click) - int(len(last_click) * YOOCHOOSE_RECENT_FRACTION) :]
    return frame[frame["session"].isin(recent)]


def read_tmall(path: Path) -> pd.DataFrame:
    """``dataset15.csv`` (tab-separated SessionId, ItemId, Time): session ids <= 120000 only.

    Args:
        path: the file.

    Returns:
        The event frame (session, item, time).
    """
    frame = _read_session_item_time(path)
    session = _numeric(frame["session"], path, "SessionId")
    return frame[session <= TMALL_MAX_SESSION_ID]


def read_nowplaying(path: Path) -> pd.DataFrame:
    """``nowplaying.csv`` (tab-separated SessionId, ItemId, Time), used as is.

    Args:
        path: the file.

    Returns:
        The event frame (session, item, time).
    """
    return _read_session_item_time(path)


# name -> (raw log file name, reader(path, **options)); any of them may be gzip-compressed.
RAW_READERS: dict[str, tuple[str, Callable[..., pd.DataFrame]]] = {
    "diginetica": ("train-item-views.csv", read_diginetica),
    "retailrocket": ("events.csv", read_retailrocket),
    "yoochoose": ("yoochoose-clicks.dat", read_yoochoose),
    "tmall": ("dataset15.csv", read_tmall),
    "nowplaying": ("nowplaying.csv", read_nowplaying),
}


# Benchmarks whose --raw is a folder of RecBole atomic files, built by their own module (item
# text, users and side files need more than an event frame): name -> what the folder holds.
RAW_FOLDERS: dict[str, str] = {
    "ml-100k": "ml-100k.inter, .item, .user, .link and .kg (data.movielens)",
}


def read_events(dataset: str, path: str | Path, **options) -> pd.DataFrame:
    """Event frame of a raw log, with errors that name the expected file and columns.

    Args:
        dataset: a name of ``RAW_READERS``.
        path: the raw log (a ``.gz`` file is decompressed on the fly).
        **options: passed to the dataset's reader (retailrocket: ``rule``, ``gap_hours``).

    Returns:
        The event frame of ``data.pipeline``.
    """
    if dataset not in RAW_READERS:
        raise DataError(f"no raw reader for {dataset!r}; known: {sorted(RAW_READERS)}")
    expected, reader = RAW_READERS[dataset]
    path = Path(path)
    if not path.is_file():
        raise DataError(f"raw file {path} not found (for {dataset}, expected {expected})")
    return reader(path, **options)


def _read_session_item_time(path: Path) -> pd.DataFrame:
    raw = _read(path, sep="\t", columns=["SessionId", "ItemId", "Time"])
    time = pd.to_numeric(raw["Time"], errors="coerce")
    if time.isna().all():  # not numbers: date strings
        time = _datetime(raw["Time"], path, "Time")
    return pd.DataFrame({"session": raw["SessionId"], "item": raw["ItemId"], "time": time})


def _read(path: Path, *, sep: str, columns: list[str], names: list[str] | None = None):
    """Read only the needed columns with the C parser (``.gz`` and other compressions inferred
    from the name); missing columns and unreadable files are a clear DataError."""
    header_row = None if names else 0
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, names=names, header=header_row)
        missing = [column for column in columns if column not in header.columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; found {list(header.columns)} "
                f"(separator {sep!r})"
            )
        return pd.read_csv(
            path, sep=sep, usecols=columns, names=names, header=header_row, engine="c"
        )
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read as {sep!r}-separated text: {error}") from error
    except (OSError, EOFError, zlib.error) as error:  # e.g. a broken or truncated .gz
        raise DataError(f"{path}: cannot read: {error}") from error


def _numeric(values: pd.Series, path: Path, column: str) -> pd.Series:
    result = pd.to_numeric(values, errors="coerce")
    _check_parsed(result, values, path, column, "a number")
    return result


def _datetime(values: pd.Series, path: Path, column: str) -> pd.Series:
    """Timestamps as seconds since the epoch (UTC), so sessions sort numerically."""
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    _check_parsed(parsed, values, path, column, "a date")
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _check_parsed(parsed: pd.Series, raw: pd.Series, path: Path, column: str, kind: str) -> None:
    bad = parsed.isna() & raw.notna()
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: data row {raw.index[position] + 1}: column {column!r} value "
            f"{raw.iloc[position]!r} is not {kind} ({int(bad.sum()):,} such rows)"
        )
