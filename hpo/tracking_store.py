"""The tracking server's backend store: its database URI (a bare path is a SQLite file), the URI
with its password hidden for messages and logs, and one connection before the server starts,
so that a bad URI stops it with a message naming the URI (``hpo.tracking_server``).
"""

from __future__ import annotations

import time
from pathlib import Path

# The extra that installs each database's drivers: for postgresql://, psycopg2 (SQLAlchemy < 2.1's
# default) and psycopg 3 (SQLAlchemy >= 2.1's), as MLflow's own `db` extra does.
DRIVER_EXTRAS = {"postgresql": "postgres"}
LIBPQ_DRIVERS = ("psycopg2", "psycopg")  # they take libpq's connect_timeout


class BackendStoreError(RuntimeError):
    """The backend store database cannot be used; raised before the server starts."""


def backend_store_uri(store: str) -> str:
    """A database URI; a bare path means a SQLite file (absolute, parent created).

    Args:
        store: A SQLite file path, a ``sqlite:///`` URI or another SQLAlchemy database URI
            (``postgresql://user:password@host:port/database``).

    Returns:
        The URI to give ``mlflow server --backend-store-uri``.
    """
    if "://" in store:
        if store.startswith("sqlite:///"):
            Path(store.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return store
    path = Path(store).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def redact(uri: str) -> str:
    """The URI with its password, if any, replaced by ``***`` (for messages and logs).

    Args:
        uri: A database or server URI.

    Returns:
        The URI safe to print.
    """
    if "://" not in uri or "@" not in uri.split("://", 1)[1].split("/", 1)[0]:
        return uri
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"


def check_backend_store(uri: str, timeout_s: float = 10.0, wait_s: float = 0.0) -> None:
    """Connect to a database backend store once, so that a bad URI fails before the server starts.

    SQLite files are not checked (the server creates them). The error names the URI without
    its password and says what is wrong: the driver is not installed, the server does not
    answer, the database does not exist, the credentials are refused.

    Args:
        uri: The backend store URI (see :func:`backend_store_uri`).
        timeout_s: Seconds one connection attempt may take.
        wait_s: Seconds to keep retrying a failed connection (a database server that is still
            starting); 0 tries once. A missing driver or a malformed URI fails at once.

    Raises:
        BackendStoreError: The database cannot be connected to.
    """
    if uri.startswith("sqlite:") or "://" not in uri:
        return
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    shown = redact(uri)
    try:
        url = sqlalchemy.engine.make_url(uri)
    except ArgumentError as exc:
        raise BackendStoreError(f"backend store {shown} is not a database URI: {exc}") from exc
    if url.get_backend_name() == "postgres":
        raise BackendStoreError(f"backend store {shown}: SQLAlchemy (and so MLflow) needs the "
                                "scheme postgresql://, not postgres://")
    connect_args = {"connect_timeout": max(1, round(timeout_s))} \
        if url.get_driver_name() in LIBPQ_DRIVERS else {}
    extra = DRIVER_EXTRAS.get(url.get_backend_name())
    install = (f'pip install "core-hpo[{extra}]"' if extra
               else "install the SQLAlchemy driver it names")
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args,
                                          poolclass=sqlalchemy.pool.NullPool)
    except (ImportError, NoSuchModuleError) as exc:
        raise BackendStoreError(f"the database driver for backend store {shown} is not "
                                f"installed ({exc}): {install}") from exc
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                with engine.connect() as connection:
                    connection.execute(sqlalchemy.text("SELECT 1"))
                return
            except SQLAlchemyError as exc:
                if time.monotonic() < deadline:
                    time.sleep(1.0)  # polling interval while the database server starts
                    continue
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                waited = f" (retried for {wait_s:.0f} s)" if wait_s > 0 else ""
                raise BackendStoreError(
                    f"cannot connect to backend store {shown}{waited}: "
                    f"{'; '.join(line.strip() for line in reason if line.strip())}") from exc
    finally:
        engine.dispose()
