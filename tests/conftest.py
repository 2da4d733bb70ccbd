"""Shared fixtures: small generated datasets on disk and one local Ray instance per test session."""

from __future__ import annotations

import os

import pytest

TINY = "tiny"


@pytest.fixture(scope="session", autouse=True)
def _session_cache_root(tmp_path_factory):
    """Every cache (``data.cache``: parsed datasets, text vectors, personas, loss choices,
    timings) goes to a folder of this test session, never to ~/.cache; a test may point
    CORE_CACHE_DIR elsewhere (monkeypatch). Set before Ray starts, so its workers inherit it."""
    os.environ["CORE_CACHE_DIR"] = str(tmp_path_factory.mktemp("core-cache"))


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data dir with `tiny/tiny.{train,valid,test}.inter`, written by the synthetic generator."""
    from data.synthetic import write_atomic

    root = tmp_path_factory.mktemp("datasets")
    write_atomic(root / TINY, name=TINY, preset="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance (2 CPUs), started once: start-up costs seconds."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


# PostgreSQL for the tracking-server tests: a server whose maintenance database this URL names,
# as a user that may create databases (CI machines run one on 127.0.0.1:5432, trust auth).
POSTGRES_URL = os.environ.get("CORE_HPO_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_admin_url():
    """The URL above, checked once; tests that use it skip when no PostgreSQL server answers.

    A server that answers but refuses the connection fails the test instead (a setup error to
    see, not hide); so does a missing driver (`pip install -e ".[dev]"` installs it).
    """
    import socket

    import sqlalchemy

    url = sqlalchemy.engine.make_url(POSTGRES_URL)
    address = (url.host or "127.0.0.1", url.port or 5432)
    try:
        socket.create_connection(address, timeout=3).close()
    except OSError as exc:
        pytest.skip(f"no PostgreSQL server answers on {address[0]}:{address[1]} ({exc}); start "
                    "one or set CORE_HPO_POSTGRES_URL")
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except ImportError as exc:
        pytest.fail(f"PostgreSQL driver missing ({exc}): pip install -e '.[dev]'")
    return POSTGRES_URL
