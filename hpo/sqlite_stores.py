"""SQLite files several searches write at once: MLflow's ``mlflow.db`` and Optuna's ``optuna.db``.

Two searches started together against one output directory share both files. SQLite allows one
writer at a time; the others wait for the lock, but Python's default wait is 5 s, after which the
write fails with "database is locked", which a loaded machine reaches. And each library creates
its tables on first use, so two processes opening a new file at once both try to create them and
one fails. Here every connection waits up to ``BUSY_TIMEOUT_S`` for the lock, and a store's first
use (creating its tables) happens under an exclusive ``flock`` on ``<file>.lock``, one process at
a time. Other databases (PostgreSQL, MySQL) are left as they are.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

BUSY_TIMEOUT_S = 60.0
SQLITE_PREFIX = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other URI).

    Args:
        uri: an SQLAlchemy URL or an MLflow tracking URI.
    """
    if not uri.startswith(SQLITE_PREFIX):
        return None
    return Path(uri.removeprefix(SQLITE_PREFIX).split("?", 1)[0])


def with_busy_timeout(uri: str) -> str:
    """``uri`` whose SQLite connections wait ``BUSY_TIMEOUT_S`` for a lock (other URIs, and a
    SQLite URI that already sets query options, unchanged).

    Args:
        uri: an SQLAlchemy URL or an MLflow tracking URI.
    """
    if sqlite_path(uri) is None or "?" in uri:
        return uri
    return f"{uri}?timeout={BUSY_TIMEOUT_S:g}"


@contextlib.contextmanager
def first_use_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<file>.lock`` while a SQLite store is first opened (its tables
    created); a no-op for other URIs. Creates the file's folder.

    Args:
        uri: the store's URI.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
