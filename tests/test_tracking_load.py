"""The tracking server on PostgreSQL: a database that cannot be used stops it before it starts, and
many concurrent trial writers logging through it (several server workers) land every metric point
exactly once; the same load on the SQLite server (one worker) too. Real servers
(`python -m hpo.tracking_server`) on free loopback ports, each on a fresh store that is removed
afterwards; the load and its verification are benchmarks/bench_tracking.py's, at a smaller size.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_tracking  # noqa: E402

from hpo import tracking_server, tracking_store  # noqa: E402

# Small but concurrent: every trial is its own process, all logging at once.
TRIALS, EPOCHS, METRICS = 12, 6, 8
PG_WORKERS = 2


def database_names(admin_url: str) -> set[str]:
    engine = sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text("SELECT datname FROM pg_database"))
            return {row[0] for row in rows}
    finally:
        engine.dispose()


def answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(uri + "/health", timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def run_server(*args: str) -> subprocess.CompletedProcess:
    """`python -m hpo.tracking_server ARGS`, expected to exit by itself."""
    return subprocess.run([sys.executable, "-m", "hpo.tracking_server", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_printed_command_hides_the_database_password(tmp_path, capsys):
    url = "postgresql://mlflow:s3cret@db.internal:5432/mlflow"
    assert tracking_server.main(["--backend-store", url, "--artifacts-destination",
                                 str(tmp_path / "a"), "--workers", "3", "--print-command"]) == 0
    printed = capsys.readouterr().out
    assert "s3cret" not in printed
    command = shlex.split(printed)
    assert command[command.index("--backend-store-uri") + 1] == \
        "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert command[command.index("--workers") + 1] == "3"
    assert tracking_store.redact(url) == "postgresql://mlflow:***@db.internal:5432/mlflow"
    assert tracking_store.redact("postgresql://mlflow@db/m") == "postgresql://mlflow@db/m"


def test_database_servers_get_a_pool_per_worker_as_large_as_its_request_threads():
    pool = tracking_server.POOL_ENV
    size = int(pool["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"])
    assert size + int(pool["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"]) == \
        tracking_server.REQUESTS_PER_WORKER
    postgres = tracking_server.server_environment("postgresql://m@db/m", environ={})
    assert pool.items() <= postgres.items()
    sqlite = tracking_server.server_environment("sqlite:///m.db", environ={})
    assert not set(pool) & set(sqlite)  # SQLite keeps MLflow's defaults
    mine = {"MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "7"}
    assert "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW" not in \
        tracking_server.server_environment("postgresql://m@db/m", environ=mine)


def test_unreachable_database_server_stops_the_tracking_server_before_it_starts(tmp_path):
    port = bench_tracking.free_port()  # nothing listens there
    done = run_server("--backend-store", f"postgresql://mlflow:s3cret@127.0.0.1:{port}/mlflow",
                      "--artifacts-destination", str(tmp_path / "a"),
                      "--port", str(bench_tracking.free_port()))
    assert done.returncode == 2
    assert (f"error: cannot connect to backend store postgresql://mlflow:***@127.0.0.1:{port}"
            f"/mlflow:") in done.stderr
    assert "refused" in done.stderr.lower()
    assert "s3cret" not in done.stdout + done.stderr
    assert "Started server process" not in done.stdout + done.stderr


def test_missing_database_stops_the_tracking_server_before_it_starts(postgres_admin_url,
                                                                      tmp_path):
    name = "core_hpo_test_no_such_database"
    assert name not in database_names(postgres_admin_url)
    url = sqlalchemy.engine.make_url(postgres_admin_url).set(database=name)
    done = run_server("--backend-store", url.render_as_string(hide_password=False),
                      "--artifacts-destination", str(tmp_path / "a"),
                      "--port", str(bench_tracking.free_port()))
    assert done.returncode == 2
    assert f"error: cannot connect to backend store {url.render_as_string()}" in done.stderr
    assert f'database "{name}" does not exist' in done.stderr
    assert name not in database_names(postgres_admin_url)  # nothing created it


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_concurrent_writers_land_every_point_exactly_once(backend, request, tmp_path):
    if backend == "postgresql":
        admin_url = request.getfixturevalue("postgres_admin_url")
        before = database_names(admin_url)
        store_context = bench_tracking.temporary_database(admin_url)
    else:  # a new file, created by the server
        store_context = contextlib.nullcontext(str(tmp_path / "sqlite" / "mlflow.db"))
    workers = PG_WORKERS if backend == "postgresql" else 1
    with store_context as store:
        if backend == "postgresql":
            created = sqlalchemy.engine.make_url(store).database
            assert created in database_names(admin_url) - before
        with bench_tracking.tracking_server(store, tmp_path / "server", workers) as uri:
            result, run_ids = bench_tracking.run_load(uri, TRIALS, EPOCHS, METRICS, backend)
            bench_tracking.verify_load(uri, result, run_ids)
        assert not answers(uri), "the server still answers after it was stopped"
    if backend == "postgresql":
        assert database_names(admin_url) == before  # the test's database was dropped

    print(f"\n[figures] {backend}, {workers} worker(s), {TRIALS} trials x {EPOCHS} epochs x "
          f"{METRICS} metrics: {result.points_per_s:.0f} points/s, log_batch p50 "
          f"{result.latency_ms(50):.0f} ms, p99 {result.latency_ms(99):.0f} ms, "
          f"up to {result.peak_writers} trials logging at once")
    assert result.errors == []
    assert len(run_ids) == TRIALS
    assert result.runs_found == result.runs_finished == TRIALS
    assert len(result.latencies_s) == TRIALS * EPOCHS  # every batch was sent
    assert (result.lost, result.duplicated, result.wrong) == (0, 0, 0)
    assert result.peak_writers >= 2  # the writers overlapped
    assert result.intact

