"""Load-test the MLflow tracking server: PostgreSQL with several workers against SQLite with one.

    python benchmarks/bench_tracking.py                   # 64 trials x 5 epochs x 8 metrics
    python benchmarks/bench_tracking.py --epochs 50 --backends postgresql

Each trial is a process (standing in for a trial's logger): it creates its run and logs its
params as `hpo.tracking.MLflowTrialLogger` does, waits for every other trial, then logs one
`log_batch` of `--metrics` metrics per epoch (the project's 8 per-epoch learning-curve keys) and
ends its run. All trials write at once through `python -m hpo.tracking_server`, started on a free
loopback port: first on a fresh PostgreSQL database (created, then dropped) with `--pg-workers`
server workers, then on a fresh SQLite file with its one worker. Afterwards every run's metric
histories are read back through the server and every (run, key, step) is checked to hold exactly
one point with the value logged.

Printed for each backend: points per second (the points that landed over the wall time from the
first trial's first batch to the last trial's last one), the p50 / p99 latency of one `log_batch`
call, and the points lost, duplicated or wrong. Exit code 1 if any point is lost, duplicated or
wrong. The PostgreSQL server must let the user of `--postgres-url` create databases.

The default is 5 epochs, not 50: 64 concurrent writers overwhelm the one-worker SQLite server
(on 2 cores it took 6 minutes over 64 x 10 x 8 and lost two thirds of the points), so 64 x 50 x 8
would run for half an hour; PostgreSQL takes 64 x 50 x 8 in about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy
from mlflow.entities import Metric
from mlflow.telemetry.client import set_telemetry_client
from mlflow.tracking import MlflowClient
from mlflow.tracking.request_header.registry import resolve_request_headers

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpo.tracking import LOGGED_PREFIXES, TRIAL_TAG, log_params, metric_batch  # noqa: E402
from hpo.tracking_server import wait_until_healthy  # noqa: E402
from hpo.tracking_store import redact  # noqa: E402

DEFAULT_POSTGRES_URL = os.environ.get("CORE_HPO_POSTGRES_URL",
                                      "postgresql://postgres@127.0.0.1:5432/postgres")
# The per-epoch keys MLflowTrialLogger logs (hpo.tracking.LOGGED_PREFIXES): 8 of them.
EPOCH_KEYS = ("epoch_time", "train_loss", "valid_mrr_10", "valid_mrr_20", "valid_ndcg_10",
              "valid_ndcg_20", "valid_recall_10", "valid_recall_20")
SERVER_START_S = 300.0
BARRIER_S = 300.0  # every writer has created its run by then


def metric_keys(count: int) -> list[str]:
    """The metric names one epoch logs: the project's 8, then made-up ones if more are asked.

    Args:
        count: How many metrics per epoch.

    Returns:
        ``count`` distinct keys that ``hpo.tracking.metric_batch`` logs.
    """
    return [*EPOCH_KEYS, *(f"valid_extra_{i}" for i in range(count - len(EPOCH_KEYS)))][:count]


def point_value(trial: int, key_index: int, step: int) -> float:
    """The value trial ``trial`` logs for its ``key_index``-th metric at ``step``: all distinct.

    Args:
        trial: Trial number.
        key_index: Position of the metric's key in :func:`metric_keys`.
        step: Epoch (from 1).

    Returns:
        A float exactly representable in binary, so it reads back equal.
    """
    return trial * 1_000_000 + step * 1_000 + key_index + 0.25


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def temporary_database(admin_url: str = DEFAULT_POSTGRES_URL,
                       prefix: str = "core_hpo_test") -> Iterator[str]:
    """A new, empty PostgreSQL database with a unique name, dropped on exit.

    Args:
        admin_url: URL of an existing database on the server (``postgres``), as a user that may
            create databases.
        prefix: Start of the new database's name.

    Yields:
        The new database's URL (the admin URL with the database name replaced).
    """
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        try:
            url = sqlalchemy.engine.make_url(admin_url).set(database=name)
            yield url.render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                # FORCE: a connection a crashed server left behind must not keep it alive.
                drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                connection.execute(sqlalchemy.text(drop))
    finally:
        admin.dispose()


def stop_server(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """Stop a server started by :func:`tracking_server`: its whole process group.

    SIGTERM first (the mlflow CLI, uvicorn and its workers exit), SIGKILL what is left at the
    deadline.

    Args:
        process: The ``python -m hpo.tracking_server`` process (its own session leader).
        grace_s: Seconds to wait after SIGTERM.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace_s
    while _group_alive(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval: uvicorn's workers exit after the supervisor
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def tracking_server(backend_store: str, root: Path, workers: int | None = None,
                    timeout_s: float = SERVER_START_S) -> Iterator[str]:
    """``python -m hpo.tracking_server`` on a free loopback port, stopped on exit.

    Args:
        backend_store: ``--backend-store`` (a SQLite path or a database URL).
        root: Directory for the artifacts and the server's log (``mlflow-server.log``).
        workers: ``--workers`` (None: the module's default).
        timeout_s: Seconds to wait for ``/health``.

    Yields:
        The server's URI (``http://127.0.0.1:PORT``).
    """
    port = free_port()
    command = [sys.executable, "-m", "hpo.tracking_server", "--backend-store", backend_store,
               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(port)]
    if workers is not None:
        command += ["--workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "mlflow-server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=ROOT)
    try:
        uri = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(uri, timeout_s, process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}; server log:\n{log_path.read_text()[-3000:]}") from exc
        yield uri
    finally:
        stop_server(process)


@dataclass
class TrialLog:
    """What one writer process did."""

    trial: int
    run_id: str | None = None
    start: float = 0.0  # time.monotonic() before the first batch
    end: float = 0.0  # after the last one
    latencies_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _create_experiment(uri: str, name: str) -> str:
    return MlflowClient(uri).create_experiment(name)


def _write_trial(uri: str, experiment_id: str, trial: int, epochs: int, keys: list[str],
                 barrier, results) -> None:
    """One trial: its run, params and tag as the project's logger writes them, then one
    log_batch per epoch, all timed, then the run ended."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # this process only
    # No usage telemetry from the writers: its background thread, finding no network, removes an
    # environment variable while a request reads the environment (KeyError, a lost request).
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    set_telemetry_client()  # drops the client this process inherited
    log = TrialLog(trial)
    try:
        client = MlflowClient(uri)
        run = client.create_run(experiment_id, run_name=f"trial_{trial:04d}",
                                tags={TRIAL_TAG: str(trial)})
        log.run_id = run.info.run_id
        log_params(client, log.run_id, {"trial": trial, "epochs": epochs, "lr": 0.001})
    except Exception as exc:  # reported, and the barrier released
        log.errors.append(f"create run: {exc}")
    try:
        barrier.wait(timeout=BARRIER_S)
    except Exception as exc:
        log.errors.append(f"barrier: {exc!r}")
    if log.run_id is not None and not log.errors:
        log.start = time.monotonic()
        for step in range(1, epochs + 1):
            result = {key: point_value(trial, i, step) for i, key in enumerate(keys)}
            batch: list[Metric] = metric_batch(result, step, int(time.time() * 1000),
                                               LOGGED_PREFIXES)
            began = time.monotonic()
            try:
                client.log_batch(log.run_id, metrics=batch)
            except Exception as exc:  # counted; verification finds what is missing
                log.errors.append(f"epoch {step}: {exc}")
            log.latencies_s.append(time.monotonic() - began)
        log.end = time.monotonic()
        try:
            client.set_terminated(log.run_id, status="FINISHED")
        except Exception as exc:
            log.errors.append(f"end run: {exc}")
    results.put(log)


@dataclass
class LoadResult:
    """One backend's figures."""

    backend: str
    trials: int
    epochs: int
    metrics: int
    wall_s: float
    latencies_s: list[float]
    errors: list[str]
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    runs_found: int = 0
    runs_finished: int = 0
    server_start_s: float = 0.0
    peak_writers: int = 0  # the most trials that were logging at one instant
    db_connections: int | None = None  # PostgreSQL: connections the server held after the load

    @property
    def points(self) -> int:
        """Points the load logged."""
        return self.trials * self.epochs * self.metrics

    @property
    def points_per_s(self) -> float:
        """Points that landed (see :func:`verify_load`) per second of wall time."""
        return (self.points - self.lost) / self.wall_s if self.wall_s > 0 else float("nan")

    def latency_ms(self, percentile: float) -> float:
        """A percentile of one ``log_batch`` call's latency, in milliseconds.

        Args:
            percentile: 0-100.

        Returns:
            The latency.
        """
        return float(np.percentile(self.latencies_s, percentile) * 1000)

    @property
    def intact(self) -> bool:
        """Every point is there exactly once with its value, every run once and finished."""
        return (self.lost == self.duplicated == self.wrong == 0 and not self.errors
                and self.runs_found == self.runs_finished == self.trials)


def run_load(uri: str, trials: int, epochs: int, metrics: int, backend: str = "",
             experiment: str | None = None) -> tuple[LoadResult, dict[int, str]]:
    """Log the load through the server at ``uri``: one process per trial, all at once.

    Args:
        uri: The tracking server.
        trials: Writer processes (trials).
        epochs: ``log_batch`` calls per trial, one per epoch (steps 1..epochs).
        metrics: Metrics per batch.
        backend: Label for the result.
        experiment: Experiment name (default: a new unique one).

    Returns:
        The figures (verification fields not filled in: see :func:`verify_load`) and each
        trial's run id.
    """
    keys = metric_keys(metrics)
    # The imports MLflow's client makes on its first request (IPython, to detect Databricks),
    # done here once: the forked writers share them instead of importing them all at once.
    resolve_request_headers()
    context = mp.get_context("fork")  # the writers share this process's imports
    experiment = experiment or f"load-{secrets.token_hex(4)}"
    # Created in a child: this process must hold no HTTP connection its forked writers inherit.
    with context.Pool(1) as pool:
        experiment_id = pool.apply(_create_experiment, (uri, experiment))
    barrier = context.Barrier(trials)
    results = context.Queue()
    writers = [context.Process(target=_write_trial,
                               args=(uri, experiment_id, trial, epochs, keys, barrier, results))
               for trial in range(trials)]
    for writer in writers:
        writer.start()
    logs: list[TrialLog] = []
    deadline = time.monotonic() + BARRIER_S + 60.0 * epochs
    try:
        for _ in writers:
            logs.append(results.get(timeout=max(1.0, deadline - time.monotonic())))
    finally:
        for writer in writers:
            writer.join(timeout=max(1.0, deadline - time.monotonic()))
            if writer.is_alive():
                writer.kill()
                writer.join()
    started = [log for log in logs if log.latencies_s]
    wall = (max(log.end for log in started) - min(log.start for log in started)) if started \
        else 0.0
    result = LoadResult(
        backend=backend, trials=trials, epochs=epochs, metrics=metrics, wall_s=wall,
        latencies_s=[s for log in logs for s in log.latencies_s],
        errors=[f"trial {log.trial}: {e}" for log in logs for e in log.errors],
        peak_writers=peak_overlap([(log.start, log.end) for log in started]),
    )
    return result, {log.trial: log.run_id for log in logs if log.run_id}


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans that contain one instant.

    Args:
        spans: ``(start, end)`` pairs.

    Returns:
        The peak count (0 for no spans).
    """
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                    key=lambda event: (event[0], event[1]))  # an end before a start at a tie
    peak = current = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


def verify_load(uri: str, result: LoadResult, run_ids: dict[int, str]) -> LoadResult:
    """Read every run's metric histories back through the server and count what is off.

    Fills in ``lost`` (a (run, key, step) with no point), ``duplicated`` (points beyond the
    first for one (run, key, step)), ``wrong`` (a value that is not the one logged, or a step or
    key never logged), ``runs_found`` (runs of the experiment, by trial tag) and
    ``runs_finished``.

    Args:
        uri: The tracking server.
        result: The load's figures, from :func:`run_load`.
        run_ids: Trial -> run id, from :func:`run_load`.

    Returns:
        ``result``, filled in.
    """
    client = MlflowClient(uri)
    keys = metric_keys(result.metrics)
    lost = duplicated = wrong = 0
    if run_ids:
        experiment_id = client.get_run(next(iter(run_ids.values()))).info.experiment_id
        runs = client.search_runs([experiment_id], max_results=max(1000, 2 * result.trials))
        tagged = Counter(run.data.tags.get(TRIAL_TAG) for run in runs)
        result.runs_found = sum(1 for trial in range(result.trials) if tagged[str(trial)] == 1)
        result.runs_finished = sum(1 for run in runs if run.info.status == "FINISHED")
        duplicated += sum(n - 1 for n in tagged.values() if n > 1)
    for trial in range(result.trials):
        run_id = run_ids.get(trial)
        if run_id is None:
            lost += result.epochs * result.metrics
            continue
        logged = client.get_run(run_id).data.metrics
        wrong += len(set(logged) - set(keys))
        for i, key in enumerate(keys):
            counts = Counter()
            for point in client.get_metric_history(run_id, key):
                counts[point.step] += 1
                if point.value != point_value(trial, i, point.step):
                    wrong += 1
            for step in range(1, result.epochs + 1):
                lost += counts[step] == 0
                duplicated += max(0, counts[step] - 1)
            wrong += sum(n for step, n in counts.items()
                         if not 1 <= step <= result.epochs)
    result.lost, result.duplicated, result.wrong = lost, duplicated, wrong
    return result


def bench_backend(backend: str, trials: int, epochs: int, metrics: int, root: Path,
                  postgres_url: str = DEFAULT_POSTGRES_URL, pg_workers: int = 4) -> LoadResult:
    """Start a server on a fresh store of ``backend``, run the load, verify it, stop it.

    Args:
        backend: ``"postgresql"`` (a new database on the server of ``postgres_url``, dropped
            afterwards) or ``"sqlite"`` (a new file under ``root``, one server worker).
        trials: See :func:`run_load`.
        epochs: See :func:`run_load`.
        metrics: See :func:`run_load`.
        root: Directory for the server's files.
        postgres_url: Admin URL for :func:`temporary_database`.
        pg_workers: Server workers on PostgreSQL.

    Returns:
        The verified figures.
    """
    with contextlib.ExitStack() as stack:
        if backend == "postgresql":
            store = stack.enter_context(temporary_database(postgres_url, "core_hpo_bench"))
            workers = pg_workers
        elif backend == "sqlite":
            store, workers = str(root / backend / "mlflow.db"), 1
        else:
            raise ValueError(f"unknown backend {backend!r}: postgresql or sqlite")
        started = time.monotonic()
        uri = stack.enter_context(tracking_server(store, root / backend, workers))
        server_start_s = time.monotonic() - started
        result, run_ids = run_load(uri, trials, epochs, metrics,
                                   backend=f"{backend}, {workers} worker{'s' * (workers > 1)}")
        result.server_start_s = server_start_s
        if backend == "postgresql":
            result.db_connections = database_connections(postgres_url, store)
        return verify_load(uri, result, run_ids)


def database_connections(admin_url: str, database_url: str) -> int:
    """How many connections to a database are open now (its server's pools, after a load).

    Args:
        admin_url: A URL of the same PostgreSQL server.
        database_url: The database's URL.

    Returns:
        The count, from ``pg_stat_activity``.
    """
    name = sqlalchemy.engine.make_url(database_url).database
    engine = sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
                {"name": name}).scalar_one()
    finally:
        engine.dispose()


def format_table(results: list[LoadResult]) -> str:
    """The figures as a Markdown table.

    Args:
        results: One per backend.

    Returns:
        The table.
    """
    lines = ["| backend | points/s | log_batch p50 | p99 | lost | duplicated | wrong | errors |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.backend} | {r.points_per_s:,.0f} | {r.latency_ms(50):.0f} ms | "
                     f"{r.latency_ms(99):.0f} ms | {r.lost} | {r.duplicated} | {r.wrong} | "
                     f"{len(r.errors)} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=64, help="writer processes (default 64)")
    parser.add_argument("--epochs", type=int, default=5, help="batches per trial (default 5)")
    parser.add_argument("--metrics", type=int, default=8, help="metrics per batch (default 8)")
    parser.add_argument("--pg-workers", type=int, default=4,
                        help="server workers on PostgreSQL (default 4)")
    parser.add_argument("--backends", default="postgresql,sqlite",
                        help="comma-separated, in order (default: postgresql,sqlite)")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL,
                        help="an existing database of the PostgreSQL server, as a user that may "
                             "create databases (default: CORE_HPO_POSTGRES_URL, else "
                             "postgresql://postgres@127.0.0.1:5432/postgres)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0 when nothing was lost, duplicated or wrong on any backend, else 1.
    """
    args = build_parser().parse_args(argv)
    print(f"load: {args.trials} trials x {args.epochs} epochs x {args.metrics} metrics = "
          f"{args.trials * args.epochs * args.metrics:,} points per backend, one log_batch per "
          f"epoch; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_tracking_") as tmp:
        for backend in args.backends.split(","):
            if backend == "postgresql":
                print(f"PostgreSQL: {redact(args.postgres_url)}", flush=True)
            result = bench_backend(backend, args.trials, args.epochs, args.metrics, Path(tmp),
                                   args.postgres_url, args.pg_workers)
            print(f"{result.backend}: server up in {result.server_start_s:.1f} s, load "
                  f"{result.wall_s:.1f} s, up to {result.peak_writers} trials logging at once, "
                  f"{result.runs_found}/{result.trials} runs ({result.runs_finished} finished), "
                  f"load average {os.getloadavg()[0]:.1f}"
                  + (f", {result.db_connections} database connections held"
                     if result.db_connections is not None else ""), flush=True)
            for error in result.errors[:5]:
                print(f"  error: {error}", flush=True)
            results.append(result)
    print(format_table(results))
    return 0 if all(r.intact for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
