"""Readers for the five benchmarks' raw logs: each turns its own format into the event frame
(``session``, ``item``, ``time`` [, ``session_time``]) of ``data.pipeline``, applying only the
dataset-specific rules of SPEC §1; everything shared happens in the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataError

TMALL_MAX_SESSION_ID = 120_000
YOOCHOOSE_RECENT_FRACTION = 0.25
_MS_PER_DAY = 86_400_000


def read_diginetica(path: Path) -> pd.DataFrame:
    """``train-item-views.csv``: clicks ordered by ``timeframe``; ``eventdate`` dates sessions."""
    raw = _read(path, sep=";", columns=["session_id", "item_id", "timeframe", "eventdate"])
    return pd.DataFrame(
        {
            "session": raw["session_id"],
            "item": raw["item_id"],
            "time": _numeric(raw["timeframe"], path, "timeframe"),
            "session_time": _datetime(raw["eventdate"], path, "eventdate"),
        }
    )


def read_retailrocket(path: Path) -> pd.DataFrame:
    """``events.csv``: ``view`` events only; a session is one visitor's views of one UTC day."""
    raw = _read(path, sep=",", columns=["timestamp", "visitorid", "event", "itemid"])
    raw = raw[raw["event"] == "view"]
    stamp = _numeric(raw["timestamp"], path, "timestamp")
    day = stamp // _MS_PER_DAY
    session = pd.DataFrame({"visitor": raw["visitorid"], "day": day}).groupby(
        ["visitor", "day"], sort=True
    )
    return pd.DataFrame({"session": session.ngroup(), "item": raw["itemid"], "time": stamp})


def read_yoochoose(path: Path) -> pd.DataFrame:
    """``yoochoose-clicks.dat`` (no header). Keeps the most recent quarter of sessions: sessions
    ranked by their last click, the latest 25% kept, before any filtering (so item support is
    counted on the data that is actually used)."""
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
    """``dataset15.csv`` (tab-separated SessionId, ItemId, Time): session ids <= 120000 only."""
    frame = _read_session_item_time(path)
    session = _numeric(frame["session"], path, "SessionId")
    return frame[session <= TMALL_MAX_SESSION_ID]


def read_nowplaying(path: Path) -> pd.DataFrame:
    """``nowplaying.csv`` (tab-separated SessionId, ItemId, Time), used as is."""
    return _read_session_item_time(path)


RAW_READERS: dict[str, tuple[str, Callable[[Path], pd.DataFrame]]] = {
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


def read_events(dataset: str, path: str | Path) -> pd.DataFrame:
    """Event frame of a raw log, with errors that name the expected file and columns."""
    if dataset not in RAW_READERS:
        raise DataError(f"no raw reader for {dataset!r}; known: {sorted(RAW_READERS)}")
    expected, reader = RAW_READERS[dataset]
    path = Path(path)
    if not path.is_file():
        raise DataError(f"raw file {path} not found (for {dataset}, expected {expected})")
    return reader(path)


def _read_session_item_time(path: Path) -> pd.DataFrame:
    raw = _read(path, sep="\t", columns=["SessionId", "ItemId", "Time"])
    time = pd.to_numeric(raw["Time"], errors="coerce")
    if time.isna().all():  # not numbers: date strings
        time = _datetime(raw["Time"], path, "Time")
    return pd.DataFrame({"session": raw["SessionId"], "item": raw["ItemId"], "time": time})


def _read(path: Path, *, sep: str, columns: list[str], names: list[str] | None = None):
    """Read only the needed columns with the C parser; missing columns are a clear DataError."""
    try:
        header = pd.read_csv(path, sep=sep, nrows=0, names=names, header=None if names else 0)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read as {sep!r}-separated text: {error}") from error
    missing = [column for column in columns if column not in header.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; found {list(header.columns)} (separator {sep!r})"
        )
    return pd.read_csv(
        path, sep=sep, usecols=columns, names=names, header=None if names else 0, engine="c"
    )


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
